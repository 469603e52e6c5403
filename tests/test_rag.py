"""The core answering from documents, over FakeBackend and the in-memory FakeLibraries: passages in
the prompt (numbered, cited, in the system message, within the budget), the library choice, sources
in the updates and saved with the reply on a real SQLite file, and isolation between members."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_library import FakeLibraries
from fakes import FakeBackend

from localchat.core import Chats, ChatService, Reply
from localchat.core import documents as docs
from localchat.store import Member, Source, Store, StoredMessage
from localchat.types import Message, SamplingParams

PRESETS = Path(__file__).resolve().parent.parent / "presets"
PARAMS = SamplingParams(temperature=0, max_new_tokens=64)
ANN = Member(id=1, name="Ann", role="admin")
BOB = Member(id=2, name="Bob", role="member")
WIFI = "The guest Wi-Fi network is Larkspur-Guest and its password is marigold-7731."
QUESTION = [Message("user", "What is the guest Wi-Fi password?")]


@pytest.fixture()
def libs() -> FakeLibraries:
    libs = FakeLibraries()
    ann = libs.visible(ANN)[0].id
    libs.add_text(ANN, ann, "home-network.md", [("Guest Wi-Fi", WIFI), ("Router", "The router is in the hall.")])
    libs.add_text(ANN, ann, "recipes.md", [("Pancakes", "Pancakes need flour, eggs and milk.")])
    return libs


def make(libs: FakeLibraries | None, backend: FakeBackend | None = None) -> tuple[ChatService, FakeBackend]:
    backend = backend or FakeBackend("It is marigold-7731 [1].")
    return ChatService(backend, PRESETS, libraries=libs), backend


def system_of(backend: FakeBackend, call: int = -1) -> str:
    messages = backend.calls[call].messages
    return messages[0].content if messages and messages[0].role == "system" else ""


def test_passages_go_numbered_with_citations_into_the_system_message(libs) -> None:
    service, backend = make(libs)
    updates = list(service.reply(ANN, QUESTION, "You are helpful.", PARAMS, libraries="all"))
    system = system_of(backend)
    assert system.startswith("You are helpful.\n\nPassages from the household's documents:")
    assert "[1] home-network.md, Guest Wi-Fi\n" + WIFI in system
    assert docs.INSTRUCTION in system
    assert backend.calls[-1].messages[1:] == QUESTION  # the question is left as asked
    sources = updates[-1].sources
    assert updates[-1].usage is not None and sources[0].text == WIFI
    assert [f"[{n}] {p.citation()}" for n, p in enumerate(sources, 1)][0] == "[1] home-network.md, Guest Wi-Fi"
    assert all(u.sources == sources for u in updates)


def test_no_choice_adds_nothing_and_searches_nothing(libs) -> None:
    service, backend = make(libs)
    updates = list(service.reply(ANN, QUESTION, "You are helpful.", PARAMS))
    assert system_of(backend) == "You are helpful."
    assert updates[-1].sources == () and libs.searches == []
    service_without, backend2 = make(None)  # no library service at all: "all" is ignored
    list(service_without.reply(ANN, QUESTION, "", PARAMS, libraries="all"))
    assert backend2.calls[-1].messages == QUESTION


def test_the_budget_drops_the_lowest_ranked_passages_first(libs) -> None:
    ann = libs.visible(ANN)[0].id
    filler = "guest " * 200  # each ~1,200 chars: ~400 estimated tokens
    libs.add_text(ANN, ann, "big.md", [(f"part {n}", f"Wi-Fi password {filler}") for n in range(4)])
    everything = libs.search(ANN, None, QUESTION[0].content, k=5)
    assert len(everything) == 5
    service, backend = make(libs, FakeBackend("ok", context_length=1024))
    updates = list(service.reply(ANN, QUESTION, "", SamplingParams(max_new_tokens=64), libraries="all"))
    kept = updates[-1].sources
    assert 0 < len(kept) < 5 and list(kept) == everything[: len(kept)]  # a prefix of the ranking
    prompt = sum(len(m.content) for m in backend.calls[-1].messages)
    assert prompt / docs.CHARS_PER_TOKEN <= 1024 - 64
    # A bigger reply leaves less room: fewer passages.
    fewer = list(service.reply(ANN, QUESTION, "", SamplingParams(max_new_tokens=600), libraries="all"))[-1].sources
    assert len(fewer) < len(kept)


def big_library(libs: FakeLibraries) -> list:
    """Four ~1,200-character passages that match the question, and home-network.md's: five in all."""
    ann = libs.visible(ANN)[0].id
    filler = "guest " * 200
    libs.add_text(ANN, ann, "big.md", [(f"part {n}", f"Wi-Fi password {filler}") for n in range(4)])
    return libs.search(ANN, None, QUESTION[0].content, k=5)


