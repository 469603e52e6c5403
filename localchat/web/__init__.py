"""The web edge of household mode: the Guard middleware, the sign-in pages, export/import routes and
cited passages.

Owns: the session cookie, the Host/Origin policy, security headers, and tying each Gradio session
hash and event id to the member that opened it. `install` puts all of it in front of an app.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI, Request

from localchat.household import SESSION_COOKIE, Household
from localchat.library.types import LibraryService
from localchat.web.export import export_routes
from localchat.web.guard import Guard, client_address, host_allowed, host_name, is_loopback
from localchat.web.headers import CONTENT_SECURITY_POLICY
from localchat.web.pages import page_routes
from localchat.web.passage import passage_routes


def auth_dependency(household: Household) -> Callable[[Request], str | None]:
    """What Gradio calls for each request: the member's id as its 'username', or None. Handlers
    turn it back into a Member with Household.member_by_key."""

    def resolve(request: Request) -> str | None:
        member = household.member_for_token(request.cookies.get(SESSION_COOKIE))
        return None if member is None else str(member.id)

    return resolve


def install(
    api: FastAPI,
    household: Household,
    allowed_hosts: frozenset[str] = frozenset(),
    libraries: LibraryService | None = None,
) -> None:
    api.include_router(page_routes(household))
    api.include_router(export_routes(household))
    api.include_router(passage_routes(household, libraries))
    api.add_middleware(Guard, household=household, allowed_hosts=allowed_hosts)


__all__ = [
    "CONTENT_SECURITY_POLICY",
    "Guard",
    "auth_dependency",
    "client_address",
    "host_allowed",
    "host_name",
    "install",
    "is_loopback",
]
