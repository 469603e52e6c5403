"""Export and import of a member's own conversations (Markdown or JSON files).

Invariants: every read and write is scoped to the member of the session cookie; an import is
all-or-nothing, read with a cap, and never passes through Gradio's shared upload folder.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from localchat.household import SESSION_COOKIE, Household
from localchat.store import Member, NotFound, StoreError
from localchat.transfer import MAX_IMPORT_BYTES, ImportProblem, parse_import, to_json, to_markdown
from localchat.web.pages import read_capped


def export_routes(household: Household) -> APIRouter:
    router = APIRouter()

    def member_of(request: Request) -> Member | None:
        return household.member_for_token(request.cookies.get(SESSION_COOKIE))

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
    body, too_large = await read_capped(request, MAX_IMPORT_BYTES)
    if too_large:
        raise ImportProblem(f"The file is larger than {MAX_IMPORT_BYTES // 2**20} MB")
    return body


def _slug(title: str) -> str:
    slug = "".join(ch if ch.isascii() and ch.isalnum() else "-" for ch in title.lower()).strip("-")
    return "-".join(filter(None, slug.split("-")))[:40] or "chat"
