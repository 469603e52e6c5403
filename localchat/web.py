"""The web edge of household mode: sign-in pages, export/import routes, and the Guard middleware.

Owns: the session cookie, the Host/Origin policy, and tying each Gradio session hash to the member
that opened it. Invariants: without a valid session nothing but the sign-in page and /health
answers; a foreign Origin gets no CORS grant and cannot change anything; a Host that is not this
machine (DNS rebinding) is refused; Gradio uploads are off, so no file can carry chat content
between members.
"""

from __future__ import annotations

import html
import ipaddress
import json
import socket
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import cookie_parser

from localchat.household import SESSION_COOKIE, AccessDenied, Household, LoginRefused, RateLimited
from localchat.store import Member, NotFound, StoreError
from localchat.transfer import MAX_IMPORT_BYTES, ImportProblem, parse_import, to_json, to_markdown

MAX_EVENT_BYTES = 8 * 2**20  # one Gradio event body (a chat message and its history)
MAX_FORM_BYTES = 16 * 1024  # the sign-in and set-up forms
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
    """Pure ASGI middleware in front of everything (Gradio included)."""

    def __init__(self, app: Callable, household: Household, allowed_hosts: frozenset[str] = frozenset()):
        self.app = app
        self.household = household
        self.allowed_hosts = allowed_hosts
        self._session_owner: OrderedDict[str, int] = OrderedDict()  # Gradio session hash -> member id

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host")
        if not host_allowed(host, self.allowed_hosts):
            await _respond(send, 421, "This server does not answer to that host name.")
            return
        origin = headers.get("origin")
        scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
        foreign = origin is not None and origin != f"{scheme}://{host}"
        method = scope.get("method", "GET")
        if foreign and method not in SAFE_METHODS:
            await _respond(send, 403, "Requests from other sites are refused.")
            return
        path = scope.get("path", "")
        if path.startswith("/v1/"):  # the OpenAI API checks its own bearer keys
            await self.app(scope, receive, _strip_cors(send) if foreign else send)
            return
        member = self.household.member_for_token(_cookie(headers.get("cookie", "")))
        if member is None and path not in PUBLIC_PATHS:
            if method == "GET" and "text/html" in headers.get("accept", ""):
                await _redirect(send, "/login" + (f"?next={quote(path)}" if path not in ("", "/") else ""))
            else:
                await _respond(send, 401, "Sign in first.", json_body=True)
            return
        if _blocked(path):
            await _respond(send, 403, "Uploads, recordings and fetching other sites are turned off.")
            return
        if member is not None:
            receive = await self._bind_session_hash(scope, receive, send, member)
            if receive is None:
                return
        await self.app(scope, receive, _strip_cors(send) if foreign else send)

    async def _bind_session_hash(self, scope: dict, receive: Callable, send: Callable, member: Member):
        """A Gradio session hash (a tab's server-side state and event stream) belongs to the member
        who first used it; any request naming it for another member is refused. Hashes are looked
        for everywhere Gradio reads them: every query value, path segments and JSON bodies."""
        path = scope.get("path", "")
        found = [
            v for k, vs in parse_qs(scope.get("query_string", b"").decode()).items() if k == "session_hash" for v in vs
        ]
        parts = path.split("/")
        for marker in ("heartbeat", "stream"):
            if marker in parts and parts.index(marker) + 1 < len(parts):
                found.append(parts[parts.index(marker) + 1])
        body = b""
        if scope.get("method") == "POST" and ("/gradio_api/" in path or path.startswith("/api/")):
            more = True
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > MAX_EVENT_BYTES:
                    await _respond(send, 413, "Too large.")
                    return None
            try:
                data = json.loads(body or b"{}")
            except ValueError:
                data = None
            if isinstance(data, dict) and data.get("session_hash") is not None:
                found.append(str(data["session_hash"]))
        for session_hash in found:
            owner = self._session_owner.get(session_hash)
            if owner is not None and owner != member.id:
                await _respond(send, 403, "That session belongs to someone else.")
                return None
        for session_hash in found:
            self._session_owner[session_hash] = member.id
            self._session_owner.move_to_end(session_hash)
        while len(self._session_owner) > 50_000:
            self._session_owner.popitem(last=False)
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


