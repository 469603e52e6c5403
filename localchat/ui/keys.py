"""API keys in the Settings sidebar: each member creates and revokes their own; a new key is shown
once and never again (only its hash is stored)."""

from __future__ import annotations

import time

import gradio as gr

from localchat.household import AccessDenied, Household
from localchat.store import NotFound, StoreError
from localchat.ui.members import member_of


class ApiKeys:
    def __init__(self, household: Household):
        self.household = household

    def _rows(self, member) -> list[tuple[str, int]]:
        def when(ts: float | None) -> str:
            return time.strftime("%Y-%m-%d", time.localtime(ts)) if ts else "never"

        return [
            (f"{k.name} (lc-{k.prefix}-…, made {when(k.created_at)}, last used {when(k.last_used_at)})", k.id)
            for k in self.household.store.api_keys(member.id)
        ]

    def listing(self, request: gr.Request) -> gr.Dropdown:
        member = member_of(self.household, request)
        return gr.Dropdown(choices=[] if member.builtin else self._rows(member), value=None)

    def create(self, name: str, request: gr.Request) -> tuple:
        member = member_of(self.household, request)
        try:
            key = self.household.create_api_key(member, name)
        except (AccessDenied, StoreError) as exc:
            return f"⚠ {exc}", gr.skip(), gr.skip()
        shown = (
            "**Your new key** (copy it now: it is shown only once):\n\n"
            f"```\n{key}\n```\n\nUse it as the API key of any OpenAI client, with base URL `/v1` of this server."
        )
        return shown, gr.Dropdown(choices=self._rows(member), value=None), ""

    def revoke(self, key_id: int | None, request: gr.Request) -> tuple:
        member = member_of(self.household, request)
        if key_id is None:
            return "Pick a key to revoke", gr.skip()
        try:
            self.household.store.revoke_api_key(member.id, int(key_id))
        except (NotFound, ValueError) as exc:
            return f"⚠ {exc}", gr.skip()
        return "✓ Revoked: that key no longer works.", gr.Dropdown(choices=self._rows(member), value=None)

    def build(self) -> dict:
        """Inside an Accordion; returns the load-event arguments that fill the list."""
        gr.Markdown("For editors, scripts and apps that speak the OpenAI API: base URL `http://THIS-MACHINE:PORT/v1`.")
        name = gr.Textbox(label="Name of the new key", placeholder="e.g. my editor", max_lines=1, elem_id="lc-key-name")
        create = gr.Button("Create key", size="sm", elem_id="lc-key-create")
        shown = gr.Markdown("", elem_id="lc-key-shown")
        keys = gr.Dropdown([], label="Your keys", elem_id="lc-keys")
        revoke = gr.Button("Revoke key", size="sm", variant="stop", elem_id="lc-key-revoke")
        q = {"queue": False, "api_visibility": "private"}
        create.click(self.create, [name], [shown, keys, name], **q)
        revoke.click(self.revoke, [keys], [shown, keys], **q)
        return {"fn": self.listing, "inputs": None, "outputs": [keys], **q}
