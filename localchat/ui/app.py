"""The Gradio Blocks of the chat page: conversations, chat, model picker, sampling, system prompt,
presets, and (for admins) the household panel.

Owns: layout and event wiring only; every decision goes to ChatService or Household, every value
conversion to ui.adapters. Invariants: handlers never touch torch; every handler takes the member
from the request's session (never from a value the page sends); Stop sets the cancel event of this
browser tab's reply only (keyed by Gradio's session hash), never anyone else's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import gradio as gr

from localchat.chat import ChatService
from localchat.household import SESSION_COOKIE, Household
from localchat.settings import Settings
from localchat.store import Member, NotFound, StoreError
from localchat.types import (
    DEVICES,
    DTYPES,
    QUANT_TYPES_4BIT,
    QUANTIZATIONS,
    SAMPLING_RANGES,
    InvalidValue,
    LoadOptions,
    SamplingParams,
)
from localchat.ui.adapters import (
    SAMPLING_FIELDS,
    Turn,
    apply_update,
    format_stop,
    last_user_index,
    render,
    sampling_from_ui,
    sampling_to_ui,
    to_messages,
)
from localchat.ui.admin import AdminPanel
from localchat.ui.conversations import (
    IMPORT_FORM,
    Conversations,
    conversation_choices,
    export_links,
    member_line,
    privacy_notice,
)
from localchat.ui.downloads import Downloads
from localchat.ui.keys import ApiKeys
from localchat.ui.members import member_of

CSS = """
#lc-header { flex-wrap: nowrap; align-items: center; gap: 8px; }
#lc-header > * { flex-grow: 0; }
#lc-header > .lc-status { flex: 1 1 auto; min-width: 0; }
#lc-header button { height: auto; white-space: nowrap; }
.lc-status { font-size: 0.85em; opacity: 0.85; }
.lc-status p { margin: 0; }
#lc-input textarea { font-size: 16px; }  /* 16px stops iOS zooming into the field */
footer { display: none !important; }
#lc-conversations .wrap { flex-direction: column; gap: 2px; }
#lc-conversations label { width: 100%; box-sizing: border-box; border: 0; background: transparent; }
#lc-conversations label span { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
#lc-conversations input[type=radio] { display: none; }
#lc-conversations label.selected { background: var(--background-fill-secondary); color: var(--body-text-color);
  font-weight: 600; }
#lc-conversations label:hover { background: var(--background-fill-secondary); }
.lc-member { font-size: 0.9em; display: flex; gap: 8px; align-items: center; flex-wrap: wrap; }
.lc-member button, .lc-import { cursor: pointer; text-decoration: underline; background: none; border: 0;
  color: var(--link-text-color); padding: 0; font-size: 0.95em; }
