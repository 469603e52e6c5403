"""OpenAI request bodies -> core values, and core values -> OpenAI response bodies.

Invariant: a field we cannot honour is refused with a 4xx error in OpenAI's shape, never silently
ignored; every range is checked by SamplingParams.validate, the same check the UI uses. One extension:
`libraries` ("all" or a list of library ids) answers from the member's documents and adds `sources` to
the response; ids the member may not use are ignored like ids that do not exist.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

from localchat.core.documents import LibraryChoice, parse_choice
from localchat.library.types import Passage
from localchat.types import InvalidValue, Message, SamplingParams, Usage

DEFAULT_MAX_TOKENS = 512
# Accepted with any value: they change nothing we could honour differently.
HARMLESS = {"user", "metadata", "store", "service_tier", "parallel_tool_calls", "prompt_cache_key", "safety_identifier"}
CHAT_FIELDS = {
    "messages", "model", "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed",
    "presence_penalty", "frequency_penalty", "stream", "stream_options", "n", "logprobs", "top_logprobs",
    "top_k", "min_p", "repetition_penalty", "response_format", "tools", "tool_choice", "functions",
    "function_call", "logit_bias", "libraries",
}  # fmt: skip
COMPLETION_FIELDS = (CHAT_FIELDS - {"messages", "max_completion_tokens", "response_format", "tools", "libraries",
                                    "tool_choice", "functions", "function_call", "top_logprobs"}) | {
    "prompt", "echo", "suffix", "best_of"}  # fmt: skip


class ApiError(Exception):
    """An error answered as {"error": {...}} with an HTTP status."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ApiRequest:
    model: str | None
    params: SamplingParams
    stream: bool
    include_usage: bool
    max_tokens_given: bool
    messages: tuple[Message, ...] = ()
    prompt: str | None = None
    libraries: LibraryChoice = None  # the extension field: documents to answer from


def _refuse(field: str, why: str) -> ApiError:
    return ApiError(400, f"{field}: {why}", param=field, code="unsupported_parameter")


def _number(body: dict, name: str, default: Any, kind: type = float) -> Any:
    value = body.get(name)
    if value is None:
        return default
    whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and not whole):
        raise ApiError(400, f"{name} must be a {'whole ' if kind is int else ''}number", param=name)
    if not (isinstance(value, float) and not math.isfinite(value)) and abs(value) < 2**63:
        return kind(value)  # in range for every field; SamplingParams.validate checks each one's own
    raise ApiError(400, f"{name} is out of range", param=name)


def _content(value: Any, index: int) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # [{"type": "text", "text": ...}]; images and audio are refused
        parts = []
        for part in value:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _refuse(f"messages[{index}].content", "only text parts are supported")
            parts.append(part["text"])
        return "".join(parts)
    raise ApiError(400, f"messages[{index}].content must be a string or a list of text parts", param="messages")


def _messages(raw: Any) -> tuple[Message, ...]:
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "messages must be a non-empty list", param="messages")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise ApiError(400, f"messages[{i}] must be an object", param="messages")
        role = m.get("role")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant"):
            raise _refuse(f"messages[{i}].role", f"{role!r} is not supported (system, user or assistant)")
        if m.get("tool_calls") or m.get("function_call"):
            raise _refuse(f"messages[{i}]", "tool calls are not supported")
        out.append(Message(role, _content(m.get("content"), i)))
    return tuple(out)


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise ApiError(400, "stop must be a string or a list of up to 4 non-empty strings", param="stop")
    return tuple(stops)


def _check_fields(body: dict, allowed: set[str]) -> None:
    for name in body:
        if name not in allowed and name not in HARMLESS:
            raise _refuse(name, "this field is not supported by localchat")
    if _number(body, "n", 1, int) != 1 or _number(body, "best_of", 1, int) != 1:
        raise _refuse("n", "only one choice per request (n=1)")
    for name in ("tools", "functions", "logit_bias"):
        if body.get(name):
            raise _refuse(name, "not supported")
    for name in ("tool_choice", "function_call"):
        if body.get(name) not in (None, "none"):
            raise _refuse(name, "not supported")
    if body.get("logprobs") or body.get("top_logprobs") or body.get("echo") or body.get("suffix"):
        raise _refuse("logprobs" if body.get("logprobs") else "echo", "not supported")
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
        raise _refuse("response_format", 'only {"type": "text"} is supported')


