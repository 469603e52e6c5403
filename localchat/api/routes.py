"""/v1 routes on the same server as the UI: models, chat completions, text completions, and
model loading for admin keys.

Invariants: every call is made by a Member resolved from its bearer key (any caller is the
built-in member only in single-user mode) and goes through the core under that member's policy
(ChatService.complete): a locked preset replaces the client's system prompt and sampling, and a key
reaches only the models its member may use, checked again when the job starts; a response's
`model` is the model that wrote it; a prompt past the context window is a 400, never trimmed; a client that goes away cancels its own
generation (the cancel event is set when the response stream is torn down) and nobody else's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from localchat.api import embeddings
from localchat.api.body import json_body
from localchat.api.schema import (
    ApiError,
    ApiRequest,
    chat_chunk,
    chat_completion,
    finish_reason,
    new_id,
    parse,
    sources_body,
    text_completion,
)
from localchat.backend import BackendError, ModelNotAllowed, NoModelLoaded, PromptTooLong, ServerBusy
from localchat.core import ChatService, PolicyRefused
from localchat.household import Household
from localchat.library.types import Passage
from localchat.store import Member
from localchat.types import Chunk, InvalidValue, LoadedInfo, LoadOptions, Usage

log = logging.getLogger(__name__)
_END = object()
# Real text averages about 4 characters a token; past 16 a prompt cannot fit, and reading it whole
# would hold every member's replies while the engine's tokenizer works through it.
MAX_CHARS_PER_TOKEN = 16
KEY_RECHECK_SECONDS = 2.0  # a reply streaming on a key stops this soon after the key is revoked
LOAD_FIELDS = {"model", "quantization", "device", "dtype", "context_length", "quant_type_4bit", "compute_dtype",
               "double_quant"}  # fmt: skip


def _error_status(exc: BackendError) -> ApiError:
    if isinstance(exc, PromptTooLong):
        return ApiError(400, str(exc), code="context_length_exceeded", param="messages")
    if isinstance(exc, ServerBusy):
        return ApiError(503, str(exc), kind="server_error", code="server_busy")
    if isinstance(exc, ModelNotAllowed):
        return ApiError(403, str(exc), code="model_not_allowed", param="model")
    if isinstance(exc, PolicyRefused):
        return ApiError(403, str(exc), code="preset_locked")
    if isinstance(exc, NoModelLoaded):
        return ApiError(503, str(exc), kind="server_error", code="model_not_loaded")
    return ApiError(500, str(exc), kind="server_error")


async def _json_body(request: Request) -> Any:
    return await json_body(request)  # bounded: size, nesting, numbers (api/body.py)


async def _cancel_on_disconnect(request: Request, cancel: threading.Event) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            cancel.set()
            return


def _revoked() -> ApiError:
    return ApiError(401, "This API key was revoked while the reply was being written", code="invalid_api_key")


def _bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth[:7].lower() == "bearer " else None


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


class OpenAIRoutes:
    def __init__(self, service: ChatService, household: Household):
        self.service = service
        self.household = household

    # -- who and which model ------------------------------------------------------------------
    def caller(self, request: Request) -> Member:
        member = self.household.member_for_api_key(_bearer(request))
        if member is None:
            raise ApiError(
                401,
                "Invalid or missing API key. Create one in localchat: Settings, API keys.",
                code="invalid_api_key",
            )
        return member

    def model_for(self, member: Member, requested: str | None) -> LoadedInfo:
        info = self.service.backend.loaded()
        if info is None:
            raise ApiError(503, "No model is loaded yet", kind="server_error", code="model_not_loaded")
        if requested and requested not in (info.options.model, info.name):
            # Only a model the member may use is named: its id can be a path on the server.
            loaded = (
                f"the loaded model is {info.options.model!r}"
                if member.may_use(info.options.model)
                else "no model of yours is loaded"
            )
            raise ApiError(
                404,
                f"The model {requested!r} is not loaded; {loaded}. "
                "An admin can load another one (POST /v1/models/load).",
                param="model",
                code="model_not_found",
            )
        return info  # whether the member may use it is the core's policy (ChatService.complete)

    # -- running a request --------------------------------------------------------------------
    def documents(self, member: Member, req: ApiRequest) -> tuple[str, tuple[Passage, ...]]:
        """The passage block and sources for the `libraries` extension; a failed search answers
        without documents (an empty `sources`), as the chat page does."""
        if req.libraries is None:
            return "", ()
        try:
            return self.service.search_documents(member, req.messages, req.params, req.libraries)
        except Exception:  # noqa: BLE001 - the log has it; the reply goes on
            log.exception("document search failed")
            return "", ()

    def start(  # noqa: PLR0913
        self, req: ApiRequest, info: LoadedInfo, cancel: threading.Event, member: Member, documents: str = ""
    ) -> Iterator[Chunk]:
        window = info.context_length  # 0: unknown (a remote engine that does not say)
        if req.max_tokens_given and window and req.params.max_new_tokens >= window:
            raise ApiError(
                400,
                f"max_tokens ({req.params.max_new_tokens}) does not fit this model's context window of "
                f"{info.context_length} tokens",
                param="max_tokens",
                code="context_length_exceeded",
            )
        chars = len(req.prompt or "") + sum(len(m.content) for m in req.messages)
        if window and chars > window * MAX_CHARS_PER_TOKEN:  # refused before any tokenizer runs on it
            raise ApiError(
                400,
                f"The prompt has {chars:,} characters, far more than this model's context window of {window:,} tokens",
                param="messages" if req.messages else "prompt",
                code="context_length_exceeded",
            )
        return self.service.complete(
            member, req.messages, req.params, cancel, trim=False, prompt=req.prompt, documents=documents
        )

    @staticmethod
    async def pull(stream: Iterator[Chunk]) -> Any:
        """The next chunk that matters (queue positions are for people), or _END."""
        while True:
            try:
                chunk = await run_in_threadpool(next, stream, _END)
            except BackendError as exc:
                raise _error_status(exc) from None
            except Exception as exc:  # out of memory, a broken engine answer...: still an OpenAI error
                log.exception("generation failed")
                raise ApiError(500, f"Generation failed: {exc}", kind="server_error") from None
            if chunk is _END or chunk.text or chunk.usage is not None or chunk.error is not None:
                return chunk

    async def _while_key_valid(self, request: Request, cancel: threading.Event, revoked: threading.Event) -> None:
        """Like the page's session check: a reply stops when its key is revoked (a password reset, an
        admin's revoke, the member removed), not only when it was checked at the start."""
        key = _bearer(request)
        while not cancel.is_set():
            await asyncio.sleep(KEY_RECHECK_SECONDS)
            if not cancel.is_set() and await run_in_threadpool(self.household.member_for_api_key, key) is None:
                revoked.set()
                cancel.set()

    async def respond(self, request: Request, chat: bool) -> Any:
        self.service.expect()  # before the checks: requests sent together are read together
        member = await run_in_threadpool(self.caller, request)  # a database read and write
        body = await _json_body(request)
        req = parse(body, chat)
        info = self.model_for(member, req.model)
        block, sources = await run_in_threadpool(self.documents, member, req)  # embeds the query: not on the loop
        extra = {} if req.libraries is None else {"sources": sources_body(sources)}
        cancel = threading.Event()
        try:  # a backend may refuse when called, not only while streaming
            stream = self.start(req, info, cancel, member, block)
        except BackendError as exc:
            raise _error_status(exc) from None
        # Until a streamed response takes over (it watches for the client itself), a client that
        # leaves while queued, during the prompt, or before a whole reply is ready, cancels it.
        watcher = asyncio.create_task(_cancel_on_disconnect(request, cancel))
        revoked = threading.Event()
        key_watch = asyncio.create_task(self._while_key_valid(request, cancel, revoked))
        try:
            first = await self.pull(stream)  # errors before the first token are a proper HTTP status
        except BaseException:
            watcher.cancel()
            key_watch.cancel()
            cancel.set()
            raise
        model, rid = info.options.model, new_id("chatcmpl" if chat else "cmpl")
        if not req.stream:
            try:
                text, usage = await self._collect(stream, first)
            finally:
                watcher.cancel()
                key_watch.cancel()
                cancel.set()
            if revoked.is_set():
                raise _revoked()
            if cancel.is_set() and usage is not None and usage.finish_reason == "cancelled":
                raise ApiError(499, "The client closed the request", code="client_closed")
            model = usage.model if usage is not None and usage.model else model
            if chat:
                return {**chat_completion(rid, model, text, usage), **extra}
            return text_completion(rid, model, text, usage)
        watcher.cancel()
        return StreamingResponse(
            self._events(stream, first, cancel, rid, model, chat, req.include_usage, (key_watch, revoked), extra),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def _collect(self, stream: Iterator[Chunk], chunk: Any) -> tuple[str, Usage | None]:
        parts: list[str] = []
        while chunk is not _END:
            if chunk.error is not None:
                raise ApiError(500, chunk.error, kind="server_error")
            parts.append(chunk.text)
            if chunk.usage is not None:
                return "".join(parts), chunk.usage
            chunk = await self.pull(stream)
        return "".join(parts), None

    async def _events(  # noqa: PLR0913
        self,
        stream: Iterator[Chunk],
        chunk: Any,
        cancel: threading.Event,
        rid: str,
        model: str,
        chat: bool,
        include_usage: bool,
        key: tuple[asyncio.Task, threading.Event],
        extra: dict[str, Any],
    ) -> AsyncIterator[str]:
        key_watch, revoked = key
        usage: Usage | None = None
        failed = False
        try:
            if chat:
                yield _sse({**chat_chunk(rid, model, {"role": "assistant", "content": ""}), **extra})
            while chunk is not _END:
                if chunk.error is not None:
                    yield _sse(ApiError(500, chunk.error, kind="server_error").body())
                    failed = True
                    break
                if chunk.text:
                    if chat:
                        yield _sse(chat_chunk(rid, model, {"content": chunk.text}))
                    else:
                        yield _sse(text_completion(rid, model, chunk.text, None, final=False, chunk=True))
                if chunk.usage is not None:
                    usage = chunk.usage
                    break
                try:
                    chunk = await self.pull(stream)
                except ApiError as exc:
                    yield _sse(exc.body())
                    failed = True
                    break
            if revoked.is_set():
                yield _sse(_revoked().body())
                failed = True
            if failed:  # the error event ends the stream: no finish_reason pretends it went well
                yield "data: [DONE]\n\n"
                return
            model = usage.model if usage is not None and usage.model else model  # who really wrote it
            if chat:
                yield _sse(chat_chunk(rid, model, {}, finish_reason(usage)))
            else:
                yield _sse(text_completion(rid, model, "", usage, final=True, chunk=True))
            if include_usage:
                last = chat_chunk(rid, model, {}, usage=usage, with_usage=True)
                yield _sse(last if chat else {**last, "object": "text_completion"})
            yield "data: [DONE]\n\n"
        finally:  # also when the client went away: its generation stops at the next token
            key_watch.cancel()
            cancel.set()
            close = getattr(stream, "close", None)
            if close is not None:
                await run_in_threadpool(close)

    # -- models -------------------------------------------------------------------------------
    def models(self, request: Request) -> dict[str, Any]:
        member = self.caller(request)
        info = self.service.backend.loaded()
        specs = self.service.backend.available_models()
        ids = [s.id for s in specs]
        if info is not None and info.options.model not in ids:
            ids.insert(0, info.options.model)
        loaded = info.options.model if info else None
        data = [
            {
                "id": i,
                "object": "model",
                "created": 0,
                "owned_by": "localchat",
                "loaded": i == loaded,
                **(
                    {"context_length": info.context_length, "max_model_len": info.context_length}
                    if info and i == loaded and info.context_length
                    else {}
                ),
            }
            for i in sorted(ids, key=lambda i: i != loaded)
            if member.may_use(i)
        ]
        return {"object": "list", "data": data}

    async def load(self, request: Request) -> dict[str, Any]:
        member = await run_in_threadpool(self.caller, request)
        if not self.household.may_load_models(member):
            raise ApiError(403, "Only a household admin's key can load models", code="admin_only")
        body = await _json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            raise ApiError(400, 'Send {"model": "..."} and optional loader options', param="model")
        unknown = sorted(set(body) - LOAD_FIELDS)
        if unknown:  # trust_remote_code and other loader switches are never accepted here
            raise ApiError(400, f"Not accepted: {', '.join(unknown)}", param=unknown[0], code="unsupported_parameter")
        try:
            options = LoadOptions(**body).validate()
        except (InvalidValue, TypeError) as exc:
            raise ApiError(400, str(exc)) from None
        try:
            info = await run_in_threadpool(self.service.load, options)
        except ServerBusy as exc:
            raise _error_status(exc) from None
        except BackendError as exc:
            raise ApiError(400, str(exc), code="model_load_failed") from None
        return {"id": info.options.model, "object": "model", "loaded": True, "description": info.describe()}

    def unload(self, request: Request) -> dict[str, Any]:
        member = self.caller(request)
        if not self.household.may_load_models(member):
            raise ApiError(403, "Only a household admin's key can unload models", code="admin_only")
        try:
            self.service.backend.unload()
        except Exception as exc:  # noqa: BLE001 - e.g. the queue is full
            raise ApiError(503, f"Could not unload now: {exc}", kind="server_error", code="server_busy") from None
        return {"object": "model", "loaded": False}


def install(api: FastAPI, service: ChatService, household: Household) -> None:
    routes = OpenAIRoutes(service, household)
    router = APIRouter(prefix="/v1")
    router.add_api_route("/models", routes.models, methods=["GET"])
    router.add_api_route("/models/load", routes.load, methods=["POST"])
    router.add_api_route("/models/unload", routes.unload, methods=["POST"])

    async def chat(request: Request) -> Any:
        return await routes.respond(request, chat=True)

    async def completions(request: Request) -> Any:
        return await routes.respond(request, chat=False)

    router.add_api_route("/chat/completions", chat, methods=["POST"])
    router.add_api_route("/completions", completions, methods=["POST"])
    embeddings.install(router, routes)  # /v1/embeddings
    api.include_router(router)

    async def api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return JSONResponse(exc.body(), status_code=exc.status)

    api.add_exception_handler(ApiError, api_error)