.lc-import input { display: none; }
@media (max-width: 640px) {  /* phones: bubbles use the width instead of leaving margins */
  #lc-header button { padding: 4px 8px; min-width: 0 !important; flex: 0 0 auto !important; width: auto !important; }
  #lc-header .lc-status { font-size: 0.75em; }
  #lc-chat .message-row.bubble { max-width: calc(100% - 12px); margin-left: 6px; margin-right: 6px; }
}
"""

# At most ~12 screen updates a second: each update costs the server CPU that decoding needs
# (measured on 2 cores: one update per token streamed at 0.75x raw speed).
UPDATE_INTERVAL = 0.08
SESSION_RECHECK = 2.0  # seconds between checks that a streaming reply's session still exists

THEME = gr.themes.Soft(  # system fonts only: no request to Google Fonts
    font=["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"],
    font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"],
)


@dataclass
class _Reply:
    """The reply a browser tab is receiving. `discarded`: the tab shows another chat now, so the
    reply must not write into the page; `rewritten`: its conversation was changed (retry, edit,
    undo, delete), so it must not be saved either."""

    cancel: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    discarded: bool = False
    rewritten: bool = False
    signed_in: Callable[[], bool] = lambda: True  # is the session that asked still valid?


class ChatUI:
    def __init__(
        self,
        service: ChatService,
        settings: Settings,
        household: Household,
        update_interval: float = UPDATE_INTERVAL,
    ):
        self.service = service
        self.settings = settings
        self.household = household
        self.store = household.store
        self.update_interval = update_interval
        self._replies: dict[str, _Reply] = {}  # by browser tab
        self._lock = threading.Lock()
        self.conversations = Conversations(household, lambda request, rewritten: self.stop(request, True, rewritten))
        self.admin = AdminPanel(household, service)
        self.keys = ApiKeys(household)
        self.downloads = Downloads(household, settings.models, self.service.hardware)

    # -- chat ---------------------------------------------------------------------------------
    def stop(self, request: gr.Request, discard: bool = False, rewritten: bool = False) -> None:
        """Stop this tab's reply (never another tab's). `discard`: the page shows something else
        now; `rewritten`: the conversation changed, so the partial reply is not saved."""
        with self._lock:
            reply = self._replies.get(_key(request))
        if reply is not None:
            reply.discarded = reply.discarded or discard
            reply.rewritten = reply.rewritten or rewritten
            reply.cancel.set()

    def respond(  # noqa: PLR0913 - one argument per UI control, as Gradio passes them
        self,
        turns: list[Turn],
        conversation_id: str | None,
        system_prompt: str,
        temperature: float,
        top_p: float,
        top_k: int,
        min_p: float,
        repetition_penalty: float,
        max_new_tokens: int,
        seed: int,
        stop: str,
        request: gr.Request,
    ) -> Iterator[tuple]:
        """Stream a reply to the conversation, which must end with the user's message."""
        self.service.expect()  # before the checks: messages sent together are read together
        key = _key(request)
        member = member_of(self.household, request)
        with self._lock:
            running = self._replies.get(key)
        if running is not None:
            if not running.discarded:  # this tab is still receiving a reply (add_user kept the text)
                yield gr.skip(), gr.skip(), gr.skip(), gr.skip()
                return
            running.finished.wait(10)  # retry/edit replaced it: let it wind down first
        if not turns or turns[-1]["role"] != "user":
            yield render(turns), turns, *_buttons(False)
            return
        sampling = (temperature, top_p, top_k, min_p, repetition_penalty, max_new_tokens, seed, stop)
        try:
            params = sampling_from_ui(dict(zip(SAMPLING_FIELDS, sampling, strict=True)))
        except InvalidValue as exc:
            gr.Warning(str(exc))
            yield render(turns), turns, *_buttons(False)
            return
        locked = self.service.preset(member.locked_preset) if member.locked_preset else None
        if locked is not None:  # the page may send anything: a locked preset is applied here
            system_prompt, params = locked.system_prompt, locked.sampling
        reply = _Reply()
        reply.signed_in = self._session_check(request)
        with self._lock:
            self._replies[key] = reply
        try:
            yield from self._stream(key, reply, member, turns, conversation_id, system_prompt, params)
        finally:
            self._forget(key, reply)
            reply.finished.set()

    def _stream(  # noqa: PLR0913
        self,
        key: str,
        reply: _Reply,
        member: Member,
        turns: list[Turn],
        conversation_id: str | None,
        system: str,
        params: SamplingParams,
    ) -> Iterator[tuple]:
        turns = [*turns, Turn(role="assistant", content="", stats="")]
        yield render(turns), turns, *_buttons(True)
        info = self.service.backend.loaded()
        if info is not None and not member.may_use(info.options.model):
            turns[-1] = Turn(
                role="assistant",
                content="",
                stats=f"⚠ Your account may not use {info.name}. Ask an admin of the household.",
            )
            self._save_reply(member, conversation_id, turns)
            yield render(turns), turns, *_buttons(False)
            return
        updates = self.service.reply(to_messages(turns[:-1]), system, params, reply.cancel, owner=str(member.id))
        shown_at = 0.0
        try:
            for update in updates:
                if reply.discarded:
                    break
                if not reply.signed_in():  # signed out, or the password was reset, meanwhile
                    reply.cancel.set()
                turns = apply_update(turns, update)
                now = time.monotonic()
                if update.done or now - shown_at >= self.update_interval:
                    shown_at = now
                    yield render(turns), turns, *_buttons(not update.done)
        finally:
            updates.close()  # ends the generation if we left early
        self._forget(key, reply)  # before the last update, so the next message is accepted at once
        if not reply.rewritten:
            if reply.discarded and not turns[-1]["stats"]:
                turns[-1] = Turn(role="assistant", content=turns[-1]["content"], stats="stopped")
            self._save_reply(member, conversation_id, turns)
        if not reply.discarded:
            yield render(turns), turns, *_buttons(False)
        elif key not in self._replies:  # no newer reply owns the buttons
            yield gr.skip(), gr.skip(), *_buttons(False)

    def _session_check(self, request: gr.Request) -> Callable[[], bool]:
        """A check, at most every SESSION_RECHECK seconds, that the session which asked for the
        reply still exists: signing out or a password reset ends replies already streaming."""
        cookies = getattr(request, "cookies", None)
        if cookies is None:  # not a browser or HTTP request (tests calling handlers directly)
            return lambda: True
        token = cookies.get(SESSION_COOKIE)
        state = {"at": time.monotonic(), "ok": True}

        def check() -> bool:
            if state["ok"] and time.monotonic() - state["at"] >= SESSION_RECHECK:
                state["at"] = time.monotonic()
                state["ok"] = self.household.member_for_token(token) is not None
            return state["ok"]

        return check

    def _save_reply(self, member: Member, conversation_id: str | None, turns: list[Turn]) -> None:
        if conversation_id is None:  # an incognito chat is never written
            return
        last = turns[-1]
        try:
            self.store.put_message(
                member.id, conversation_id, len(turns) - 1, "assistant", last["content"], last["stats"]
            )
        except NotFound:
            pass  # the conversation was deleted meanwhile
        except StoreError as exc:
            gr.Warning(f"The reply was not saved. {exc}")

    def _forget(self, key: str, reply: _Reply) -> None:
        reply.cancel.set()
        with self._lock:
            if self._replies.get(key) is reply:
                del self._replies[key]

    def add_user(
        self,
        text: str,
        turns: list[Turn],
        conversation_id: str | None = None,
        incognito: bool = False,
        request: gr.Request | None = None,
    ) -> tuple:
        """-> message box, turns, chat, current conversation id, conversation list. The message is
        saved before the reply starts; if it cannot be saved it stays in the box."""
        text = (text or "").strip()
        unchanged = gr.update(), turns, render(turns), conversation_id, gr.skip()
        if not text:
            return unchanged
        if request is not None and _key(request) in self._replies:
            gr.Info("Your previous reply is still being written: wait for it or press Stop")
            return unchanged  # the text stays in the box
        member = member_of(self.household, request)
        listing = gr.skip()
        if not incognito:
            try:
                if conversation_id is not None:
                    try:
                        self.store.put_message(member.id, conversation_id, len(turns), "user", text)
                    except NotFound:  # deleted in another tab: keep this chat in a new conversation
                        conversation_id = None
                if conversation_id is None:
                    conversation_id = self.store.create_conversation(member.id, turns[0]["content"] if turns else text)
                    for i, t in enumerate(turns):
                        self.store.put_message(member.id, conversation_id, i, t["role"], t["content"], t["stats"])
                    self.store.put_message(member.id, conversation_id, len(turns), "user", text)
                    listing = gr.Radio(choices=conversation_choices(self.household, member), value=conversation_id)
            except StoreError as exc:
                gr.Warning(f"Your message was not sent. {exc}")
                return unchanged
        turns = [*turns, Turn(role="user", content=text, stats="")]
        return "", turns, render(turns), conversation_id, listing

    def _rewrite(self, request: gr.Request | None, conversation_id: str | None, keep: int) -> None:
        if request is None:
            return
        self.stop(request, discard=True, rewritten=True)
        if conversation_id is not None:
            try:
                self.store.truncate(member_of(self.household, request).id, conversation_id, keep)
            except StoreError as exc:
                gr.Warning(str(exc))

    def retry(
        self, turns: list[Turn], conversation_id: str | None, data: gr.RetryData, request: gr.Request = None
    ) -> tuple:
        index = data.index if isinstance(data.index, int) else data.index[0]
        at = last_user_index(turns, index)
        turns = turns if at is None else turns[: at + 1]
        self._rewrite(request, conversation_id, len(turns))
        return turns, render(turns)

    def undo(
        self, turns: list[Turn], conversation_id: str | None, data: gr.UndoData, request: gr.Request = None
    ) -> tuple:
        index = data.index if isinstance(data.index, int) else data.index[0]
        at = last_user_index(turns, index)
        if at is None:
            return turns, render(turns), gr.update()
        text = turns[at]["content"]
        turns = turns[:at]
        self._rewrite(request, conversation_id, len(turns))
        return turns, render(turns), text

    def edit(
        self, turns: list[Turn], conversation_id: str | None, data: gr.EditData, request: gr.Request = None
    ) -> tuple:
        index = data.index if isinstance(data.index, int) else data.index[0]
        if index >= len(turns) or turns[index]["role"] != "user":
            return turns, render(turns)
        turns = [*turns[:index], Turn(role="user", content=str(data.value), stats="")]
        self._rewrite(request, conversation_id, index)
        if conversation_id is not None and request is not None:
            try:
                self.store.put_message(
                    member_of(self.household, request).id, conversation_id, index, "user", str(data.value)
                )
            except StoreError as exc:
                gr.Warning(str(exc))
        return turns, render(turns)

    def new_chat(self, request: gr.Request) -> tuple:
        """-> turns, chat, current id, list selection, title, export links. A reply still being
        written for the old chat stops and is saved there."""
        self.stop(request, discard=True)
        return [], [], None, gr.Radio(value=None), "", export_links(None)

    # -- presets and remembered settings --------------------------------------------------------
    def choose_preset(self, name: str) -> list:
        preset = self.service.preset(name)
        if preset is None:
            return [gr.update()] * (2 + len(SAMPLING_FIELDS))
        return [preset.system_prompt, f"*{preset.description}*", *sampling_to_ui(preset.sampling)]

    def remember(  # noqa: PLR0913 - one argument per control, as Gradio passes them
        self,
        preset: str,
        system: str,
        temperature: float,
        top_p: float,
        top_k: int,
        min_p: float,
        repetition_penalty: float,
        max_new_tokens: int,
        seed: int,
        stop: str,
        request: gr.Request,
    ) -> None:
        """Keep this member's preset, system prompt and sampling values for their next visit."""
        member = member_of(self.household, request)
        if member.locked_preset:
            return
        sampling = (temperature, top_p, top_k, min_p, repetition_penalty, max_new_tokens, seed, stop)
        prefs = {
            "preset": preset,
            "system_prompt": system,
            "sampling": dict(zip(SAMPLING_FIELDS, sampling, strict=True)),
        }
        try:
            self.store.set_preferences(member.id, prefs)
        except StoreError as exc:
            gr.Warning(str(exc))

    def on_load(self, request: gr.Request) -> list:
        """What depends on who opened the page: their chats, their remembered or locked settings,
        and what an admin may do."""
        member = member_of(self.household, request)
        prefs = self.store.preferences(member.id)
        locked = self.service.preset(member.locked_preset) if member.locked_preset else None
        preset = locked or self.service.preset(prefs.get("preset") or "") or self.service.preset(self.settings.preset)
        values = sampling_to_ui(preset.sampling) if preset else [gr.update()] * len(SAMPLING_FIELDS)
        saved = prefs.get("sampling") or {}
        if not locked and saved:
            values = [saved.get(name, v) for name, v in zip(SAMPLING_FIELDS, values, strict=True)]
        system = locked.system_prompt if locked else prefs.get("system_prompt", preset.system_prompt if preset else "")
        editable = locked is None
        note = (
            f"*🔒 {locked.name}: set by an admin of the household*"
            if locked
            else (f"*{preset.description}*" if preset else "")
        )
        admin = self.household.may_load_models(member)
        return [
            gr.Radio(choices=conversation_choices(self.household, member), value=None),
            gr.update(value=preset.name if preset else None, interactive=editable),
            note,
            gr.update(value=system, interactive=editable),
            *[gr.update(value=v, interactive=editable) for v in values],
            member_line(self.household, member),
            privacy_notice(self.household, member),
            gr.Column(visible=admin),  # load controls
            gr.Button(visible=admin and not member.builtin),  # the household panel
            gr.Accordion(visible=not member.builtin),  # API keys belong to accounts
        ]

    # -- models -------------------------------------------------------------------------------
    def load_model(  # noqa: PLR0913 - one argument per control of the Model panel
        self,
        model: str,
        quantization: str,
        device: str,
        dtype: str,
        context: float | None,
        quant_type_4bit: str = "nf4",
        compute_dtype: str = "auto",
        double_quant: bool = True,
        request: gr.Request | None = None,
    ) -> Iterator[str]:
        if not self.household.may_load_models(member_of(self.household, request)):
            yield "⚠ Only a household admin can load or unload models."
            return
        try:
            options = LoadOptions(
                model=(model or "").strip(),
                device=device,  # type: ignore[arg-type]
                dtype=dtype,
                quantization=quantization,  # type: ignore[arg-type]
                quant_type_4bit=quant_type_4bit,
                compute_dtype=compute_dtype,
                double_quant=bool(double_quant),
                context_length=int(context) if context else None,
            ).validate()
        except InvalidValue as exc:
            yield f"⚠ {exc}"
            return
        yield f"Loading {options.model}… this can take a minute."
        try:
            info = self.service.load(options)
        except Exception as exc:  # noqa: BLE001 - one line to the user; the old model stays loaded
            current = self.service.backend.loaded()
            still = f" Still using {current.name}." if current else ""
            gr.Warning(str(exc))
            yield f"⚠ {str(exc).rstrip('.')}.{still}"
            return
        yield f"✓ Loaded in {info.load_seconds:.1f} s: {info.describe()}"

    def fit_estimate(self, model: str, device: str, context: float | None) -> str:
        """Memory per load option for the picked model, and which of them fit this machine."""
        fit = getattr(self.service.backend, "fit", None)
        if fit is None or not (model or "").strip():
            return ""
        try:
            options = LoadOptions(
                model=model.strip(),
                device=device,  # type: ignore[arg-type]
                context_length=int(context) if context else None,
            ).validate()
        except InvalidValue as exc:
            return f"⚠ {exc}"
        return fit(options)

    def hardware_text(self) -> str:
        return self.service.hardware().describe().replace("\n", "  \n")

    def unload_model(self, request: gr.Request) -> str:
        """Free the model's memory (admins only); the next load brings one back."""
        if not self.household.may_load_models(member_of(self.household, request)):
            return "⚠ Only a household admin can load or unload models."
        unload = getattr(self.service.backend, "unload", None)
        if unload is None:
            return "⚠ This engine does not unload models."
        try:
            unload()
        except Exception as exc:  # noqa: BLE001 - e.g. too many replies waiting
            return f"⚠ Could not unload now: {exc}"
        return "✓ Unloaded: the memory is free. Load a model to chat again."

    def status(self) -> tuple:
        """The header line (short, for a phone), the full details in the Model panel, the timer."""
        loading = self.service.loading() is not None
        return self.service.status_line(), self.service.status(), gr.Timer(active=loading)

    def after_load(self) -> tuple:
        return gr.Dropdown(choices=self.model_choices()), self.service.status_line()

    def model_choices(self) -> list[tuple[str, str]]:
        specs = self.service.backend.available_models()
        return [(_label(s.name, s.size_bytes, s.note), s.id) for s in specs]

    # -- layout -------------------------------------------------------------------------------
    def build(self) -> gr.Blocks:
        presets = self.service.presets
        default = self.service.preset(self.settings.preset) or (presets[0] if presets else None)
        params = default.sampling if default else SamplingParams()
        with gr.Blocks(title="localchat", fill_height=True, analytics_enabled=False) as demo:
            turns = gr.State([])
            current = gr.State(None)  # the open conversation's id; None: not saved yet (or incognito)
            with gr.Sidebar(label="Chats", open=False, width=280, elem_id="lc-chats") as chats_bar:
                new_chat_side = gr.Button("+ New chat", size="sm", elem_id="lc-new-side")
                search = gr.Textbox(placeholder="Search chats", show_label=False, max_lines=1, elem_id="lc-search")
                listing = gr.Radio([], show_label=False, container=False, elem_id="lc-conversations")
                incognito = gr.Checkbox(
                    False,
                    label="Incognito: new chats are not saved",
                    elem_id="lc-incognito",
                )
                with gr.Accordion("This chat", open=False, elem_id="lc-this-chat"):
                    title = gr.Textbox(label="Title", max_lines=1, elem_id="lc-title")
                    with gr.Row():
                        rename = gr.Button("Rename", size="sm", elem_id="lc-rename")
                        delete = gr.Button("Delete", size="sm", variant="stop", elem_id="lc-delete")
                links = gr.Markdown(export_links(None), elem_id="lc-export")
                gr.HTML(IMPORT_FORM)
                notice = gr.Markdown("", elem_id="lc-privacy-notice")
                who = gr.HTML("", elem_id="lc-member")
            with gr.Sidebar(
                label="Settings", open=False, width=340, position="right", elem_id="lc-settings-panel"
            ) as sidebar:
                preset = gr.Dropdown(
                    [p.name for p in presets],
                    value=default.name if default else None,
                    label="Preset",
                    elem_id="lc-preset",
                )
                preset_note = gr.Markdown(f"*{default.description}*" if default else "")
                system = gr.Textbox(
                    default.system_prompt if default else "",
                    label="Instructions for the assistant (system prompt)",
                    lines=3,
                    info="{date}, {time} and {weekday} become today's date, the time and the day",
                    elem_id="lc-system",
                )
                with gr.Accordion("Sampling", open=False, elem_id="lc-sampling"):
                    sliders = _sampling_controls(params)
                with gr.Accordion("Model", open=False, elem_id="lc-model"):
                    model_info = gr.Markdown(self.service.status(), elem_id="lc-model-info")
                    with gr.Column(visible=False) as loader:
                        picker = gr.Dropdown(
                            self.model_choices(),
                            value=self.settings.model,
                            label="Model",
                            info="Pick one, or type a folder, a .gguf file, or a cached Hub id",
                            allow_custom_value=True,
                            elem_id="lc-model-picker",
                        )
                        quant = gr.Radio(list(QUANTIZATIONS), value=self.settings.quantization, label="Quantization")
                        with gr.Group(visible=self.settings.quantization == "4bit") as four_bit:
                            quant_type = gr.Radio(
                                list(QUANT_TYPES_4BIT), value=self.settings.quant_type_4bit, label="4-bit type"
                            )
                            compute = gr.Dropdown(
                                list(DTYPES), value=self.settings.compute_dtype, label="4-bit compute dtype"
                            )
                            double = gr.Checkbox(
                                self.settings.double_quant, label="Double quantization (a little smaller)"
                            )
                        device = gr.Radio(list(DEVICES), value=self.settings.device, label="Device")
                        dtype = gr.Dropdown(list(DTYPES), value=self.settings.dtype, label="Weights dtype")
                        context = gr.Number(
                            self.settings.context_length or 0,
                            label="Context length cap (tokens; 0 = the model's own)",
                            precision=0,
                            minimum=0,
                        )
                        fit_button = gr.Button("Will it fit?", size="sm", elem_id="lc-fit-check")
                        fit_info = gr.Markdown("", elem_id="lc-fit")
                        with gr.Row():
                            load = gr.Button("Load model", variant="primary", elem_id="lc-load")
                            unload = gr.Button("Unload", elem_id="lc-unload")
                        load_result = gr.Markdown("", elem_id="lc-load-result")
                        picker_refresh = {
                            "fn": lambda: gr.Dropdown(choices=self.model_choices()),
                            "inputs": None,
                            "outputs": [picker],
                            "queue": False,
                            **_hidden,
                        }
                        downloads_refresh = self.downloads.build(picker_refresh)
                        with gr.Accordion("This machine", open=False):
                            gr.Markdown(self.hardware_text, elem_id="lc-hardware")
                with gr.Accordion("API keys", open=False, visible=False, elem_id="lc-api-keys") as keys_box:
                    keys_refresh = self.keys.build()
                if self.service.preset_problems:
                    gr.Markdown(
                        "**Some presets have problems:**\n"
                        + "\n".join(f"- {p.message}" for p in self.service.preset_problems),
                        elem_id="lc-preset-problems",
                    )
            with gr.Row(elem_id="lc-header"):
                status = gr.Markdown(self.service.status_line(), elem_classes="lc-status", elem_id="lc-status")
                new_chat = gr.Button("New chat", size="sm", scale=0, min_width=80, elem_id="lc-new")
                household_btn = gr.Button(
                    "Household", size="sm", scale=0, min_width=80, visible=False, elem_id="lc-household"
                )
                open_settings = gr.Button("Settings", size="sm", scale=0, min_width=80, elem_id="lc-settings")
            with gr.Column(visible=False, elem_id="lc-admin") as admin_view:
                admin_refresh = self.admin.build()
            with gr.Column(scale=1, elem_id="lc-chat-view") as chat_view:
                chatbot = gr.Chatbot(
                    [],
                    label="localchat",
                    show_label=False,
                    editable="user",
                    buttons=["copy"],
                    scale=1,
                    placeholder="**Ask anything.** Everything stays on this machine.",
                    latex_delimiters=[
                        {"left": "$$", "right": "$$", "display": True},
                        {"left": "\\(", "right": "\\)", "display": False},
                        {"left": "\\[", "right": "\\]", "display": True},
                    ],
                    elem_id="lc-chat",
                )
                with gr.Row(equal_height=True):
                    box = gr.Textbox(
                        placeholder="Message localchat…",
                        show_label=False,
                        lines=1,
                        max_lines=8,
                        scale=8,
                        autofocus=True,
                        elem_id="lc-input",
                    )
                    send = gr.Button("Send", variant="primary", scale=1, min_width=70, elem_id="lc-send")
                    stop = gr.Button("Stop", variant="stop", scale=1, min_width=70, visible=False, elem_id="lc-stop")
            timer = gr.Timer(1.5, active=self.service.loading() is not None)
            wide = gr.Checkbox(False, visible=False)  # set by the browser: is the screen wide?
            # On a phone the chat list covers the chat: it closes once a chat is picked.
            close_if_narrow = {
                "fn": lambda is_wide: gr.skip() if is_wide else gr.Sidebar(open=False),
                "inputs": [wide],
                "outputs": [chats_bar],
                "js": "() => [window.innerWidth >= 900]",
                "queue": False,
                **_hidden,
            }

            reply_in = [turns, current, system, *sliders]
            reply_out = [chatbot, turns, send, stop]
            add_in, add_out = [box, turns, current, incognito], [box, turns, chatbot, current, listing]
            # Send and Enter run the same two steps; only Send's are named for gradio_client users.
            go = {"fn": self.respond, "inputs": reply_in, "outputs": reply_out, "concurrency_limit": None}
            send.click(self.add_user, add_in, add_out, queue=False, api_name="add_user").then(**go, api_name="respond")
            box.submit(self.add_user, add_in, add_out, queue=False, **_hidden).then(**go, **_hidden)
            stop.click(self.stop, None, None, queue=False, api_name="stop")
            chatbot.retry(self.retry, [turns, current], [turns, chatbot], queue=False, **_hidden).then(**go, **_hidden)
            chatbot.undo(self.undo, [turns, current], [turns, chatbot, box], queue=False, **_hidden)
            chatbot.edit(self.edit, [turns, current], [turns, chatbot], queue=False, **_hidden).then(**go, **_hidden)
            fresh = [turns, chatbot, current, listing, title, links]
            chatbot.clear(self.new_chat, None, fresh, queue=False, api_name="clear")
            new_chat.click(self.new_chat, None, fresh, queue=False, **_hidden)
            incognito.change(self.new_chat, None, fresh, queue=False, **_hidden)
            new_chat_side.click(self.new_chat, None, fresh, queue=False, **_hidden).then(**close_if_narrow)

            c = self.conversations
            listing.input(
                c.open,
                [listing, current],
                [turns, chatbot, current, title, links],
                queue=False,
                api_name="open_conversation",
            ).then(**close_if_narrow)
            search.change(c.search, [search, current], [listing], queue=False, **_hidden)
            rename.click(c.rename, [current, title, search], [listing], queue=False, api_name="rename_conversation")
            delete.click(
                c.delete,
                [current, search],
                [turns, chatbot, current, listing, title, links],
                queue=False,
                js="(id, q) => { if (!confirm('Delete this chat? This cannot be undone.')) throw 'kept'; return [id, q]; }",
                api_name="delete_conversation",
            )

            # The header button toggles the sidebar; its own arrow can open or close it too.
            sidebar_open = gr.State(False)
            sidebar.expand(lambda: True, None, [sidebar_open], queue=False, **_hidden)
            sidebar.collapse(lambda: False, None, [sidebar_open], queue=False, **_hidden)
            open_settings.click(
                lambda is_open: (gr.Sidebar(open=not is_open), not is_open),
                [sidebar_open],
                [sidebar, sidebar_open],
                queue=False,
                **_hidden,
            )
            admin_open = gr.State(False)
            household_btn.click(
                lambda is_open: (gr.Column(visible=not is_open), gr.Column(visible=is_open), not is_open),
                [admin_open],
                [admin_view, chat_view, admin_open],
                queue=False,
                **_hidden,
            ).then(**admin_refresh)
            quant.change(lambda q: gr.Group(visible=q == "4bit"), [quant], [four_bit], queue=False, **_hidden)
            keep = {"fn": self.remember, "inputs": [preset, system, *sliders], "outputs": None, "queue": False}
            preset.input(self.choose_preset, [preset], [system, preset_note, *sliders], queue=False, **_hidden).then(
                **keep, **_hidden
            )
            system.blur(**keep, **_hidden)
            for control in sliders:
                (control.release if isinstance(control, gr.Slider) else control.blur)(**keep, **_hidden)
            load.click(
                self.load_model,
                [picker, quant, device, dtype, context, quant_type, compute, double],
                [load_result],
                concurrency_limit=None,
                api_name="load_model",
            ).then(self.after_load, None, [picker, status], queue=False, **_hidden)
            fit_in = [picker, device, context]
            fit_button.click(self.fit_estimate, fit_in, [fit_info], queue=False, **_hidden)
            picker.input(self.fit_estimate, fit_in, [fit_info], queue=False, **_hidden)
            unload.click(self.unload_model, None, [load_result], queue=False, **_hidden).then(
                self.status, None, [status, model_info, timer], queue=False, **_hidden
            )
            timer.tick(self.status, None, [status, model_info, timer], queue=False, **_hidden)
            demo.load(self.status, None, [status, model_info, timer], queue=False, **_hidden)
            demo.load(**keys_refresh)
            demo.load(**downloads_refresh)
            # The chat list opens by itself on a wide screen; on a phone it would cover the chat.
            demo.load(
                lambda is_wide: gr.Sidebar(open=True) if is_wide else gr.skip(),  # it starts closed
                [wide],
                [chats_bar],
                js="() => [window.innerWidth >= 900]",
                queue=False,
                **_hidden,
            )
            demo.load(
                self.on_load,
                None,
                [listing, preset, preset_note, system, *sliders, who, notice, loader, household_btn, keys_box],
                queue=False,
                **_hidden,
            )
        return demo


