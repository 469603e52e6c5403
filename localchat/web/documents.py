"""Adding a file to a document library from the page: one file per request, its bytes as the body.

Gradio's own upload route stays turned off (its cache is shared by every member and has no quota),
so the Documents panel posts each dropped or picked file here. Invariants: the member comes from the
session cookie and the library service checks their access; the bytes go to a 0600 file inside the
data dir that is deleted before the response, whatever happened (the service keeps its own copy);
no more is written than MAX_FILE_BYTES or what is left of the member's quota, whatever the request
declares (reading stops there).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path, PurePosixPath, PureWindowsPath

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from localchat.household import SESSION_COOKIE, Household
from localchat.library.types import LibraryError, LibraryService, QuotaExceeded
from localchat.store import Member, NotFound
from localchat.text import clean_text

MAX_FILE_BYTES = 256 << 20  # one file; a member's quota (checked again by the service) may be lower
MINE = "mine"  # the library parameter for the member's private library


def file_name(raw: str) -> str:
    """The name as the member's device gave it, without any folder part, one line, at most 200 chars."""
    name = PureWindowsPath(PurePosixPath(raw or "").name).name  # "C:\\x\\a.pdf" and "a/b.pdf" -> the last part
    return " ".join(clean_text(name).split())[:200].strip() or "document"


def private_library(service: LibraryService, member: Member) -> int:
    """The id of the member's private library (the service makes it on first use)."""
    return next(lib.id for lib in service.visible(member) if lib.owner_id == member.id)


def _error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": {"message": message}}, status)


def document_routes(household: Household, libraries: Callable[[], LibraryService | None], uploads: Path) -> APIRouter:
    router = APIRouter()

    @router.post("/documents/files")
    async def add_file(request: Request, library: str = MINE, name: str = "") -> JSONResponse:
        member = household.member_for_token(request.cookies.get(SESSION_COOKIE))
        if member is None:
            return _error("Sign in first.", 401)
        service = libraries()
        if service is None:
            return _error("Documents are not turned on on this server.", 404)
        name = file_name(name)
        try:
            library_id = private_library(service, member) if library == MINE else int(library)
        except (ValueError, StopIteration):
            return _error("There is no such library", 404)
        cap, too_big = MAX_FILE_BYTES, f"{name} is larger than {MAX_FILE_BYTES >> 20} MB"
        if library_id == private_library(service, member):
            used, limit = service.quota(member)
            try:
                declared = int(request.headers.get("content-length") or 0)
            except ValueError:
                declared = 0  # a false header is no promise: the stream is capped anyway
            if limit is not None and used + declared > limit:  # refused before a byte is written
                return _error(f"{name}: {_quota_line(used, limit)}", 413)
            if limit is not None and limit - used < cap:
                cap, too_big = limit - used, f"{name}: {_quota_line(used, limit)}"
        uploads.mkdir(parents=True, exist_ok=True)
        temporary = uploads / f"{secrets.token_hex(12)}.part"
        try:
            if not await _save(request, temporary, cap):
                return _error(too_big, 413)
            if temporary.stat().st_size == 0:
                return _error(f"{name} is empty", 400)
            document = await run_in_threadpool(service.add_file, member, library_id, name, temporary)
        except QuotaExceeded as exc:
            return _error(str(exc), 413)
        except NotFound:
            return _error("There is no such library", 404)
        except LibraryError as exc:
            return _error(str(exc), 400)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
        return JSONResponse({"document": {"id": document.id, "name": document.name, "status": document.status}})

    return router


def _quota_line(used: int, limit: int) -> str:
    return f"adding it would go past your limit for documents ({_size(used)} of {_size(limit)} used)"


def _size(n: float) -> str:
    """As the library service and the panel word sizes (1 MB = 1024 KB)."""
    for unit in ("bytes", "KB", "MB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "bytes" or n >= 10 else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


async def _save(request: Request, path: Path, cap: int) -> bool:
    """Stream the body into a new 0600 file; False (and a partial file) as soon as it passes `cap` bytes."""
    size = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
    with os.fdopen(fd, "wb") as out:
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                return False
            out.write(chunk)
    return True