def _blocked(path: str) -> bool:
    """Gradio routes that would store files (shared by every member) or fetch other hosts."""
    lower = path.lower()
    return (
        lower.endswith("/upload")
        or "/process_recording" in lower
        or "file=http" in lower
        or "file=//" in lower
        or "/proxy=" in lower
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


async def _respond(send: Callable, status: int, text: str, json_body: bool = False) -> None:
    body = json.dumps({"error": {"message": text}}).encode() if json_body else text.encode()
    kind = b"application/json" if json_body else b"text/plain; charset=utf-8"
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", kind)]})
    await send({"type": "http.response.body", "body": body})


async def _redirect(send: Callable, location: str) -> None:
    await send({"type": "http.response.start", "status": 303, "headers": [(b"location", location.encode())]})
    await send({"type": "http.response.body", "body": b""})


# -- pages ------------------------------------------------------------------------------------
PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title} · localchat</title>
<link rel="icon" href="/favicon.ico"><style>
:root {{ color-scheme: light dark; font-family: ui-sans-serif, system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }}
body {{ margin: 0; min-height: 100vh; display: grid; place-items: center; background: Canvas; }}
main {{ box-sizing: border-box; width: min(360px, calc(100vw - 32px)); padding: 24px; border-radius: 16px;
  box-shadow: 0 2px 16px rgb(0 0 0 / 15%); }}
