"""The household panel (admins only): members, their roles, passwords, models and locked presets,
their API keys, and whether admins may read members' chats.

Invariant: every handler checks on the server that the member of the request is an admin; hiding
the panel from members is a convenience, not the protection. A member's chats, read by an admin,
render as safe Markdown (their HTML as text, no image from another host), like the chat itself.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import UTC, datetime

import gradio as gr

from localchat.core import ChatService
from localchat.household import AccessDenied, Household
from localchat.store import Conversation, StoreError
from localchat.transfer import SPEAKERS
from localchat.ui.keys import HouseholdKeys
from localchat.ui.markdown import close_open_fence, latex_config, safe_markdown
from localchat.ui.members import member_of

ALL_MODELS = "Every model"
NO_LOCK = "(not locked)"


class AdminPanel:
    def __init__(self, household: Household, service: ChatService):
        self.household = household
        self.service = service
        self.keys = HouseholdKeys(household)

    def _admin(self, request: gr.Request):
        member = member_of(self.household, request)
        try:
            return self.household.require_admin(member)
        except AccessDenied as exc:
            raise gr.Error(str(exc)) from None

    def _id(self, name: str | None) -> int:
        member = self.household.store.member_by_name(name or "")
        if member is None:
            raise gr.Error("Pick a household member first")
        return member.id

    def _models(self) -> list[tuple[str, str]]:
        return [(s.name, s.id) for s in self.service.backend.available_models()]

    def table(self) -> list[list[str]]:
        store = self.household.store
        names = dict(self._models())
        names = {v: k for k, v in names.items()}
        rows = []
        for m in store.members():
            models = ALL_MODELS if m.allowed_models is None else ", ".join(names.get(x, x) for x in m.allowed_models)
            rows.append([m.name, m.role, models or "none", m.locked_preset or "", str(store.count_sessions(m.id))])
        return rows

    def refresh(self, request: gr.Request) -> tuple:
        self._admin(request)
        names = [m.name for m in self.household.store.members()]
        return (
            self.table(),
            gr.Dropdown(choices=names, value=None),
            gr.Dropdown(choices=names, value=None),
            self.household.admins_read_chats,
            gr.Column(visible=self.household.admins_read_chats),
            gr.CheckboxGroup(choices=self._models()),  # their paths reach an admin's page only
            self.keys.listing(request),
        )

    def pick(self, name: str | None, request: gr.Request) -> tuple:
        """Fill the edit form with the chosen member's role, models and locked preset."""
        self._admin(request)
        member = self.household.store.member_by_name(name or "")
        if member is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        every = member.allowed_models is None
        return (
            member.role,
            every,
            gr.CheckboxGroup(value=list(member.allowed_models or [])),
            member.locked_preset or NO_LOCK,
        )

    def add(self, name: str, password: str, role: str, request: gr.Request) -> tuple:
        by = self._admin(request)
        try:
            member = self.household.add_member(name, password, role, by=by)
        except (ValueError, StoreError, AccessDenied) as exc:
            return f"⚠ {exc}", gr.skip(), gr.skip(), gr.skip()
        names = [m.name for m in self.household.store.members()]
        return f"✓ Added {member.name} ({member.role}).", self.table(), gr.Dropdown(choices=names), ""

    def save(self, name: str, role: str, every: bool, models: list[str], locked: str, request: gr.Request) -> tuple:
        by = self._admin(request)
        member_id = self._id(name)
        try:
            self.household.set_role(by, member_id, role)
            preset = None if locked in (None, "", NO_LOCK) else locked
            self.household.set_policy(by, member_id, None if every else list(models or []), preset)
        except (AccessDenied, StoreError) as exc:
            return f"⚠ {exc}", gr.skip()
        return f"✓ Saved {name}.", self.table()

    def reset_password(self, name: str, password: str, request: gr.Request) -> tuple:
        by = self._admin(request)
        try:
            self.household.reset_password(by, self._id(name), password)
        except (ValueError, AccessDenied, StoreError) as exc:
            return f"⚠ {exc}", gr.skip(), gr.skip(), gr.skip()
        told = f"✓ New password set; {name} is signed out everywhere and their API keys are revoked."
        return told, self.table(), "", self.keys.listing(request)

    def remove(self, name: str, request: gr.Request) -> tuple:
        by = self._admin(request)
        try:
            self.household.remove_member(by, self._id(name))
        except (AccessDenied, StoreError) as exc:
            return f"⚠ {exc}", gr.skip(), gr.skip(), gr.skip(), gr.skip()
        names = [m.name for m in self.household.store.members()]
        return (
            f"✓ Removed {name}, their chats and their API keys.",
            self.table(),
            gr.Dropdown(choices=names, value=None),
            gr.Dropdown(choices=names, value=None),
            self.keys.listing(request),
        )

    def set_reading(self, on: bool, request: gr.Request) -> tuple:
        by = self._admin(request)
        self.household.set_admins_read_chats(by, on)
        told = "Members now see a notice that admins can read their chats." if on else "Admins cannot read chats."
        return f"✓ {told}", gr.Column(visible=on)

    def read(self, name: str, request: gr.Request) -> str:
        by = self._admin(request)
        try:
            chats = self.household.read_member_chats(by, self._id(name))
        except AccessDenied as exc:
            return f"⚠ {exc}"
        return transcript(chats) if chats else f"*{safe_markdown(name)} has no saved chats.*"

    def build(self) -> dict:
        """Lay out the panel; returns the event arguments that refresh it when it opens."""
        presets = [NO_LOCK, *(p.name for p in self.service.presets)]
        gr.Markdown("## Household")
        result = gr.Markdown("", elem_id="lc-admin-result")
        members = gr.Dataframe(
            headers=["Name", "Role", "Models", "Locked preset", "Signed in"],
            interactive=False,
            elem_id="lc-members",
        )
        with gr.Accordion("Add a member", open=False):
            new_name = gr.Textbox(label="Name", max_lines=1, elem_id="lc-new-name")
            new_password = gr.Textbox(
                label="Password (at least 8 characters)", type="password", elem_id="lc-new-password"
            )
            new_role = gr.Radio(["member", "admin"], value="member", label="Role")
            add = gr.Button("Add member", variant="primary", elem_id="lc-add-member")
        with gr.Accordion("Change a member", open=False):
            who = gr.Dropdown([], label="Member", elem_id="lc-edit-member")
            role = gr.Radio(["member", "admin"], label="Role")
            every = gr.Checkbox(True, label="May use every model")
            models = gr.CheckboxGroup([], label="Or only these models")  # filled by refresh, for admins
            locked = gr.Dropdown(
                presets, value=NO_LOCK, label="Locked preset (they cannot change it or the instructions)"
            )
            save = gr.Button("Save", variant="primary", elem_id="lc-save-member")
            password = gr.Textbox(label="New password", type="password")
            reset = gr.Button("Set new password (signs them out, revokes their API keys)")
            remove = gr.Button("Remove member and their chats", variant="stop")
        with gr.Accordion("API keys", open=False):
            keys = self.keys.build(result)
        with gr.Accordion("Privacy", open=False):
            reading = gr.Checkbox(
                False,
                label="Admins can read members' chats",
                info="Off by default. When on, every member sees a notice saying so.",
                elem_id="lc-admins-read",
            )
            with gr.Column(visible=False) as reader:
                whose = gr.Dropdown([], label="Read the chats of", elem_id="lc-reader-pick")
                shown = gr.Markdown("", latex_delimiters=latex_config(), elem_id="lc-transcript")
        q = {"queue": False, "api_visibility": "private"}
        add.click(self.add, [new_name, new_password, new_role], [result, members, who, new_password], **q)
        who.input(self.pick, [who], [role, every, models, locked], **q)
        save.click(self.save, [who, role, every, models, locked], [result, members], **q)
        reset.click(self.reset_password, [who, password], [result, members, password, keys], **q)
        remove.click(
            self.remove,
            [who],
            [result, members, who, whose, keys],
            js="(n) => { if (!confirm('Remove ' + n + ' and all their chats?')) throw 'kept'; return [n]; }",
            **q,
        )
        reading.input(self.set_reading, [reading], [result, reader], **q)
        whose.input(self.read, [whose], [shown], **q)
        return {
            "fn": self.refresh,
            "inputs": None,
            "outputs": [members, who, whose, reading, reader, models, keys],
            **q,
        }


def transcript(chats: Sequence[Conversation]) -> str:
    """A member's chats for the admin's reader: titles, messages and stats never render as HTML."""
    parts = []
    for c in chats:
        when = datetime.fromtimestamp(c.created_at, UTC).strftime("%Y-%m-%d %H:%M")
        lines = [f"### {safe_markdown(' '.join(c.title.split()))}", "", f"*{when} UTC*", ""]
        for m in c.messages:
            lines += [f"**{SPEAKERS.get(m.role, m.role)}:**", "", close_open_fence(safe_markdown(m.content)), ""]
            if m.stats:
                lines += [f"<sub>{html.escape(m.stats)}</sub>", ""]
        parts.append("\n".join(lines))
    return "\n---\n\n".join(parts)
