"""The Guard: pure ASGI middleware in front of everything (Gradio included).

Owns: the Host/Origin policy, the session check, the Gradio routes that are turned off, security
headers on every response, and tying each Gradio session hash and event id to its member.
Invariants: without a valid session nothing but the sign-in page and /health answers; a foreign
Origin gets no CORS grant and cannot change anything; a Host that is not this machine (DNS
rebinding) is refused; uploads, recordings, URL fetches and Gradio's monitoring are off.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from starlette.requests import cookie_parser

from localchat.household import SESSION_COOKIE, Household
from localchat.store import Member
from localchat.web.binding import Owners, gradio_post, issued_event_id, issues_event_id, named_ids
from localchat.web.headers import with_security_headers

MAX_EVENT_BYTES = 8 * 2**20  # one Gradio event body (a chat message and its history)
PUBLIC_PATHS = {"/login", "/setup", "/health", "/manifest.json", "/favicon.ico"}
SAFE_METHODS = {"GET", "HEAD"}


def client_address(request_or_scope: Any) -> str:
    scope = request_or_scope if isinstance(request_or_scope, dict) else request_or_scope.scope
    client = scope.get("client")
    return client[0] if client else "unknown"


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address in ("localhost", "testclient")


def host_name(host_header: str) -> str:
    """The name part of a Host header: no port, no IPv6 brackets, lower case."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def host_allowed(host_header: str | None, extra: frozenset[str] = frozenset()) -> bool:
    """IP literals, localhost, this machine's own name (and .local), and configured names. A DNS
    rebinding attack needs a name of the attacker's, which is none of these."""
    if not host_header:
        return False
    host = host_name(host_header)
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    own = socket.gethostname().lower()
    return host == "localhost" or host.endswith(".localhost") or host in {own, f"{own}.local"} or host in extra


class Guard:
    def __init__(self, app: Callable, household: Household, allowed_hosts: frozenset[str] = frozenset()):
        self.app = app
        self.household = household
        self.allowed_hosts = allowed_hosts
        self.session_owners = Owners()  # Gradio session hash -> member id
        self.event_owners = Owners()  # Gradio event id -> member id

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "http":
            send = with_security_headers(send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host")
        if not host_allowed(host, self.allowed_hosts):
            await respond(send, 421, "This server does not answer to that host name.")
            return
        origin = headers.get("origin")
        scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
        foreign = origin is not None and origin != f"{scheme}://{host}"
        method = scope.get("method", "GET")
        if foreign and method not in SAFE_METHODS:
            await respond(send, 403, "Requests from other sites are refused.")
            return
        if foreign:
            send = _strip_cors(send)
        path = scope.get("path", "")
        if path.startswith("/v1/"):  # the OpenAI API checks its own bearer keys
            await self.app(scope, receive, send)
            return
        member = self.household.member_for_token(_cookie(headers.get("cookie", "")))
        if member is None and path not in PUBLIC_PATHS:
            if method == "GET" and "text/html" in headers.get("accept", ""):
                await _redirect(send, "/login" + (f"?next={quote(path)}" if path not in ("", "/") else ""))
            else:
                await respond(send, 401, "Sign in first.", json_body=True)
            return
        if _blocked(path):
            await respond(send, 403, "Uploads, recordings, monitoring and fetching other sites are turned off.")
            return
        if member is not None:
            receive = await self._bind(scope, receive, send, member)
            if receive is None:
                return
            if issues_event_id(scope):
                send = self._record_event_ids(send, member)
        await self.app(scope, receive, send)

    async def _bind(self, scope: dict, receive: Callable, send: Callable, member: Member) -> Callable | None:
        """Refuse a request naming another member's session hash or event id; bind the new ones.
        Returns the `receive` to pass on (the body is read here, then replayed), or None if answered."""
        body = b""
        if gradio_post(scope):
            more = True
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > MAX_EVENT_BYTES:
                    await respond(send, 413, "Too large.")
                    return None
        hashes, events = named_ids(scope, body)
        if self.session_owners.foreign(hashes, member.id) or self.event_owners.foreign(events, member.id):
            await respond(send, 403, "That session belongs to someone else.")
            return None
        self.session_owners.bind(hashes, member.id)
        self.event_owners.bind(events, member.id)
        if not body:
            return receive
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay

    def _record_event_ids(self, send: Callable, member: Member) -> Callable:
        """Bind the event id in a queue/call response to its member before the page learns it. A
        call without a session hash uses its event id as one, so it is bound as both."""
        held: list[dict] = []

        async def wrapped(message: dict) -> None:
            if message["type"] == "http.response.start":
                held.append(message)
                return
            if message["type"] == "http.response.body" and held:
                held.append(message)
                if message.get("more_body", False):
                    return
                body = b"".join(m.get("body", b"") for m in held[1:])
                event_id = issued_event_id(body)
                if event_id is not None:
                    self.event_owners.bind([event_id], member.id)
                    self.session_owners.bind([event_id], member.id)
                for m in held:
                    await send(m)
                held.clear()
                return
            await send(message)

        return wrapped


def _blocked(path: str) -> bool:
    """Gradio routes that would store files (shared by every member), fetch other hosts, or show
    household-wide activity (monitoring)."""
    lower = path.lower()
    return (
        lower.endswith("/upload")
        or "/process_recording" in lower
        or "file=http" in lower
        or "file=//" in lower
        or "/proxy=" in lower
        or "monitoring" in lower.split("/")[:3]
    )


def _cookie(header: str) -> str | None:
    return cookie_parser(header).get(SESSION_COOKIE)  # the parser Starlette (and so Gradio) uses


def _strip_cors(send: Callable) -> Callable:
    async def wrapped(message: dict) -> None:
        if message["type"] == "http.response.start":
            message = {
                **message,
                "headers": [(k, v) for k, v in message["headers"] if not k.lower().startswith(b"access-control-")],
            }
        await send(message)

    return wrapped


async def respond(send: Callable, status: int, text: str, json_body: bool = False) -> None:
    body = json.dumps({"error": {"message": text}}).encode() if json_body else text.encode()
    kind = b"application/json" if json_body else b"text/plain; charset=utf-8"
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", kind)]})
    await send({"type": "http.response.body", "body": body})


async def _redirect(send: Callable, location: str) -> None:
    await send({"type": "http.response.start", "status": 303, "headers": [(b"location", location.encode())]})
    await send({"type": "http.response.body", "body": b""})