_hidden: dict = {"api_visibility": "private"}


def _key(request: gr.Request) -> str:
    """Which browser tab a reply belongs to; Gradio gives each page load its own session hash."""
    return request.session_hash or f"request-{id(request)}"


def _buttons(generating: bool) -> tuple:
    return gr.Button(visible=not generating), gr.Button(visible=generating)


def _label(name: str, size: int | None, note: str) -> str:
    extra = [f"{size / 2**20:,.0f} MB"] if size else []
    extra += [note] if note else []
    return f"{name} ({', '.join(extra)})" if extra else name


def _sampling_controls(p: SamplingParams) -> list[gr.components.Component]:
    def slider(name: str, label: str, info: str | None = None) -> gr.Slider:
        low, high, step = SAMPLING_RANGES[name]
        return gr.Slider(low, high, getattr(p, name), step=step, label=label, info=info)

    return [
        slider("temperature", "Temperature", "0 = always the most likely word; higher = more varied"),
        slider("top_p", "Top-p"),
        slider("top_k", "Top-k", "0 = off"),
        slider("min_p", "Min-p"),
        slider("repetition_penalty", "Repetition penalty"),
        slider("max_new_tokens", "Max new tokens", "the longest reply, in tokens (about ¾ of a word each)"),
        gr.Number(-1 if p.seed is None else p.seed, label="Seed", info="-1 = random", precision=0),
        gr.Textbox(format_stop(p.stop), label="Stop strings", info="one per line; \\n for a line break", lines=2),
    ]
