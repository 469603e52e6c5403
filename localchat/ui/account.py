"""The member's own account in the Settings sidebar: change the password (the current one first),
and sign out every other device.

Invariant: a handler acts only on the member of the request's session, and the browser that asked
stays signed in (its session token is read from the request's cookie, never from the page).
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from localchat.household import DEVICE_COOKIE, MIN_PASSWORD, SESSION_COOKIE, AccessDenied, Household
from localchat.store import StoreError
from localchat.ui.members import member_of


def _client(request: Any) -> str:
    client = getattr(request, "client", None)
    return getattr(client, "host", None) or "unknown"


def _token(request: Any, cookie: str = SESSION_COOKIE) -> str | None:
    cookies = getattr(request, "cookies", None) or {}
    return cookies.get(cookie)


class AccountPanel:
    def __init__(self, household: Household):
        self.household = household

    def summary(self, request: gr.Request) -> str:
        """Who is signed in here, and on how many other devices."""
        member = member_of(self.household, request)
        if member.builtin:
            return ""
        others = self.household.store.count_sessions(member.id) - (1 if _token(request) else 0)
        where = f"also signed in on {others} other device{'s' * (others != 1)}" if others > 0 else "no other devices"
        return f"Signed in as **{member.name}** ({member.role}), {where}."

    def change_password(self, old: str, new: str, again: str, request: gr.Request) -> tuple:
        """Returns (result, old box, new box, again box, summary); the boxes empty only on success."""
        member = member_of(self.household, request)
        keep = gr.skip(), gr.skip(), gr.skip(), gr.skip()
        if member.builtin:
            return "⚠ Without household accounts there is no password to change.", *keep
        if new != again:
            return "⚠ The two new passwords differ.", *keep
        try:
            device = _token(request, DEVICE_COOKIE)
            self.household.change_password(member, old, new, _client(request), keep=_token(request), device=device)
        except (ValueError, AccessDenied, StoreError) as exc:
            return f"⚠ {exc}", *keep
        told = "✓ Password changed. Your other devices are signed out; this one stays signed in."
        return told, "", "", "", self.summary(request)

    def sign_out_others(self, request: gr.Request) -> tuple:
        member = member_of(self.household, request)
        if member.builtin:
            return "", gr.skip()
        try:
            ended = self.household.end_other_sessions(member, _token(request))
        except StoreError as exc:
            return f"⚠ {exc}", gr.skip()
        return f"✓ Signed out {ended} other session{'s' * (ended != 1)}.", self.summary(request)

    def build(self) -> dict:
        """Lay out the panel inside an Accordion the layout makes (hidden without accounts, like
        the API keys); returns the load-event arguments that fill the summary line."""
        summary = gr.Markdown("", elem_id="lc-account-summary")
        old = gr.Textbox(label="Current password", type="password", max_lines=1, elem_id="lc-password-old")
        new = gr.Textbox(
            label=f"New password (at least {MIN_PASSWORD} characters)",
            type="password",
            max_lines=1,
            elem_id="lc-password-new",
        )
        again = gr.Textbox(label="New password again", type="password", max_lines=1, elem_id="lc-password-again")
        change = gr.Button("Change password", size="sm", elem_id="lc-password-change")
        others = gr.Button("Sign out other devices", size="sm", elem_id="lc-sign-out-others")
        result = gr.Markdown("", elem_id="lc-account-result")
        q = {"queue": False, "api_visibility": "private"}
        outputs = [result, old, new, again, summary]
        change.click(self.change_password, [old, new, again], outputs, api_name="change_password", **q)
        others.click(self.sign_out_others, None, [result, summary], api_name="sign_out_others", **q)
        return {"fn": self.summary, "inputs": None, "outputs": [summary], "api_name": "account_summary", **q}