def parse(body: Any, chat: bool) -> ApiRequest:
    """Validate a /v1/chat/completions (chat=True) or /v1/completions body."""
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object")
    _check_fields(body, CHAT_FIELDS if chat else COMPLETION_FIELDS)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, "model must be a string", param="model")
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or set(options) - {"include_usage"}):
        raise _refuse("stream_options", "only include_usage is supported")
    given = body.get("max_completion_tokens", body.get("max_tokens"))
    name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    defaults = SamplingParams()
    try:
        params = SamplingParams(
            temperature=_number(body, "temperature", 1.0),
            top_p=_number(body, "top_p", 1.0),
            top_k=_number(body, "top_k", 0, int),
            min_p=_number(body, "min_p", 0.0),
            repetition_penalty=_number(body, "repetition_penalty", 1.0),
            presence_penalty=_number(body, "presence_penalty", 0.0),
            frequency_penalty=_number(body, "frequency_penalty", 0.0),
            max_new_tokens=_number(body, name, DEFAULT_MAX_TOKENS, int),
            seed=_number(body, "seed", defaults.seed, int),
            stop=_stop(body.get("stop")),
        ).validate()
    except InvalidValue as exc:
        raise ApiError(400, str(exc)) from None
    if chat:
        messages, prompt = _messages(body.get("messages")), None
        try:
            libraries = parse_choice(body.get("libraries"))
        except ValueError as exc:
            raise ApiError(400, str(exc), param="libraries") from None
    else:
        libraries = None
        raw = body.get("prompt")
        if isinstance(raw, list) and len(raw) == 1 and isinstance(raw[0], str):
            raw = raw[0]
        if not isinstance(raw, str) or not raw:
            raise ApiError(400, "prompt must be a non-empty string", param="prompt")
        messages, prompt = (), raw
    return ApiRequest(
        model=model,
        params=params,
        stream=bool(body.get("stream")),
        include_usage=bool((options or {}).get("include_usage")),
        max_tokens_given=given is not None,
        messages=messages,
        prompt=prompt,
        libraries=libraries,
    )


# -- responses ------------------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def finish_reason(usage: Usage | None) -> str:
    return "length" if usage is not None and usage.finish_reason == "length" else "stop"


def usage_body(usage: Usage | None) -> dict[str, int]:
    prompt = usage.prompt_tokens if usage else 0
    completion = usage.completion_tokens if usage else 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def chat_completion(rid: str, model: str, text: str, usage: Usage | None) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish_reason(usage),
            }
        ],
        "usage": usage_body(usage),
    }


def sources_body(passages: tuple[Passage, ...]) -> list[dict[str, Any]]:
    """The extension's `sources`: the passages the model was given, numbered as it was told to cite them."""
    return [
        {"index": n, "document": p.document, "where": p.where, "chunk_id": p.chunk_id, "text": p.text}
        for n, p in enumerate(passages, 1)
    ]


def chat_chunk(rid: str, model: str, delta: dict, reason: str | None = None, usage: Usage | None = None,
               with_usage: bool = False) -> dict[str, Any]:  # fmt: skip
    chunk: dict[str, Any] = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [] if with_usage else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}],
    }
    if with_usage:
        chunk["usage"] = usage_body(usage)
    return chunk


def text_completion(rid: str, model: str, text: str, usage: Usage | None, final: bool = True,
                    chunk: bool = False) -> dict[str, Any]:  # fmt: skip
    body: dict[str, Any] = {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason(usage) if final else None}
        ],
    }
    if not chunk:
        body["usage"] = usage_body(usage)
    return body
