"""FakeBackend: the Backend protocol with canned replies, for fast UI and service tests.

No torch, no threads of its own: `stream` yields the reply word by word on the caller's thread,
records every call, honours the cancel event, and can be told to fail. Like the real engines, the
job "starts" when the stream is first read: only then is the loaded model checked against the
request's allowed models and named in the reply's usage (`hold` keeps a job waiting to start).
`embed` gives hashed bag-of-words unit vectors (fake_embedding, 384 dimensions): texts sharing
words are closer, with no model, so library and UI tests run without torch.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from argon2 import PasswordHasher

from localchat.backend import (
    EMBEDDING_DIMENSIONS,
    BackendError,
    ModelLoadFailed,
    ModelNotAllowed,
    NoModelLoaded,
    PromptTooLong,
)
from localchat.hardware import Hardware
from localchat.types import (
    Chunk,
    ContextFit,
    GenerationRequest,
    LoadedInfo,
    LoadOptions,
    Message,
    ModelSpec,
    SamplingParams,
    Usage,
)

# Real argon2id at the lowest cost, so tests that create accounts stay fast.
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
DEFAULT_REPLY = "Hello there, how can I help you today?"
DEFAULT_MODELS = ("fake-small", "fake-large")


@dataclass(frozen=True)
class Call:
    """One `stream` call as the backend saw it."""

    messages: list[Message]
    params: SamplingParams
    cancel: threading.Event | None
    trim: bool = True
    prompt: str | None = None
    owner: str = ""
    allowed_models: tuple[str, ...] | None = None


def fake_embedding(text: str, dimensions: int = EMBEDDING_DIMENSIONS) -> list[float]:
    """A deterministic unit vector: each lower-cased word adds +-1 at a hashed position (the same
    across processes and runs), so texts that share words are closer than texts that do not."""
    vector = [0.0] * dimensions
    for word in re.findall(r"\w+", text.lower()) or [""]:
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        vector[int.from_bytes(digest[:4], "little") % dimensions] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(x * x for x in vector))
    if norm == 0:  # words whose signs cancelled out
        vector[0], norm = 1.0, 1.0
    return [x / norm for x in vector]


def words(text: str) -> list[str]:
    """Split into chunks that join back to `text`: each word keeps the space before it."""
    parts = text.split(" ")
    return [parts[0], *(" " + p for p in parts[1:])] if text else []


class FakeBackend:
    def __init__(
        self,
        reply: str | Callable[[Sequence[Message]], str] = DEFAULT_REPLY,
        *,
        delay: float = 0.0,
        models: Sequence[str] = DEFAULT_MODELS,
        model: str | None = DEFAULT_MODELS[0],
        error: BackendError | None = None,
        error_after: int = 0,
        fit: ContextFit | None = None,
        queue_positions: Sequence[int] = (),
        context_length: int = 2048,
    ):
        self.reply = reply  # text, or a function of the messages
        self.delay = delay  # seconds to wait before each chunk (cancel cuts the wait short)
        self.models = list(models)
        self.error = error  # raised after `error_after` text chunks
        self.error_after = error_after
        self.context_fit = fit  # sent before the text, as the real backend does when it trims
        self.queue_positions = list(queue_positions)  # sent before anything else
        self.context_length = context_length
        self.calls: list[Call] = []
        self.loads: list[LoadOptions] = []
        self.loading: LoadOptions | None = None
        self.asleep: LoadedInfo | None = None
        self.last_load_error: str | None = None
        self.hold: threading.Event | None = None  # set: jobs wait for it before they start
        self.embedded: list[str] = []  # every text embed() was given, in order
        self.embed_error: BackendError | None = None  # raised by embed() when set
        self.expected = 0
        self.closed = False
        self._info: LoadedInfo | None = self._info_for(LoadOptions(model=model)) if model else None

    # -- replies ------------------------------------------------------------------------------
    def stream(self, request: GenerationRequest, cancel: threading.Event | None = None) -> Iterator[Chunk]:
        messages = [Message("user", request.prompt)] if request.prompt is not None else list(request.messages)
        r = request
        self.calls.append(Call(messages, r.params, cancel, r.trim, r.prompt, r.owner, r.allowed_models))
        if not r.trim and self.context_length and self._count(messages) >= self.context_length:
            raise PromptTooLong(f"The prompt does not fit the {self.context_length}-token context window")
        return self._stream(messages, r.params, cancel or threading.Event(), r.allowed_models)

    def _stream(
        self,
        messages: list[Message],
        params: SamplingParams,
        cancel: threading.Event,
        allowed: tuple[str, ...] | None,
    ) -> Iterator[Chunk]:
        submitted = time.perf_counter()
        for position in self.queue_positions:
            yield Chunk(queue_position=position)
        while self.hold is not None and not self.hold.wait(0.01) and not cancel.is_set():
            pass
        info = self._info  # the job starts: the model loaded now is the one that answers
        if info is None:
            raise NoModelLoaded("No model is loaded yet; pick one and press Load")
        if allowed is not None and info.options.model not in allowed:
            raise ModelNotAllowed(f"Your account may not use {info.name}. Ask an admin of the household.")
        if self.context_fit is not None:
            yield Chunk(fit=self.context_fit)
        text = self.reply(messages) if callable(self.reply) else self.reply
        pieces = words(text)
        sent, first_at, reason = 0, None, "stop"
        try:
            for piece in pieces:
                if self.error is not None and sent >= self.error_after:
                    raise self.error
                if sent >= params.max_new_tokens:
                    reason = "length"
                    break
                if cancel.wait(self.delay) if self.delay else cancel.is_set():
                    reason = "cancelled"
                    break
                first_at = first_at or time.perf_counter()
                sent += 1
                yield Chunk(text=piece)
            else:
                if self.error is not None:
                    raise self.error
        except GeneratorExit:
            cancel.set()  # closing the iterator cancels, as the protocol says
            raise
        end = time.perf_counter()
        speed = (sent - 1) / (end - first_at) if first_at and sent > 1 and end > first_at else None
        yield Chunk(
            usage=Usage(
                prompt_tokens=self._count(messages),
                completion_tokens=sent,
                time_to_first_token=None if first_at is None else first_at - submitted,
                tokens_per_second=speed,
                finish_reason=reason,  # type: ignore[arg-type]
                model=info.options.model,
            )
        )

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if self.embed_error is not None:
            raise self.embed_error
        self.embedded.extend(texts)
        return [fake_embedding(t) for t in texts]

    def _count(self, messages: Sequence[Message]) -> int:
        return sum(3 + len(m.content.split()) for m in messages)

    # -- models -------------------------------------------------------------------------------
    def load(self, options: LoadOptions) -> LoadedInfo:
        self.loads.append(options)
        if options.model not in self.models:
            self.last_load_error = f"Could not load {options.model}: no such model"
            raise ModelLoadFailed(self.last_load_error)
        self._info = self._info_for(options)
        self.last_load_error = None
        return self._info

    def loaded(self) -> LoadedInfo | None:
        return self._info

    def unload(self) -> None:
        self._info = None

    def load_in_background(self, options: LoadOptions) -> None:
        self.load(options)

    def fit(self, options: LoadOptions) -> str:
        return f"{options.model}: about 100 MiB; fits"

    def hardware(self) -> Hardware:
        return Hardware(cpu="Fake CPU", cores=2, ram_total_bytes=8 * 2**30, ram_free_bytes=4 * 2**30)

    def activity(self) -> dict[str, int]:
        return {"generating": 0, "waiting": 0}

    def expect(self) -> None:
        self.expected += 1

    def available_models(self) -> list[ModelSpec]:
        return [ModelSpec(id=m, name=m, source="folder", size_bytes=100 * 2**20) for m in self.models]

    def close(self) -> None:
        self.closed = True

    def _info_for(self, options: LoadOptions) -> LoadedInfo:
        return LoadedInfo(
            options=options,
            name=options.model,
            device="cpu",
            dtype="float32",
            quantization=options.quantization,
            memory_bytes=100 * 2**20,
            context_length=options.context_length or self.context_length,
            load_seconds=0.5,
            has_chat_template=True,
        )
