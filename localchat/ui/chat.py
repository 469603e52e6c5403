"""The chat's handlers: send, respond, stop, retry, undo, edit, new chat, and the chat's documents choice.

Owns: mapping Gradio values (turns, sliders, the request) to calls of the core (`Chats`) and its
updates back to Gradio values; nothing here writes the store or decides policy. Invariants: the
member comes from the request's session, never from a value the page sends; Stop reaches only this
member's reply in this browser tab (keyed by member and Gradio's session hash).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import gradio as gr

from localchat.core import Chats
from localchat.core.documents import LibraryChoice
from localchat.core.replies import Key, Reply
from localchat.household import SESSION_COOKIE, Household
from localchat.store import Member, StoreError
from localchat.text import clean_text
from localchat.types import InvalidValue
from localchat.ui.adapters import (
    SAMPLING_FIELDS,
    Turn,
    apply_update,
    last_user_index,
    render,
    sampling_from_ui,
    to_history,
)
from localchat.ui.conversations import conversation_choices, export_links
from localchat.ui.members import member_of

# At most ~12 screen updates a second: each update costs the server CPU that decoding needs
# (measured on 2 cores: one update per token streamed at 0.75x raw speed).
UPDATE_INTERVAL = 0.08
SESSION_RECHECK = 2.0  # seconds between checks that a streaming reply's session still exists


def tab_key(member: Member, request: gr.Request) -> Key:
    """Which reply is this tab's: Gradio gives each page load its own session hash."""
    return member.id, request.session_hash or f"request-{id(request)}"


NO_DOCUMENTS, ALL_DOCUMENTS = "none", "all"


def choice_value(choice: LibraryChoice) -> str:
    """The Documents dropdown's value for a stored choice: "none", "all" or one library's id."""
    if choice is None:
        return NO_DOCUMENTS
    return ALL_DOCUMENTS if choice == "all" else str(choice[0])


def choice_from(value: str | None) -> LibraryChoice:
    if not value or value == NO_DOCUMENTS:
        return None
    if value == ALL_DOCUMENTS:
        return "all"
    return (int(value),) if value.isdigit() else None


def buttons(generating: bool) -> tuple:
    return gr.Button(visible=not generating), gr.Button(visible=generating)


