"""The UI layer without a browser: the pure adapters, and ChatUI's handlers called directly over
FakeBackend (a gr.Request stand-in only needs `.session_hash`)."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
from fakes import FAST_HASHER, FakeBackend

from localchat.core import ChatService, ReplyUpdate
from localchat.core.conversation import to_messages as history_messages
from localchat.household import Household
from localchat.settings import Settings
from localchat.store import Store
from localchat.types import InvalidValue, Message, SamplingParams, Usage
from localchat.ui.adapters import (
    SAMPLING_FIELDS,
    Turn,
    apply_update,
    format_stop,
    last_user_index,
    parse_stop,
    render,
    sampling_from_ui,
    sampling_to_ui,
    to_history,
)
from localchat.ui.app import ChatUI

SHIPPED_PRESETS = Path(__file__).resolve().parent.parent / "presets"
UI_SAMPLING = [0.5, 0.9, 40, 0.0, 1.1, 256, -1, ""]  # as the sliders send them


def user(text: str) -> Turn:
    return Turn(role="user", content=text, stats="")


def bot(text: str, stats: str = "") -> Turn:
    return Turn(role="assistant", content=text, stats=stats)


def request(session: str, username: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(session_hash=session, username=username)


def household() -> Household:
    """Single-user mode on a real SQLite file in a fresh temp dir."""
    return Household(Store(Path(tempfile.mkdtemp()) / "localchat.db"), hasher=FAST_HASHER)


def make_ui(
    backend: FakeBackend | None = None, presets_dir: Path | None = SHIPPED_PRESETS
) -> tuple[ChatUI, FakeBackend]:
    backend = backend or FakeBackend("Hello there friend")
    return ChatUI(ChatService(backend, presets_dir), Settings(), household(), update_interval=0), backend


def busy(ui: ChatUI, session: str) -> None:
    """Tab `session` of this single-user install is receiving a reply."""
    assert ui.chats.replies.begin((ui.household.store.builtin_member().id, session)) is not None


def visible(button: object) -> bool:
    return bool(button.visible)


# -- adapters -----------------------------------------------------------------------------------
def test_render_puts_the_stats_line_under_replies() -> None:
    turns = [user("Hi <b>"), bot("Hello!", "5 tokens · 3.0 tok/s"), user("More"), bot("", "⚠ <busy>"), bot("Plain")]
    assert render(turns) == [
        {"role": "user", "content": "Hi &lt;b>"},  # HTML shows as text
        {"role": "assistant", "content": "Hello!\n\n<sub>5 tokens · 3.0 tok/s</sub>"},
        {"role": "user", "content": "More"},
        {"role": "assistant", "content": "<sub>⚠ &lt;busy&gt;</sub>"},
        {"role": "assistant", "content": "Plain"},
    ]
    assert render([bot("x", "a<b")])[0]["content"] == "x\n\n<sub>a&lt;b</sub>"


def test_apply_update_replaces_the_last_turn() -> None:
    turns = [user("Hi"), bot("")]
    streaming = apply_update(turns, ReplyUpdate("Hel", "Waiting for the model: 1 reply ahead of yours"))
    assert streaming == [user("Hi"), bot("Hel", "Waiting for the model: 1 reply ahead of yours")]
    assert turns == [user("Hi"), bot("")]  # the input list is not changed
    done = apply_update(streaming, ReplyUpdate("Hello", usage=Usage(completion_tokens=2, time_to_first_token=0.25)))
    assert done[-1] == bot("Hello", "2 tokens · first token 0.25 s")
    trimmed = apply_update(turns, ReplyUpdate("Hi", "Trimmed.", usage=Usage(completion_tokens=1)))
    assert trimmed[-1]["stats"] == "1 token · Trimmed."
    failed = apply_update(turns, ReplyUpdate("Hal", "Trimmed.", error="The model is busy"))
    assert failed[-1] == bot("Hal", "⚠ The model is busy")


@pytest.mark.parametrize(
    "stop",
    [(), ("User:",), ("\n\n", "User:"), ("a\tb", "\nHuman:", "###")],
)
def test_stop_strings_round_trip(stop: tuple[str, ...]) -> None:
    text = format_stop(stop)
    assert "\n\n" not in text and "\t" not in text
    assert parse_stop(text) == stop


def test_parse_stop() -> None:
    assert parse_stop("") == ()
    assert parse_stop(None) == ()  # type: ignore[arg-type]
    assert parse_stop("User:\n\n   \n\\n\\n\nEnd\\tNow") == ("User:", "\n\n", "End\tNow")
    assert format_stop(("\n\n", "User:")) == "\\n\\n\nUser:"


def _ui_values(**changes: object) -> dict[str, object]:
    values = dict(zip(SAMPLING_FIELDS, UI_SAMPLING, strict=True))
    values.update(changes)
    return values


def test_sampling_from_ui() -> None:
    params = sampling_from_ui(_ui_values(stop="User:\n\\n\\n"))
    assert params == SamplingParams(
        temperature=0.5,
        top_p=0.9,
        top_k=40,
        min_p=0.0,
        repetition_penalty=1.1,
        max_new_tokens=256,
        seed=None,
        stop=("User:", "\n\n"),
    )
    assert sampling_from_ui(_ui_values(seed=7)).seed == 7
    assert sampling_from_ui(_ui_values(seed=-1.0)).seed is None
    assert sampling_from_ui(_ui_values(seed="")).seed is None
    assert sampling_from_ui(_ui_values(seed=None)).seed is None


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"temperature": "hot"}, "a sampling value is not a number"),
        ({"temperature": None}, "a sampling value is not a number"),
        ({"max_new_tokens": "lots"}, "a sampling value is not a number"),
        ({"seed": "x"}, "a sampling value is not a number"),
        ({"temperature": 9}, "temperature must be between 0 and 5"),
        ({"seed": -3}, "seed must be empty or a non-negative integer"),
        ({"max_new_tokens": 0}, "max_new_tokens must be between 1 and 32768"),
    ],
)
def test_sampling_from_ui_errors(changes: dict, words: str) -> None:
    with pytest.raises(InvalidValue) as info:
        sampling_from_ui(_ui_values(**changes))
    assert words in str(info.value)


def test_sampling_from_ui_missing_value() -> None:
    values = _ui_values()
    del values["top_p"]
    with pytest.raises(InvalidValue):
        sampling_from_ui(values)


def test_sampling_to_ui_is_the_inverse() -> None:
    for params in (SamplingParams(), SamplingParams(seed=3, stop=("\n\n", "User:"), temperature=0.0)):
        ui_values = sampling_to_ui(params)
        assert len(ui_values) == len(SAMPLING_FIELDS)
        assert sampling_from_ui(dict(zip(SAMPLING_FIELDS, ui_values, strict=True))) == params


def test_last_user_index() -> None:
    turns = [user("a"), bot("A"), user("b"), bot("B")]
    assert [last_user_index(turns, i) for i in range(4)] == [0, 0, 2, 2]
    assert last_user_index(turns, 99) == 2
    assert last_user_index(turns, -1) is None
    assert last_user_index([bot("x")], 0) is None
    assert last_user_index([], 0) is None


def test_the_history_a_page_shows_becomes_messages_without_empty_replies() -> None:
    turns = [user("a"), bot("", "⚠ failed"), user("b")]
    assert history_messages(to_history(turns)) == [Message("user", "a"), Message("user", "b")]


# -- ChatUI handlers ----------------------------------------------------------------------------
def run_respond(ui: ChatUI, turns: list[Turn], session: str = "a", system: str = "", sampling=None) -> list[tuple]:
    return list(ui.respond(turns, None, system, *(sampling or UI_SAMPLING), request(session)))


def test_respond_streams_and_ends_with_the_stats_line() -> None:
    ui, backend = make_ui()
    outputs = run_respond(ui, [user("Hi")], system="Be kind.")
    first_chat, first_turns, send, stop = outputs[0]
    assert first_turns == [user("Hi"), bot("")]
    assert not visible(send) and visible(stop)
    texts = [o[1][-1]["content"] for o in outputs]
    assert "Hello" in texts and "Hello there" in texts  # streamed word by word
    chat, turns, send, stop = outputs[-1]
    assert turns[-1]["content"] == "Hello there friend"
    assert turns[-1]["stats"].startswith("3 tokens")
    assert chat[-1]["content"].startswith("Hello there friend\n\n<sub>3 tokens")
    assert visible(send) and not visible(stop)
    call = backend.calls[0]
    assert call.messages == [Message("system", "Be kind."), Message("user", "Hi")]
    assert (call.params.temperature, call.params.max_new_tokens) == (0.5, 256)
    assert len(ui.chats.replies) == 0  # nothing left behind for Stop to find


def test_respond_shows_backend_errors() -> None:
    from localchat.backend import ServerBusy

    ui, _ = make_ui(FakeBackend("x", error=ServerBusy("The model is busy")))
    _, turns, send, _ = run_respond(ui, [user("Hi")])[-1]
    assert turns[-1] == bot("", "⚠ The model is busy")
    assert visible(send)


def test_respond_needs_a_user_message_last() -> None:
    ui, backend = make_ui()
    for turns in ([], [user("Hi"), bot("Hello")]):
        (only,) = run_respond(ui, turns)
        assert only[1] == turns and visible(only[2])
    assert backend.calls == []


def test_respond_rejects_bad_sampling_with_a_warning() -> None:
    ui, backend = make_ui()
    bad = [9.0, *UI_SAMPLING[1:]]
    with pytest.warns(UserWarning, match="temperature must be between 0 and 5"):
        (only,) = run_respond(ui, [user("Hi")], sampling=bad)
    assert only[1] == [user("Hi")]
    assert backend.calls == []


def test_stop_cancels_only_this_sessions_reply() -> None:
    long_reply = " ".join(f"w{i}" for i in range(60))
    ui, backend = make_ui(FakeBackend(long_reply, delay=0.01))  # about 0.6 s per reply
    b_outputs: list[tuple] = []
    b_started = threading.Event()

    def session_b() -> None:
        for out in ui.respond([user("B asks")], None, "", *UI_SAMPLING, request("b")):
            b_outputs.append(out)
            if out[1][-1]["content"]:
                b_started.set()

    b = threading.Thread(target=session_b)
    b.start()
    assert b_started.wait(5)

    a_outputs = []
    for out in ui.respond([user("A asks")], None, "", *UI_SAMPLING, request("a")):
        a_outputs.append(out)
        if out[1][-1]["content"] == "w0 w1":
            ui.stop(request("a"))
            b_running_when_a_stopped = b.is_alive()
    b.join(5)
    assert b_running_when_a_stopped

    a_last = a_outputs[-1][1][-1]
    assert a_last["content"].startswith("w0 w1") and len(a_last["content"]) < len(long_reply)
    assert a_last["stats"].endswith("stopped · fake-small")  # and the model that wrote it
    b_last = b_outputs[-1][1][-1]
    assert b_last["content"] == long_reply
    assert "stopped" not in b_last["stats"]
    assert len(backend.calls) == 2


def test_stop_without_a_reply_does_nothing() -> None:
    ui, _ = make_ui()
    ui.stop(request("nobody"))
    ui.stop(SimpleNamespace(session_hash=None))


def test_add_user() -> None:
    ui, _ = make_ui()
    box, turns, chat, *_ = ui.add_user("  Hi there \n", [], None, False, request("a"))
    assert (box, turns, chat) == ("", [user("Hi there")], [{"role": "user", "content": "Hi there"}])
    box, turns, *_ = ui.add_user("   ", [user("a")], None, False, request("a"))
    assert turns == [user("a")] and box == gr.update()


def test_add_user_waits_while_this_tabs_reply_is_streaming() -> None:
    ui, _ = make_ui()
    busy(ui, "a")
    box, turns, *_ = ui.add_user("next question", [user("q")], None, False, request("a"))
    assert turns == [user("q")] and box == gr.update()  # refused; the text stays in the box
    box, turns, *_ = ui.add_user("next question", [user("q")], None, False, request("b"))
    assert turns == [user("q"), user("next question")] and box == ""  # another tab is not blocked


CONVERSATION = [user("a"), bot("A", "1 token"), user("b"), bot("B", "1 token")]


@pytest.mark.parametrize(("index", "kept"), [(3, 3), (2, 3), (1, 1), (0, 1), ((3, 0), 3)])
def test_retry_keeps_up_to_the_users_message(index: object, kept: int) -> None:
    turns, chat = make_ui()[0].retry(CONVERSATION, None, gr.RetryData(None, {"index": index, "value": "x"}))
    assert turns == CONVERSATION[:kept]
    assert chat == render(turns)


def test_retry_then_respond_gives_a_fresh_reply() -> None:
    ui, backend = make_ui(FakeBackend("New answer"))
    turns, _ = make_ui()[0].retry(CONVERSATION, None, gr.RetryData(None, {"index": 3, "value": "B"}))
    final = run_respond(ui, turns)[-1][1]
    assert [t["content"] for t in final] == ["a", "A", "b", "New answer"]
    assert backend.calls[0].messages == [Message("user", "a"), Message("assistant", "A"), Message("user", "b")]


@pytest.mark.parametrize("index", [2, 3])
def test_undo_removes_the_last_exchange_and_returns_the_text(index: int) -> None:
    turns, chat, box = make_ui()[0].undo(CONVERSATION, None, gr.UndoData(None, {"index": index, "value": "b"}))
    assert turns == CONVERSATION[:2]
    assert chat == render(CONVERSATION[:2])
    assert box == "b"


def test_undo_with_nothing_to_undo() -> None:
    turns, _, box = make_ui()[0].undo([bot("Welcome")], None, gr.UndoData(None, {"index": 0, "value": "Welcome"}))
    assert turns == [bot("Welcome")] and box == gr.update()


def test_edit_replaces_the_message_and_drops_what_followed() -> None:
    data = gr.EditData(None, {"index": 0, "value": "a, edited", "previous_value": "a"})
    turns, chat = make_ui()[0].edit(CONVERSATION, None, data)
    assert turns == [user("a, edited")]
    assert chat == render(turns)
    data = gr.EditData(None, {"index": 2, "value": "b2", "previous_value": "b"})
    assert make_ui()[0].edit(CONVERSATION, None, data)[0] == [*CONVERSATION[:2], user("b2")]


@pytest.mark.parametrize("index", [1, 4])
def test_edit_of_a_reply_or_a_missing_message_changes_nothing(index: int) -> None:
    data = gr.EditData(None, {"index": index, "value": "x", "previous_value": "y"})
    assert make_ui()[0].edit(CONVERSATION, None, data)[0] == CONVERSATION


def test_choose_preset() -> None:
    ui, _ = make_ui()
    balanced = ui.service.preset("Balanced")
    assert balanced is not None
    values = ui.choose_preset("Balanced")
    assert values[0] == balanced.system_prompt and "{date}" in values[0]
    assert values[1] == f"*{balanced.description}*"
    assert values[2:] == [0.7, 0.9, 40, 0.05, 1.1, 512, -1, ""]
    assert sampling_from_ui(dict(zip(SAMPLING_FIELDS, values[2:], strict=True))) == balanced.sampling
    deterministic = ui.choose_preset("Deterministic")
    assert deterministic[2] == 0.0 and deterministic[8] == 0  # temperature 0, seed 0


def test_choose_unknown_preset_changes_nothing() -> None:
    ui, _ = make_ui()
    values = ui.choose_preset("Nope")
    assert len(values) == 2 + len(SAMPLING_FIELDS)
    assert all(v == gr.update() for v in values)


def test_load_model_success() -> None:
    ui, backend = make_ui()
    lines = list(ui.load_model("fake-large", "none", "cpu", "auto", 1024))
    assert lines[0] == "Loading fake-large… this can take a minute."
    assert lines[-1].startswith("✓ Loaded in ") and ": fake-large · cpu · " in lines[-1]
    assert "1,024-token context" in lines[-1]
    assert backend.loads[-1].context_length == 1024 and backend.loads[-1].device == "cpu"


def test_load_unknown_model_keeps_the_old_one() -> None:
    ui, backend = make_ui()
    with pytest.warns(UserWarning, match="no such model"):
        lines = list(ui.load_model("no-such-model", "none", "auto", "auto", None))
    assert lines[-1].startswith("⚠ Could not load no-such-model")
    assert lines[-1].endswith("Still using fake-small.")
    assert backend.loaded() is not None and backend.loaded().name == "fake-small"
    assert ui.service.status().startswith("fake-small")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("", "none", "auto", "auto", None), "⚠ choose a model to load"),
        (("fake-large", "3bit", "auto", "auto", None), "⚠ quantization must be one of"),
        (("fake-large", "none", "auto", "auto", 32), "⚠ context length must be at least 64 tokens"),
    ],
)
def test_load_model_rejects_bad_options(args: tuple, words: str) -> None:
    ui, backend = make_ui()
    lines = list(ui.load_model(*args))
    assert len(lines) == 1 and lines[0].startswith(words)
    assert backend.loads == []


def test_status_and_timer() -> None:
    ui, backend = make_ui()
    line, details, timer = ui.status()
    assert line == "fake-small · 100 MiB · cpu" and timer.active is False
    assert details.startswith("fake-small · cpu · float32")
    from localchat.types import LoadOptions

    backend.loading = LoadOptions(model="/models/fake-large")
    line, details, timer = ui.status()
    assert line == "Loading fake-large…" and details.startswith("Loading /models/fake-large…")
    assert timer.active is True


def test_model_choices() -> None:
    ui, _ = make_ui()
    assert ui.model_choices() == [("fake-small (100 MB)", "fake-small"), ("fake-large (100 MB)", "fake-large")]


def test_build_returns_blocks() -> None:
    ui, _ = make_ui()
    demo = ui.build()
    assert isinstance(demo, gr.Blocks)
    empty, _ = make_ui(presets_dir=None)
    assert isinstance(empty.build(), gr.Blocks)


def test_a_second_respond_in_a_busy_tab_changes_nothing() -> None:
    ui, backend = make_ui()
    busy(ui, "a")
    outs = list(ui.respond([user("q"), bot("partial")], None, "", *UI_SAMPLING, request("a")))
    assert outs == [(gr.skip(), gr.skip(), gr.skip(), gr.skip())]
    assert backend.calls == []


def test_new_chat_empties_the_conversation_and_stops_this_tabs_reply() -> None:
    ui, _ = make_ui()
    busy(ui, "a"), busy(ui, "b")
    me = ui.household.store.builtin_member().id
    a, b = ui.chats.replies.get((me, "a")), ui.chats.replies.get((me, "b"))
    assert ui.new_chat(request("a"))[:2] == ([], [])
    assert a.cancel.is_set() and a.discarded and not b.cancel.is_set()


def slow_ui() -> ChatUI:
    words = " ".join(f"w{i}" for i in range(200))
    ui, _ = make_ui(FakeBackend(words, delay=0.01))
    return ui


def test_a_cleared_chat_stays_empty_when_its_reply_ends() -> None:
    ui = slow_ui()
    outs = []
    for out in ui.respond([user("old question")], None, "", *UI_SAMPLING, request("a")):
        outs.append(out)
        if len(outs) == 3:
            assert ui.new_chat(request("a"))[:2] == ([], [])  # the user clicks New chat mid-reply
    chat, turns, send, stop = outs[-1]
    assert chat == gr.skip() and turns == gr.skip()  # the old chat is not written back
    assert visible(send) and not visible(stop)
    assert len(ui.chats.replies) == 0


def test_edit_during_a_reply_replaces_it() -> None:
    ui = slow_ui()
    first = ui.respond([user("q1")], None, "", *UI_SAMPLING, request("a"))
    next(first), next(first)  # streaming
    turns, _ = ui.edit(
        [user("q1"), bot("w0")],
        None,
        gr.EditData(None, {"index": 0, "value": "q2", "previous_value": "q1"}),
        request("a"),
    )
    second = []
    t = threading.Thread(target=lambda: second.extend(ui.respond(turns, None, "", *UI_SAMPLING, request("a"))))
    t.start()
    old = list(first)  # the replaced reply winds down without writing its turns
    t.join(30)
    assert all(o[1] == gr.skip() for o in old)
    assert second[-1][1][0] == user("q2") and second[-1][1][-1]["content"].startswith("w0 w1")
    assert visible(second[-1][2])


def test_screen_updates_are_throttled_but_the_end_is_always_shown() -> None:
    ui, _ = make_ui()
    ui.chat.update_interval = 60  # nothing between the first and the last update
    outs = run_respond(ui, [user("Hi")])
    texts = [o[1][-1]["content"] for o in outs]
    assert texts[0] == "" and texts[-1] == "Hello there friend"
    assert len(outs) <= 4  # placeholder, first chunk, final, and the closing update


def test_load_model_passes_the_4bit_options() -> None:
    ui, backend = make_ui()
    list(ui.load_model("fake-large", "4bit", "cpu", "auto", None, "fp4", "float32", False))
    opts = backend.loads[-1]
    assert (opts.quantization, opts.quant_type_4bit, opts.compute_dtype, opts.double_quant) == (
        "4bit",
        "fp4",
        "float32",
        False,
    )


def test_the_fit_estimate_is_for_admins_only_checked_on_the_server(tmp_path: Path) -> None:
    house = Household(Store(tmp_path / "localchat.db"), listen=True, hasher=FAST_HASHER)
    ann, bob = house.add_member("Ann", "ann-password", "admin"), house.add_member("Bob", "bob-password")
    ui = ChatUI(ChatService(FakeBackend(), SHIPPED_PRESETS), Settings(), house, update_interval=0)
    assert ui.fit_estimate("fake-large", "cpu", None, request("b", str(bob.id))) == ""  # says nothing about the disk
    assert "fits" in ui.fit_estimate("fake-large", "cpu", None, request("a", str(ann.id)))
    with pytest.raises(gr.Error):
        ui.fit_estimate("fake-large", "cpu", None, request("x"))  # signed out


def saved_chat(ui: ChatUI, conversation: str) -> list[tuple[str, str]]:
    member = ui.household.store.builtin_member()
    return [(m.role, m.content) for m in ui.household.store.conversation(member.id, conversation).messages]


def test_a_failed_edit_loses_nothing_and_is_not_answered(monkeypatch: pytest.MonkeyPatch) -> None:
    from localchat.store import StoreError

    ui, backend = make_ui()
    _, turns, _, conversation, _ = ui.add_user("q1", [], None, False, request("a"))
    turns = list(ui.respond(turns, conversation, "", *UI_SAMPLING, request("a")))[-1][1]
    before = saved_chat(ui, conversation)
    assert before == [("user", "q1"), ("assistant", "Hello there friend")]

    def disk_full(*args: object, **kw: object) -> None:
        raise StoreError("database or disk is full")

    monkeypatch.setattr(ui.household.store, "put_message", disk_full)
    data = gr.EditData(None, {"index": 0, "value": "q1, edited", "previous_value": "q1"})
    with pytest.warns(UserWarning, match="not saved"):
        turns, chat = ui.edit(turns, conversation, data, request("a"))
    assert saved_chat(ui, conversation) == before  # nothing was dropped
    assert turns[0] == user("q1, edited") and "q1, edited" in chat[0]["content"]  # the edit stays visible
    assert turns[-1]["role"] == "assistant" and "not saved" in turns[-1]["stats"]
    calls = len(backend.calls)
    (only,) = list(ui.respond(turns, conversation, "", *UI_SAMPLING, request("a")))  # the chained reply
    assert only[1] == turns and len(backend.calls) == calls  # nothing is answered


def test_an_edit_is_saved_in_one_write() -> None:
    ui, backend = make_ui()
    _, turns, _, conversation, _ = ui.add_user("q1", [], None, False, request("a"))
    turns = list(ui.respond(turns, conversation, "", *UI_SAMPLING, request("a")))[-1][1]
    writes = []
    store = ui.household.store
    for name in ("put_message", "truncate"):
        original = getattr(store, name)
        setattr(store, name, lambda *a, _f=original, _n=name, **kw: (writes.append(_n), _f(*a, **kw))[1])
    data = gr.EditData(None, {"index": 0, "value": "q2", "previous_value": "q1"})
    turns, _ = ui.edit(turns, conversation, data, request("a"))
    assert writes == ["put_message"] and turns == [user("q2")]
    assert saved_chat(ui, conversation) == [("user", "q2")]
    final = list(ui.respond(turns, conversation, "", *UI_SAMPLING, request("a")))[-1][1]
    assert [t["content"] for t in final] == ["q2", "Hello there friend"]
    assert backend.calls[-1].messages == [Message("user", "q2")]


def test_a_lone_surrogate_typed_in_the_page_is_cleaned_before_it_is_shown() -> None:
    """Gradio sends values as JSON with orjson, which refuses a lone surrogate (a 500, and the
    message was gone): the text shown is the text saved, with U+FFFD in its place."""
    import orjson

    ui, _ = make_ui()
    for incognito in (False, True):
        box, turns, chat, conversation, _ = ui.add_user("a\ud800b", [], None, incognito, request("a"))
        assert box == "" and turns == [user("a\ufffdb")]
        orjson.dumps([turns, chat])
    assert saved_chat(ui, conversation_id := ui.add_user("c\udfff", [], None, False, request("a"))[3]) == [
        ("user", "c\ufffd")
    ]
    data = gr.EditData(None, {"index": 0, "value": "d\ud800", "previous_value": "c"})
    turns, chat = ui.edit([user("c\ufffd")], conversation_id, data, request("a"))
    assert turns == [user("d\ufffd")] and saved_chat(ui, conversation_id) == [("user", "d\ufffd")]
    orjson.dumps([turns, chat])


def test_a_key_name_with_a_lone_surrogate_is_cleaned() -> None:
    from localchat.ui.keys import ApiKeys

    ui, _ = make_ui()
    bob = ui.household.store.add_member("Bob", None, "member")
    shown, listing, _ = ApiKeys(ui.household).create("my\ud800editor", request("a", str(bob.id)))
    assert not shown.startswith("⚠")
    ((label, _),) = listing.choices
    assert label.startswith("my\ufffdeditor")


def test_an_imported_chat_with_a_system_message_keeps_its_reply_through_send_and_retry() -> None:
    """The page hides the stored system message; sending, then retrying, addresses the right ones."""
    from localchat.store import StoredMessage

    ui, backend = make_ui()
    store = ui.household.store
    me = store.builtin_member()
    history = [
        StoredMessage("system", "Answer in French."),
        StoredMessage("user", "hi"),
        StoredMessage("assistant", "hello!"),
    ]
    conversation = store.import_conversation(me.id, "hi", history)
    turns, *_ = ui.conversations.open(conversation, None, request("a"))
    assert turns == [user("hi"), bot("hello!")]
    _, turns, *_ = ui.add_user("next", turns, conversation, False, request("a"))
    turns = list(ui.respond(turns, conversation, "", *UI_SAMPLING, request("a")))[-1][1]
    assert [m[1] for m in saved_chat(ui, conversation)] == [
        "Answer in French.",
        "hi",
        "hello!",
        "next",
        "Hello there friend",
    ]
    assert backend.calls[-1].messages[0] == Message("system", "Answer in French.")
    turns, _ = ui.retry(turns, conversation, gr.RetryData(None, {"index": 1, "value": "hello!"}), request("a"))
    assert turns == [user("hi")]
    assert [m[1] for m in saved_chat(ui, conversation)] == ["Answer in French.", "hi"]