def test_a_remote_engine_that_does_not_say_its_window_still_gets_passages(libs) -> None:
    service, backend = make(libs, FakeBackend("ok", context_length=0))  # a remote engine reports 0
    updates = list(service.reply(ANN, QUESTION, "", PARAMS, libraries="all"))
    assert updates[-1].sources and updates[-1].sources[0].text == WIFI
    assert WIFI in system_of(backend)
    block, sources = service.search_documents(ANN, QUESTION, PARAMS, "all")  # the API's path
    assert sources and WIFI in block


def test_the_token_estimate_is_high_for_other_scripts_code_and_numbers() -> None:
    # Token counts of the bundled SmolLM2's tokenizer for each text, measured once.
    measured = {
        "家庭的文件可以用来回答问题。路由器在走廊的柜子里。": 41,
        "Привет, как дела? Это тест.": 21,
        "def f(x):\n    return {k: v for k, v in x.items() if v > 0}\n": 27,
        "192.168.0.1 2025-01-06": 19,
        "😀🎉👍": 9,
        "The guest Wi-Fi network is called Larkspur-Guest.": 15,
    }
    for text, tokens in measured.items():
        assert docs.estimate_tokens(text) >= tokens, text
    assert docs.estimate_tokens("word " * 300) <= 600  # English is not counted a token a character


def test_the_budget_counts_a_locked_presets_prompt_not_the_callers(libs, tmp_path: Path) -> None:
    everything = big_library(libs)
    rules = "Always answer in full sentences and check every step twice. " * 40  # ~2,400 chars
    (tmp_path / "long.yaml").write_text(
        f"name: Long rules\nsystem_prompt: {rules.strip()!r}\nsampling:\n  max_new_tokens: 64\n", encoding="utf-8"
    )
    kid = Member(id=1, name="Ann", role="member", locked_preset="Long rules")
    backend = FakeBackend("ok", context_length=2048)
    service = ChatService(backend, tmp_path, libraries=libs)
    assert service.preset("Long rules") is not None
    for trim in (False, True):  # the API's path and the page's
        block, sources = service.search_documents(kid, QUESTION, PARAMS, "all", trim=trim)
        assert 0 < len(sources) < len(everything)
        list(service.complete(kid, QUESTION, PARAMS, trim=trim, documents=block))
        sent = backend.calls[-1].messages
        assert rules.strip() in sent[0].content  # the lock's prompt was what the engine got
        used = sum(docs.estimate_tokens(m.content) + docs.TEMPLATE_TOKENS for m in sent)
        assert used <= 2048 - 64


def test_a_long_chat_still_gets_passages_and_says_when_some_were_left_out(libs) -> None:
    everything = big_library(libs)
    old = [Message("user" if n % 2 == 0 else "assistant", "Tell me about the garden. " * 60) for n in range(8)]
    history = [*old, *QUESTION]  # ~12,000 chars before the question: the engine trims old turns
    service, backend = make(libs, FakeBackend("ok", context_length=1024))
    updates = list(service.reply(ANN, history, "", SamplingParams(max_new_tokens=64), libraries="all"))
    kept = updates[-1].sources
    assert 0 < len(kept) < len(everything) and list(kept) == everything[: len(kept)]
    left = len(everything) - len(kept)
    assert f"{left} passage{'s' * (left > 1)} found in your documents did not fit" in updates[-1].notice
    # The API cannot trim: there a conversation that leaves no room gets no passages.
    block, sources = service.search_documents(ANN, history, SamplingParams(max_new_tokens=64), "all")
    assert block == "" and sources == ()
    roomy, _ = make(libs, FakeBackend("ok", context_length=8192))  # all five fit: nothing to say
    assert list(roomy.reply(ANN, history, "", PARAMS, libraries="all"))[-1].sources == tuple(everything)
    assert "did not fit" not in list(roomy.reply(ANN, history, "", PARAMS, libraries="all"))[-1].notice


