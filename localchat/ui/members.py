"""Who is asking: the Member behind a Gradio request, resolved from the session on every event."""

from __future__ import annotations

from typing import Any

import gradio as gr

from localchat.household import Household
from localchat.store import Member

SIGNED_OUT = "Your session has ended. Reload the page to sign in again."


def member_of(household: Household, request: Any) -> Member:
    """The member of this request, or a gr.Error the page shows (never another member)."""
    member = household.member_by_key(getattr(request, "username", None))
    if member is None:
        raise gr.Error(SIGNED_OUT)
    return member
