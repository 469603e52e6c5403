"""API keys: in the Settings sidebar each member creates and revokes their own (a new key is shown
once and never again: only its hash is stored); in the household panel admins see and revoke
everyone's. Invariant: a member's list holds only their keys; the household list is built and
acted on only after the server checked that an admin asks."""

from __future__ import annotations

import time

import gradio as gr

from localchat.household import AccessDenied, Household
from localchat.store import ApiKeyInfo, NotFound, StoreError
from localchat.text import clean_text
from localchat.ui.members import member_of


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d", time.localtime(ts)) if ts else "never"


def describe(key: ApiKeyInfo) -> str:
    """A key as lists show it: its name and public prefix, never the key itself."""
    return f"{key.name} (lc-{key.prefix}-…, made {_when(key.created_at)}, last used {_when(key.last_used_at)})"


class ApiKeys:
    def __init__(self, household: Household):
        self.household = household

    def _rows(self, member) -> list[tuple[str, int]]:
        return [(describe(k), k.id) for k in self.household.store.api_keys(member.id)]

    def listing(self, request: gr.Request) -> gr.Dropdown:
        member = member_of(self.household, request)
        return gr.Dropdown(choices=[] if member.builtin else self._rows(member), value=None)

    def create(self, name: str, request: gr.Request) -> tuple:
        member = member_of(self.household, request)
        try:
            key = self.household.create_api_key(member, clean_text(name or ""))  # SQLite refuses lone surrogates
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
            self.household.store.revoke_api_key(member.id, int(key_id))  # own keys only, even for an admin
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


class HouseholdKeys:
    """Every member's keys in the household panel, for admins to review and revoke."""

    def __init__(self, household: Household):
        self.household = household

    def _admin(self, request: gr.Request):
        try:
            return self.household.require_admin(member_of(self.household, request))
        except AccessDenied as exc:
            raise gr.Error(str(exc)) from None

    def _choices(self, by) -> list[tuple[str, int]]:
        return [(f"{name}: {describe(key)}", key.id) for name, key in self.household.household_api_keys(by)]

    def listing(self, request: gr.Request) -> gr.Dropdown:
        return gr.Dropdown(choices=self._choices(self._admin(request)), value=None)

    def revoke(self, key_id: int | None, request: gr.Request) -> tuple:
        by = self._admin(request)
        if key_id is None:
            return "Pick a key to revoke", gr.skip()
        try:
            self.household.revoke_api_key(by, int(key_id))
        except (NotFound, ValueError) as exc:
            return f"⚠ {exc}", gr.Dropdown(choices=self._choices(by), value=None)
        return "✓ Revoked: that key no longer works.", gr.Dropdown(choices=self._choices(by), value=None)

    def build(self, result: gr.Markdown) -> gr.Dropdown:
        """Inside the household panel; returns the list, which the panel's refresh fills."""
        keys = gr.Dropdown([], label="Members' API keys", elem_id="lc-household-keys")
        revoke = gr.Button("Revoke this key", size="sm", variant="stop", elem_id="lc-household-key-revoke")
        revoke.click(
            self.revoke, [keys], [result, keys], queue=False, api_visibility="private", api_name="revoke_household_key"
        )
        return keys