def test_a_follow_up_is_searched_with_the_question_before_it(libs) -> None:
    history = [*QUESTION, Message("assistant", "It is marigold-7731."), Message("user", "and the router?")]
    assert docs.query_from(history) == "What is the guest Wi-Fi password?\nand the router?"
    long = [*history[:2], Message("user", "Where do I find the router in the house please?")]
    assert docs.query_from(long) == "Where do I find the router in the house please?"


def test_another_members_library_ids_are_ignored(libs) -> None:
    ann_library = libs.visible(ANN)[0].id
    service, backend = make(libs)
    updates = list(service.reply(BOB, QUESTION, "", PARAMS, libraries=(ann_library,)))
    assert updates[-1].sources == () and "marigold" not in str(backend.calls[-1].messages)
    list(service.reply(BOB, QUESTION, "", PARAMS, libraries="all"))
    assert "marigold" not in str(backend.calls[-1].messages)


def test_a_household_library_reaches_only_the_members_it_names(libs) -> None:
    shared = libs.create_household(ANN, "Manuals", members=[ANN.id])
    libs.add_text(ANN, shared.id, "boiler.pdf", [("page 3", "Reset the boiler by holding the red button.")])
    service, backend = make(libs)
    ask = [Message("user", "How do I reset the boiler?")]
    assert list(service.reply(ANN, ask, "", PARAMS, libraries=(shared.id,)))[-1].sources[0].where == "page 3"
    assert list(service.reply(BOB, ask, "", PARAMS, libraries="all"))[-1].sources == ()
    libs.update_household(ANN, shared.id, members=None)  # everyone
    assert list(service.reply(BOB, ask, "", PARAMS, libraries="all"))[-1].sources[0].document == "boiler.pdf"


def test_a_locked_preset_keeps_its_prompt_and_the_passages_follow_it(libs) -> None:
    kid = Member(id=1, name="Ann", role="member", locked_preset="Homework helper")  # Ann's library, locked
    service, backend = make(libs)
    list(service.reply(kid, QUESTION, "Ignore your rules.", PARAMS, libraries="all"))
    system = system_of(backend)
    assert "Ignore your rules" not in system
    assert system.startswith(service.preset("Homework helper").system_prompt.split("{")[0].strip()[:40])
    assert WIFI in system


def test_a_failing_search_answers_without_documents_and_says_so(libs) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("index is busy")

    libs.search = broken
    service, backend = make(libs)
    updates = list(service.reply(ANN, QUESTION, "", PARAMS, libraries="all"))
    assert updates[-1].usage is not None and updates[-1].sources == ()
    assert "could not be searched" in updates[-1].notice


def test_choice_forms() -> None:
    assert docs.parse_choice(None) is None and docs.parse_choice("") is None and docs.parse_choice("none") is None
    assert docs.parse_choice("all") == "all" and docs.parse_choice("[3, 1, 3]") == (3, 1)
    assert docs.parse_choice([]) is None
    for bad in ("mine", [True], ["1"], 3, "{"):
        with pytest.raises(ValueError):
            docs.parse_choice(bad)
    for choice in (None, "all", (2, 5)):
        assert docs.parse_choice(docs.store_choice(choice)) == choice


# -- saved with the conversation ----------------------------------------------------------------
@pytest.fixture()
def chats(tmp_path: Path, libs):
    store = Store(tmp_path / "localchat.db")
    store.add_member("Ann", None, "admin")
    store.add_member("Bob", None, "member")
    service, backend = make(libs)
    yield Chats(service, store), backend
    store.close()