h1 {{ font-size: 1.4rem; margin: 0 0 4px; }} p {{ margin: 0 0 16px; opacity: .8; }}
label {{ display: block; margin: 12px 0 4px; font-weight: 600; }}
input {{ width: 100%; box-sizing: border-box; font-size: 16px; padding: 10px; border-radius: 8px; border: 1px solid #8888; }}
button {{ margin-top: 20px; width: 100%; font-size: 16px; padding: 12px; border: 0; border-radius: 8px;
  background: #4f46e5; color: white; font-weight: 600; }}
.error {{ color: #d32f2f; opacity: 1; font-weight: 600; }}
</style></head><body><main><h1>{title}</h1><p>{intro}</p>{error}
<form method="{method}" action="{action}">{fields}<button type="submit">{button}</button></form></main></body></html>"""


def _page(
    title: str, intro: str, fields: str, button: str, error: str = "", status: int = 200, back: bool = False
) -> HTMLResponse:
    """A small page with one form; `back`: the button just returns to the chat."""
    err = f'<p class="error" role="alert" id="lc-login-error">{html.escape(error)}</p>' if error else ""
    method, action = ("get", "/") if back else ("post", "")
    body = PAGE.format(title=title, intro=intro, fields=fields, button=button, error=err, method=method, action=action)
    return HTMLResponse(body, status_code=status, headers={"Cache-Control": "no-store"})


LOGIN_FIELDS = """<input type="hidden" name="next" value="{next}">
<label for="name">Name</label><input id="name" name="name" autocomplete="username" autofocus required value="{name}">
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>"""
SETUP_FIELDS = """<label for="name">Your name</label><input id="name" name="name" autocomplete="username" required>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="new-password" minlength="8" required>"""


def _safe_next(target: str | None) -> str:
    ok = target and target.startswith("/") and not target.startswith(("//", "/\\")) and "\\" not in target
    return target if ok else "/"


def _set_session(response: Response, request: Request, token: str, lifetime: float) -> Response:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(lifetime),
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


async def _read_capped(request: Request, limit: int) -> tuple[bytes, bool]:
    """The body, at most `limit` bytes of it, read as it streams (never buffered whole), and
    whether there was more."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return b"".join(chunks), True
        chunks.append(chunk)
    return b"".join(chunks), False


async def _form(request: Request) -> dict[str, str]:
    """A small urlencoded form, read with a cap (the sign-in page is public)."""
    body, _ = await _read_capped(request, MAX_FORM_BYTES)
    text = body.decode("utf-8", "replace")
    return {k: v[0] for k, v in parse_qs(text, keep_blank_values=True).items()}


def household_routes(household: Household) -> APIRouter:
    router = APIRouter()

    def member_of(request: Request) -> Member | None:
        return household.member_for_token(request.cookies.get(SESSION_COOKIE))

    def login_page(name: str = "", next_: str = "/", error: str = "", status: int = 200) -> HTMLResponse:
        fields = LOGIN_FIELDS.format(next=html.escape(next_), name=html.escape(name))
        return _page("Sign in", "localchat for this household", fields, "Sign in", error, status)

    @router.get("/login")
    def login_form(request: Request) -> Response:
        if household.single_user:
            return RedirectResponse("/", status_code=303)
        return login_page(next_=_safe_next(request.query_params.get("next")))

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = await _form(request)
        name, next_ = form.get("name", ""), _safe_next(form.get("next"))
        try:
            session = await run_in_threadpool(household.login, name, form.get("password", ""), client_address(request))
        except RateLimited as exc:
            page = login_page(name, next_, str(exc), 429)
            page.headers["Retry-After"] = str(exc.retry_after)
            return page
        except LoginRefused as exc:
            return login_page(name, next_, str(exc), 401)
        return _set_session(
            RedirectResponse(next_, status_code=303), request, session.token, household.session_lifetime
        )

    @router.post("/logout")
    def logout(request: Request) -> Response:
        household.logout(request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    def setup_allowed(request: Request) -> bool:
        host = host_name(request.headers.get("host", ""))
        return (
            household.store.count_accounts() == 0
            and is_loopback(client_address(request))
            and (host == "localhost" or is_loopback(host))
        )

    @router.get("/setup")
    def setup_form(request: Request) -> Response:
        if not setup_allowed(request):
            return PlainTextResponse("The first-run page is only for this computer, before any account exists.", 404)
        intro = "Create the first admin of this household. Your chats so far become this account's."
        return _page("Set up your household", intro, SETUP_FIELDS, "Create admin account")

    @router.post("/setup")
    async def setup(request: Request) -> Response:
        if not setup_allowed(request):
            return PlainTextResponse("The first-run page is only for this computer, before any account exists.", 404)
        form = await _form(request)
        try:
            member = await run_in_threadpool(household.add_first_admin, form.get("name", ""), form.get("password", ""))
        except (ValueError, StoreError, AccessDenied) as exc:
            return _page("Set up your household", "", SETUP_FIELDS, "Create admin account", str(exc), 400)
        session = household.start_session(member)
        return _set_session(RedirectResponse("/", status_code=303), request, session.token, household.session_lifetime)

    @router.get("/export/{name}")
    def export(name: str, request: Request) -> Response:
        member = member_of(request)
        if member is None:
            return JSONResponse({"error": {"message": "Sign in first."}}, 401)
        stem, _, fmt = name.rpartition(".")
        if fmt not in ("md", "json") or not stem:
            return PlainTextResponse("Export as .md or .json", 404)
        store = household.store
        try:
            if stem == "all":
                chats = [store.conversation(member.id, c.id) for c in store.conversations(member.id)]
            else:
                chats = [store.conversation(member.id, stem)]
        except NotFound as exc:
            return PlainTextResponse(str(exc), 404)
        body = to_json(chats) if fmt == "json" else to_markdown(chats)
        filename = "localchat-" + ("all" if stem == "all" else _slug(chats[0].title)) + "." + fmt  # ASCII
        kind = "application/json" if fmt == "json" else "text/markdown; charset=utf-8"
        return Response(
            body,
            media_type=kind,
            headers={"Content-Disposition": f'attachment; filename="{filename}"', "Cache-Control": "no-store"},
        )

    @router.post("/import")
    async def import_(request: Request) -> Response:
        member = member_of(request)
        if member is None:
            return JSONResponse({"error": {"message": "Sign in first."}}, 401)
        try:
            chats = parse_import(await _upload(request))
            ids = [household.store.import_conversation(member.id, c.title, c.messages, c.created_at) for c in chats]
        except (ImportProblem, StoreError) as exc:
            return JSONResponse({"error": {"message": str(exc)}}, 400)
        return JSONResponse({"imported": len(ids), "ids": ids})

    return router


async def _upload(request: Request) -> bytes:
    """The raw JSON body, with a cap. Multipart is not accepted: its temporary files would land
    outside the data dir; the page reads the file and posts its text."""
    if "multipart/form-data" in request.headers.get("content-type", ""):
        raise ImportProblem("Send the JSON file itself as the request body (Content-Type: application/json)")
    body, too_large = await _read_capped(request, MAX_IMPORT_BYTES)
    if too_large:
        raise ImportProblem(f"The file is larger than {MAX_IMPORT_BYTES // 2**20} MB")
    return body


def _slug(title: str) -> str:
    slug = "".join(ch if ch.isascii() and ch.isalnum() else "-" for ch in title.lower()).strip("-")
    return "-".join(filter(None, slug.split("-")))[:40] or "chat"


def auth_dependency(household: Household) -> Callable[[Request], str | None]:
    """What Gradio calls for each request: the member's id as its 'username', or None. Handlers
    turn it back into a Member with Household.member_by_key."""

    def resolve(request: Request) -> str | None:
        member = household.member_for_token(request.cookies.get(SESSION_COOKIE))
        return None if member is None else str(member.id)

    return resolve


def install(api: FastAPI, household: Household, allowed_hosts: frozenset[str] = frozenset()) -> None:
    api.include_router(household_routes(household))
    api.add_middleware(Guard, household=household, allowed_hosts=allowed_hosts)


__all__ = ["Guard", "auth_dependency", "host_allowed", "install"]