class ChatHandlers:
    def __init__(self, chats: Chats, household: Household, update_interval: float = UPDATE_INTERVAL):
        self.chats = chats
        self.household = household
        self.update_interval = update_interval

    def stop(self, request: gr.Request, discard: bool = False, rewritten: bool = False) -> None:
        """Stop this tab's reply (never another tab's). `discard`: the page shows something else
        now; `rewritten`: the conversation changed, so the partial reply is not saved."""
        self.chats.replies.stop(tab_key(member_of(self.household, request), request), discard, rewritten)

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
        documents: str = NO_DOCUMENTS,
    ) -> Iterator[tuple]:
        """Stream a reply to the conversation, which must end with the user's message; `documents`
        is the chat's Documents choice (the core searches only libraries the member may use)."""
        self.chats.service.expect()  # before the checks: messages sent together are read together
        member = member_of(self.household, request)
        key = tab_key(member, request)
        if self.chats.replies.busy(key):  # this tab is still receiving a reply (add_user kept the text)
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return
        if not turns or turns[-1]["role"] != "user":
            yield render(turns), turns, *buttons(False)
            return
        sampling = (temperature, top_p, top_k, min_p, repetition_penalty, max_new_tokens, seed, stop)
        try:
            params = sampling_from_ui(dict(zip(SAMPLING_FIELDS, sampling, strict=True)))
        except InvalidValue as exc:
            gr.Warning(str(exc))
            yield render(turns), turns, *buttons(False)
            return
        reply = self.chats.replies.begin(key, self._session_check(request))
        if reply is None:
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return
        try:
            turns = [*turns, Turn(role="assistant", content="", stats="")]
            yield render(turns), turns, *buttons(True)
            history = to_history(turns[:-1])
            updates = self.chats.reply(
                member, conversation_id, history, system_prompt, params, reply, choice_from(documents)
            )
            yield from self._show(key, reply, turns, updates)
        finally:
            self.chats.replies.end(key, reply)
            reply.finished.set()

    def _show(self, key: Key, reply: Reply, turns: list[Turn], updates: Iterator) -> Iterator[tuple]:
        shown_at = 0.0
        try:
            for update in updates:
                turns = apply_update(turns, update)
                now = time.monotonic()
                if update.done or now - shown_at >= self.update_interval:
                    shown_at = now
                    yield render(turns), turns, *buttons(not update.done)
        finally:
            updates.close()  # ends the generation (and saves the reply) if we left early
        self.chats.replies.end(key, reply)  # before the last update, so the next message is accepted at once
        if reply.save_error:
            gr.Warning(reply.save_error)
        if not reply.discarded:
            yield render(turns), turns, *buttons(False)
        elif self.chats.replies.get(key) is None:  # no newer reply owns the buttons
            yield gr.skip(), gr.skip(), *buttons(False)

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
        text = clean_text((text or "").strip())  # as the core saves it: the page gets back what orjson can send
        unchanged = gr.update(), turns, render(turns), conversation_id, gr.skip()
        if not text:
            return unchanged
        member = member_of(self.household, request)
        if request is not None and self.chats.replies.busy(tab_key(member, request)):
            gr.Info("Your previous reply is still being written: wait for it or press Stop")
            return unchanged  # the text stays in the box
        listing = gr.skip()
        if not incognito:
            try:
                conversation_id, new = self.chats.add_user(member, conversation_id, to_history(turns), text)
            except StoreError as exc:
                gr.Warning(f"Your message was not sent. {exc}")
                return unchanged
            if new:
                listing = gr.Radio(choices=conversation_choices(self.household, member), value=conversation_id)
        turns = [*turns, Turn(role="user", content=text, stats="")]
        return "", turns, render(turns), conversation_id, listing

    def _rewrite(self, request: gr.Request | None, conversation_id: str | None, keep: int) -> None:
        if request is None:
            return
        self.stop(request, discard=True, rewritten=True)
        try:
            self.chats.truncate(member_of(self.household, request), conversation_id, keep)
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
        """The message becomes the edited text and what followed it goes, in one store write. If
        the write fails the stored chat is unchanged, the edit stays shown, and a reply turn says so
        (so the chained respond answers nothing)."""
        index = data.index if isinstance(data.index, int) else data.index[0]
        if index >= len(turns) or turns[index]["role"] != "user":
            return turns, render(turns)
        text = clean_text(str(data.value))
        turns = [*turns[:index], Turn(role="user", content=text, stats="")]
        if request is not None:
            self.stop(request, discard=True, rewritten=True)
            try:
                self.chats.edit(member_of(self.household, request), conversation_id, index, text)
            except StoreError as exc:
                gr.Warning(f"Your edit was not saved. {exc}")
                turns = [*turns, Turn(role="assistant", content="", stats=f"⚠ Your edit was not saved. {exc}")]
        return turns, render(turns)

    # -- the chat's documents ------------------------------------------------------------------
    def documents_choices(self, member: Member) -> list[tuple[str, str]]:
        libraries = self.chats.service.libraries
        if libraries is None:
            return []
        shown = [("No documents", NO_DOCUMENTS), ("All my documents", ALL_DOCUMENTS)]
        return shown + [(f"📄 {lib.name}", str(lib.id)) for lib in libraries.visible(member)]

    def documents_menu(self, conversation_id: str | None, request: gr.Request) -> gr.Dropdown:
        """The Documents dropdown for this member and chat: the libraries they may use now, and the
        chat's remembered choice (a library no longer theirs reads as none)."""
        member = member_of(self.household, request)
        choices = self.documents_choices(member)
        value = choice_value(self.chats.libraries(member, conversation_id))
        if value not in {v for _, v in choices}:
            value = NO_DOCUMENTS
        return gr.Dropdown(choices=choices, value=value, visible=bool(choices))

    def choose_documents(self, value: str, conversation_id: str | None, request: gr.Request) -> None:
        """Remember the choice with a saved chat (a new chat saves it with its first reply)."""
        try:
            self.chats.set_libraries(member_of(self.household, request), conversation_id, choice_from(value))
        except StoreError:
            pass  # deleted meanwhile: the next reply starts a new chat with the page's choice

    def new_chat(self, request: gr.Request) -> tuple:
        """-> turns, chat, current id, list selection, title, export links. A reply still being
        written for the old chat stops and is saved there."""
        self.stop(request, discard=True)
        return [], [], None, gr.Radio(value=None), "", export_links(None)
