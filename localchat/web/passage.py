"""GET /library/passage/<chunk_id>: one cited passage, opened from a reply's numbered sources.

Invariants: the member is the session cookie's; the library service answers only with passages that
member may use, so another member's chunk id is a 404 exactly like one that does not exist; every
text is HTML-escaped; nothing is cached (a passage can be private).
"""

from __future__ import annotations

import html

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from localchat.household import SESSION_COOKIE, Household
from localchat.library.types import LibraryError, LibraryService
from localchat.store import NotFound

PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title} · localchat</title>
<link rel="icon" href="/favicon.ico"><style>
:root {{ color-scheme: light dark; font-family: ui-sans-serif, system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }}
body {{ margin: 0 auto; max-width: 46rem; padding: 16px; line-height: 1.55; }}
h1 {{ font-size: 1.25rem; margin: 8px 0 2px; overflow-wrap: anywhere; }} .where {{ margin: 0 0 16px; opacity: .8; }}
blockquote {{ margin: 0; padding: 12px 16px; border-left: 4px solid #4f46e5; border-radius: 8px;
  background: rgb(127 127 127 / 10%); white-space: pre-wrap; overflow-wrap: anywhere; }}
</style></head><body><main><h1 id="lc-passage-document">{document}</h1><p class="where" id="lc-passage-where">{where}</p>
<blockquote id="lc-passage-text">{text}</blockquote></main></body></html>"""


def passage_routes(household: Household, libraries: LibraryService | None) -> APIRouter:
    router = APIRouter()

    @router.get("/library/passage/{chunk_id}")
    async def passage(chunk_id: str, request: Request) -> Response:
        member = household.member_for_token(request.cookies.get(SESSION_COOKIE))
        if member is None:
            return JSONResponse({"error": {"message": "Sign in first."}}, 401)
        gone = HTMLResponse("That passage does not exist (its file may have been removed).", 404)
        if libraries is None or not chunk_id.isdigit() or len(chunk_id) > 18:
            return gone
        try:
            found = await run_in_threadpool(libraries.passage, member, int(chunk_id))
        except (NotFound, LibraryError):
            return gone
        body = PAGE.format(
            title=html.escape(found.document),
            document=html.escape(found.document),
            where=html.escape(found.where or "Passage"),
            text=html.escape(found.text),
        )
        return HTMLResponse(body, headers={"Cache-Control": "no-store"})

    return router
