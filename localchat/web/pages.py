"""The household's own pages: sign in, sign out and the first-run set-up.

Invariants: the forms are read with a small cap (the sign-in page is public); the first-run page
answers only on this computer and only before any account exists; a `next` target never leaves
this site.
"""

from __future__ import annotations

import html
from dataclasses import replace
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from localchat.household import (
    DEVICE_COOKIE,
    DEVICE_LIFETIME,
    SESSION_COOKIE,
    AccessDenied,
    Household,
    LoginRefused,
    RateLimited,
    Session,
)
from localchat.store import StoreError
from localchat.web.guard import client_address, host_name, is_loopback

MAX_FORM_BYTES = 16 * 1024  # the sign-in and set-up forms


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
.error {{ color: #c62828; opacity: 1; font-weight: 600; }}  /* 4.5:1 or more on either scheme */
:focus-visible {{ outline: 3px solid #4f46e5; outline-offset: 2px; }}
@media (prefers-color-scheme: dark) {{ .error {{ color: #ff8a80; }} :focus-visible {{ outline-color: #a5b4fc; }} }}
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


def _set_session(response: Response, request: Request, session: Session, lifetime: float) -> Response:
    """The session cookie, and the long-lived device cookie that outlives signing out (see household)."""
    for name, value, age in (
        (SESSION_COOKIE, session.token, lifetime),
        (DEVICE_COOKIE, session.device, DEVICE_LIFETIME),
    ):
        if value:
            secure = request.url.scheme == "https"
            response.set_cookie(name, value, max_age=int(age), httponly=True, samesite="lax", secure=secure, path="/")
    return response


async def read_capped(request: Request, limit: int) -> tuple[bytes, bool]:
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
    body, _ = await read_capped(request, MAX_FORM_BYTES)
    text = body.decode("utf-8", "replace")
    return {k: v[0] for k, v in parse_qs(text, keep_blank_values=True).items()}


def page_routes(household: Household) -> APIRouter:
    router = APIRouter()

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
            session = await run_in_threadpool(
                household.login,
                name,
                form.get("password", ""),
                client_address(request),
                request.cookies.get(DEVICE_COOKIE),
            )
        except RateLimited as exc:
            page = login_page(name, next_, str(exc), 429)
            page.headers["Retry-After"] = str(exc.retry_after)
            return page
        except LoginRefused as exc:
            return login_page(name, next_, str(exc), 401)
        return _set_session(RedirectResponse(next_, status_code=303), request, session, household.session_lifetime)

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
        device = household.remember_device(member, request.cookies.get(DEVICE_COOKIE))
        return _set_session(
            RedirectResponse("/", status_code=303), request, replace(session, device=device), household.session_lifetime
        )

    return router
