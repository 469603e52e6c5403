"""/v1/embeddings: OpenAI's embeddings endpoint over the engine's sentence-embedding model.

Owns: reading an embeddings body (OpenAI's shape) and answering it in OpenAI's shape, floats or
base64 (little-endian float32, what the official client asks for by default).
Invariants: the caller is a member resolved from its API key, as on every /v1 route; a body is
bounded (api/body.py: size, nesting; every string cleaned of lone surrogates) and holds at most
MAX_INPUTS texts; a field we cannot honour (token arrays, other dimensions, another model) is a
4xx in OpenAI's shape, never ignored; vectors are the engine's (Engine.embed), computed beside
replies. `usage` counts no tokens (0): the engine returns vectors only, and nothing here is metered.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from localchat.api.body import json_body
from localchat.api.schema import HARMLESS, ApiError
from localchat.backend import EMBEDDING_DIMENSIONS, EMBEDDING_MODEL, BackendError, ServerBusy

if TYPE_CHECKING:
    from localchat.api.routes import OpenAIRoutes

MAX_INPUTS = 256
FIELDS = {"input", "model", "encoding_format", "dimensions"}
# The names a client may ask for: the model's id, or its name without the organisation.
MODEL_NAMES = {EMBEDDING_MODEL.lower(), EMBEDDING_MODEL.split("/")[-1].lower()}


@dataclass(frozen=True)
class EmbeddingRequest:
    texts: tuple[str, ...]
    base64: bool = False


def _unsupported(param: str, why: str) -> ApiError:
    return ApiError(400, f"{param}: {why}", param=param, code="unsupported_parameter")


def parse(body: Any) -> EmbeddingRequest:
    """An OpenAI embeddings body -> the texts to embed; ApiError (400/404) for anything else."""
    if not isinstance(body, dict):
        raise ApiError(400, 'Send a JSON object: {"input": "text" or ["text", ...]}')
    unknown = sorted(name for name in body if name not in FIELDS and name not in HARMLESS)
    if unknown:
        raise _unsupported(unknown[0], "not supported by this server")
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or (model and model.lower() not in MODEL_NAMES)):
        raise ApiError(
            404,
            f"The embedding model here is {EMBEDDING_MODEL!r}; {str(model)[:80]!r} is not available",
            param="model",
            code="model_not_found",
        )
    fmt = body.get("encoding_format")
    if fmt not in (None, "float", "base64"):
        raise ApiError(400, 'encoding_format must be "float" or "base64"', param="encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None and (isinstance(dimensions, bool) or dimensions != EMBEDDING_DIMENSIONS):
        raise _unsupported("dimensions", f"this model's vectors have {EMBEDDING_DIMENSIONS} dimensions only")
    raw = body.get("input")
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not texts:
        raise ApiError(400, "input must be a string or a non-empty list of strings", param="input")
    if len(texts) > MAX_INPUTS:
        raise ApiError(400, f"input has {len(texts)} texts; at most {MAX_INPUTS} per request", param="input")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            why = "token ids are not supported, send text" if isinstance(text, int | list) else "must be a string"
            raise ApiError(400, f"input[{i}]: {why}", param="input")
    return EmbeddingRequest(tuple(texts), base64=fmt == "base64")


def _encode(vector: Sequence[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def response(vectors: Sequence[Sequence[float]], as_base64: bool, model: str = EMBEDDING_MODEL) -> dict[str, Any]:
    """Vectors -> OpenAI's embeddings response."""
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": _encode(v) if as_base64 else list(v)}
            for i, v in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": 0, "total_tokens": 0},
    }


async def create(routes: OpenAIRoutes, request: Request) -> dict[str, Any]:
    await run_in_threadpool(routes.caller, request)  # a database read: any member's key may embed
    req = parse(await json_body(request))
    try:
        vectors = await run_in_threadpool(routes.service.backend.embed, req.texts)
    except ServerBusy as exc:
        raise ApiError(503, str(exc), kind="server_error", code="server_busy") from None
    except BackendError as exc:
        raise ApiError(503, str(exc), kind="server_error", code="embeddings_unavailable") from None
    return response(vectors, req.base64)


def install(router: APIRouter, routes: OpenAIRoutes) -> None:
    async def embeddings(request: Request) -> dict[str, Any]:
        return await create(routes, request)

    router.add_api_route("/embeddings", embeddings, methods=["POST"])
