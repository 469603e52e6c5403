"""The conversations sidebar: list, search, open, rename, delete, export links, incognito.

Invariant: every handler reads and writes through Store with the member of the request, so a
conversation id sent by a page never reaches another member's conversation.
"""

from __future__ import annotations

import html
from collections.abc import Callable

import gradio as gr

from localchat.household import Household
from localchat.store import Member, NotFound, StoreError
from localchat.ui.adapters import render, to_turn
from localchat.ui.members import member_of


def conversation_choices(household: Household, member: Member, search: str = "") -> list[tuple[str, str]]:
    return [(c.title, c.id) for c in household.store.conversations(member.id, search)]


def export_links(conversation_id: str | None) -> str:
    """Links to our own export routes (never Gradio's shared file cache)."""
    links = []
    if conversation_id:
        links.append(f"This chat: [Markdown](/export/{conversation_id}.md) · [JSON](/export/{conversation_id}.json)")
    links.append("All chats: [Markdown](/export/all.md) · [JSON](/export/all.json)")
    return "  \n".join(links)


# The page reads the chosen file and posts its text to /import (our route, scoped to the session):
# nothing passes through Gradio's shared upload folder.
IMPORT_FORM = """<label class="lc-import" id="lc-import">Import chats (.json)
<input type="file" accept=".json,application/json" id="lc-import-file" onchange="
const f = this.files[0]; if (!f) return;
f.text().then(t => fetch('/import', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: t}))
 .then(r => r.json()).then(j => { alert(j.error ? 'Import failed: ' + j.error.message
   : 'Imported ' + j.imported + ' chat(s).'); if (!j.error) location.reload(); });
this.value = '';"></label>"""


class Conversations:
    def __init__(self, household: Household, stop_reply: Callable[[object, bool], None]):
        self.household = household
        self.stop_reply = stop_reply  # (request, rewritten) -> None: ends this tab's running reply

    def listing(self, request: gr.Request, current: str | None = None, search: str = "") -> gr.Radio:
        member = member_of(self.household, request)
        return gr.Radio(choices=conversation_choices(self.household, member, search), value=current)

    def open(self, conversation_id: str | None, current: str | None, request: gr.Request) -> tuple:
        """Switch to a conversation of this member -> turns, chat, current id, title, export links.
        A reply still streaming for the old one is stopped and saved where it belongs."""
        if not conversation_id or conversation_id == current:
            return (gr.skip(),) * 5
        member = member_of(self.household, request)
        try:
            chat = self.household.store.conversation(member.id, conversation_id)
        except NotFound as exc:
            gr.Warning(str(exc))
            return (gr.skip(),) * 5
        self.stop_reply(request, False)
        turns = [to_turn(m) for m in chat.messages if m.role != "system"]
        return turns, render(turns), conversation_id, chat.title, export_links(conversation_id)

    def rename(self, conversation_id: str | None, title: str, search: str, request: gr.Request) -> gr.Radio:
        member = member_of(self.household, request)
        if not conversation_id:
            gr.Info("Send a message first: a new chat gets its title from it")
            return gr.skip()
        try:
            self.household.store.rename(member.id, conversation_id, title)
        except StoreError as exc:
            gr.Warning(str(exc))
        return self.listing(request, conversation_id, search)

    def delete(self, conversation_id: str | None, search: str, request: gr.Request) -> tuple:
        """-> turns, chat, current id, list, title, export links."""
        member = member_of(self.household, request)
        if not conversation_id:
            return (gr.skip(),) * 6
        try:
            self.household.store.delete(member.id, conversation_id)
        except StoreError as exc:
            gr.Warning(str(exc))
            return (gr.skip(),) * 6
        self.stop_reply(request, True)
        return [], [], None, self.listing(request, None, search), "", export_links(None)

    def search(self, query: str, current: str | None, request: gr.Request) -> gr.Radio:
        return self.listing(request, current, query)


def member_line(household: Household, member: Member) -> str:
    if member.builtin:  # single-user mode: the way to share with the household
        return (
            '<p class="lc-member"><a href="/setup" id="lc-setup">Share with your household…</a> '
            "(accounts, so each person has their own private chats)</p>"
        )
    role = " (admin)" if member.is_admin else ""
    return (
        f'<form method="post" action="/logout" class="lc-member">Signed in as <b>{html.escape(member.name)}</b>'
        f'{role} <button type="submit" id="lc-logout">Sign out</button></form>'
    )


def privacy_notice(household: Household, member: Member) -> str:
    if household.admins_read_chats and not member.is_admin:
        return "🔓 **An admin of this household can read your chats** (turned on in the household settings)."
    return ""