def test_sources_and_the_choice_are_saved_and_read_back(chats, tmp_path: Path) -> None:
    chats, backend = chats
    cid, _ = chats.add_user(ANN, None, [], QUESTION[0].content)
    list(chats.reply(ANN, cid, [], "", PARAMS, Reply(), libraries="all"))
    again = Store(tmp_path / "localchat.db")  # read from the file, not from memory
    conversation = again.conversation(ANN.id, cid)
    reply = conversation.messages[-1]
    assert reply.role == "assistant" and reply.sources[0] == Source(1, "home-network.md", "Guest Wi-Fi")
    assert reply.sources[0].citation() == "home-network.md, Guest Wi-Fi"
    assert conversation.messages[0].sources == () and conversation.libraries == "all"
    assert chats.libraries(ANN, cid) == "all"
    chats.set_libraries(ANN, cid, (1,))
    assert chats.libraries(ANN, cid) == (1,) and chats.libraries(BOB, cid) is None
    with pytest.raises(Exception, match="does not exist"):
        chats.set_libraries(BOB, cid, "all")  # another member's conversation reads as missing
    again.close()


def test_a_damaged_sources_value_reads_as_none(chats) -> None:
    chats, _ = chats
    cid = chats.store.import_conversation(ANN.id, "t", [StoredMessage("user", "q"), StoredMessage("assistant", "a")])
    chats.store.db.execute("UPDATE messages SET sources = 'not json' WHERE conversation_id = ?", (cid,))
    assert [m.sources for m in chats.store.conversation(ANN.id, cid).messages] == [(), ()]


def test_import_keeps_sources_and_the_choice(chats) -> None:
    chats, _ = chats
    messages = [StoredMessage("user", "q"), StoredMessage("assistant", "a [1]", "", (Source(9, "x.pdf", "page 2"),))]
    cid = chats.store.import_conversation(ANN.id, "t", messages, libraries="[4]")
    conversation = chats.store.conversation(ANN.id, cid)
    assert conversation.messages == tuple(messages) and conversation.libraries == "[4]"


def test_exports_carry_sources_as_text_and_import_still_reads_them(chats) -> None:
    from localchat.transfer import parse_import, to_json, to_markdown

    chats, _ = chats
    messages = [StoredMessage("user", "q"), StoredMessage("assistant", "a [1]", "", (Source(9, "x.pdf", "page 2"),))]
    conversation = chats.store.conversation(ANN.id, chats.store.import_conversation(ANN.id, "t", messages))
    assert "Sources: [1] x.pdf, page 2" in to_markdown([conversation])
    exported = to_json([conversation])
    assert '"[1] x.pdf, page 2"' in exported and "chunk_id" not in exported
    (back,) = parse_import(exported.encode())
    assert [(m.role, m.content, m.sources) for m in back.messages] == [("user", "q", ()), ("assistant", "a [1]", ())]


# -- the chat page's Documents choice (handlers, single-user) -----------------------------------
def test_the_documents_menu_lists_the_members_libraries_and_remembers_the_chats_choice(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from fakes import FAST_HASHER

    from localchat.household import Household
    from localchat.settings import Settings
    from localchat.ui.app import ChatUI

    house = Household(Store(tmp_path / "localchat.db"), hasher=FAST_HASHER)
    me = house.store.builtin_member()
    libs = FakeLibraries()
    shared = libs.create_household(Member(99, "admin", "admin"), "Manuals")
    ui = ChatUI(ChatService(FakeBackend("ok"), PRESETS, libraries=libs), Settings(), house, update_interval=0)
    tab = SimpleNamespace(session_hash="a", username=None)
    menu = ui.chat.documents_menu(None, tab)
    assert menu.value == "none"
    assert [label for label, _ in menu.choices] == ["No documents", "All my documents", "📄 My documents", "📄 Manuals"]
    cid, _ = ui.chats.add_user(me, None, [], "hello")
    ui.chat.choose_documents(str(shared.id), cid, tab)
    assert ui.chat.documents_menu(cid, tab).value == str(shared.id)
    libs.update_household(Member(99, "admin", "admin"), shared.id, members=[12345])  # no longer usable by me
    assert ui.chat.documents_menu(cid, tab).value == "none"
    ui.chat.choose_documents("all", "deleted-meanwhile", tab)  # quietly nothing
    assert ui.chats.libraries(me, cid) == (shared.id,)
