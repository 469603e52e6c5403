"""Reading a /v1 request body: bounded in size, nesting and numbers, with text made storable.

Invariant: a body is never held past MAX_BODY_BYTES (it is read as it streams and refused at the
cap), and every body that is not plain JSON within the bounds is an ApiError (a 4xx in OpenAI's
shape), never an exception that would be a 500.
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.requests import ClientDisconnect, Request

from localchat.api.schema import ApiError
from localchat.text import clean_text

MAX_BODY_BYTES = 8 * 2**20  # as a page's event body: a long conversation fits many times over
MAX_DEPTH = 32  # an OpenAI body nests 5 deep (messages -> content part -> text); 32 leaves room
MAX_DIGITS = 40  # longer integers are no count, seed or size any API takes


def _too_large() -> ApiError:
    return ApiError(413, f"The request body is larger than {MAX_BODY_BYTES // 2**20} MB", code="request_too_large")


async def read_body(request: Request) -> bytes:
    """The raw body, refused with a 413 as soon as it (or its Content-Length) passes the cap."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large()
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise _too_large()
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(400, "The client closed the request before its body arrived") from None
    return b"".join(chunks)


def _integer(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_DIGITS:
        raise ApiError(400, f"A number in the body has more than {MAX_DIGITS} digits")
    return int(digits)


def _decimal(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ApiError(400, f"A number in the body is too large: {text[:40]}")
    return value


def _constant(name: str) -> Any:
    raise ApiError(400, f"{name} is not a number JSON allows")


def _tidy(value: Any, depth: int = 0) -> Any:
    """Bound the nesting and make every string storable (keys too)."""
    if depth > MAX_DEPTH:
        raise ApiError(400, f"The request body nests deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list):
        return [_tidy(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {clean_text(k): _tidy(v, depth + 1) for k, v in value.items()}
    return value


def parse_json(data: bytes) -> Any:
    """JSON within the bounds, or an ApiError saying what is wrong with it."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ApiError(400, "The request body is not UTF-8 text") from None
    try:
        value = json.loads(text, parse_int=_integer, parse_float=_decimal, parse_constant=_constant)
    except RecursionError:
        raise ApiError(400, f"The request body nests deeper than {MAX_DEPTH} levels") from None
    except ValueError:  # JSONDecodeError, and int()'s limit on digits
        raise ApiError(400, "The request body is not valid JSON") from None
    return _tidy(value)


async def json_body(request: Request) -> Any:
    return parse_json(await read_body(request))
