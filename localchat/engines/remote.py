"""OpenAIBackend: use any OpenAI-compatible server (vLLM, llama.cpp's server, Ollama, another
localchat) as the engine, for a household that outgrows one box.

Owns: the HTTP calls to that server, and which of its models is chosen. Invariants: no torch here,
nor anything that imports it (hardware() describes this machine without asking torch); history,
accounts and presets stay local (only the messages of one request are sent); Stop or a closed
stream closes that one HTTP response, which makes the server stop generating; every failure is
one line for the user.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import httpx

from localchat.backend import (
    EMBEDDING_MODEL,
    BackendError,
    ModelLoadFailed,
    ModelNotAllowed,
    NoModelLoaded,
    PromptTooLong,
    ServerBusy,
)
from localchat.hardware import Hardware, detect
from localchat.types import Chunk, GenerationRequest, LoadedInfo, LoadOptions, ModelSpec, Usage


class OpenAIBackend:
    def __init__(
        self, url: str, key: str | None = None, timeout: float = 600.0, embedding_model: str = EMBEDDING_MODEL
    ):
        """`embedding_model`: the model the engine's /v1/embeddings is asked for (another localchat
        answers with all-MiniLM-L6-v2; vLLM or Ollama need the name of one they serve)."""
        self.embedding_model = embedding_model
        self.url = url.rstrip("/")
        if not self.url.endswith("/v1"):
            self.url += "/v1"
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout, connect=10.0))
        self._info: LoadedInfo | None = None
        self._lock = threading.Lock()  # guards _info and _streaming
        self._streaming = 0  # replies being written for this server now
        self.last_load_error: str | None = None

    @property
    def loading(self) -> LoadOptions | None:
        return None  # choosing a remote model is quick: load() returns when it is done

    @property
    def asleep(self) -> LoadedInfo | None:
        return None  # the engine's own business: it never looks unloaded from here

    # -- models -------------------------------------------------------------------------------
    def _models(self) -> list[dict[str, Any]]:
        try:
            r = self.http.get(self.url + "/models")
        except httpx.HTTPError as exc:
            raise BackendError(f"The engine at {self.url} cannot be reached: {exc}") from exc
        if r.status_code == 401:
            raise BackendError(f"The engine at {self.url} refused the key (--engine-key)")
        if r.status_code != 200:
            raise BackendError(f"The engine at {self.url} answered {r.status_code} for its model list")
        try:
            data = r.json().get("data", [])
        except (ValueError, AttributeError):
            raise BackendError(f"The engine at {self.url} sent a model list that is not OpenAI's shape") from None
        return [m for m in data if isinstance(m, dict) and m.get("id")] if isinstance(data, list) else []

    def available_models(self) -> list[ModelSpec]:
        try:
            models = self._models()
        except BackendError:
            return []
        return [ModelSpec(id=m["id"], name=m["id"], source="engine", note="remote engine") for m in models]

    def loaded(self) -> LoadedInfo | None:
        return self._info

    def load(self, options: LoadOptions) -> LoadedInfo:
        """Choose one of the engine's models (the engine loaded it; quantization is its business)."""
        started = time.perf_counter()
        try:
            models = self._models()
        except BackendError as exc:
            self.last_load_error = str(exc)
            raise ModelLoadFailed(str(exc)) from exc
        found = next((m for m in models if m["id"] == options.model), None)
        if found is None:
            names = ", ".join(m["id"] for m in models) or "none"
            self.last_load_error = f"The engine has no model {options.model!r} (it has: {names})"
            raise ModelLoadFailed(self.last_load_error)
        context = int(found.get("max_model_len") or found.get("context_length") or options.context_length or 0)
        info = LoadedInfo(
            options=options,
            name=options.model,
            device=f"engine {httpx.URL(self.url).host}",
            dtype="",
            quantization="",
            memory_bytes=0,
            context_length=context,
            load_seconds=time.perf_counter() - started,
            has_chat_template=True,
        )
        with self._lock:
            self._info = info
        self.last_load_error = None
        return info

    def load_in_background(self, options: LoadOptions) -> Future[LoadedInfo]:
        """Choosing a remote model is quick, so this chooses at once; a failure is remembered for
        the status line (and in the Future). The default (a bundled local model) is not on the
        engine: the engine's first model is chosen instead."""
        future: Future[LoadedInfo] = Future()
        future.set_running_or_notify_cancel()
        try:
            try:
                info = self.load(options)
            except ModelLoadFailed:
                models = self.available_models() if options.model.startswith("bundled:") else []
                if not models:
                    raise
                info = self.load(LoadOptions(model=models[0].id))
        except ModelLoadFailed as exc:
            future.set_exception(exc)
        else:
            future.set_result(info)
        return future

    def unload(self) -> None:
        raise BackendError("This engine does not unload models: the server at the engine URL manages its memory")

    def fit(self, options: LoadOptions) -> str:
        return (
            f"⚠ Memory estimates are not available for {options.model}: it runs on the engine at {self.url}, "
            "which manages its own memory"
        )

    def hardware(self) -> Hardware:
        """This machine without its GPUs (torch is not asked), and where the models run."""
        return detect(gpus=False, engine=f"the remote engine at {self.url}")

    def activity(self) -> dict[str, int]:
        """Replies this server is receiving from the engine now (the engine's own queue is not known)."""
        with self._lock:
            return {"generating": self._streaming, "waiting": 0}

    # -- sentence vectors -----------------------------------------------------------------------
    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """See Engine.embed: the engine's /v1/embeddings, its vectors made unit length."""
        texts = [str(t) for t in texts]
        if not texts:
            return []
        body = {"model": self.embedding_model, "input": texts, "encoding_format": "float"}
        try:
            r = self.http.post(self.url + "/embeddings", json=body)
        except httpx.HTTPError as exc:
            raise BackendError(f"The engine at {self.url} cannot be reached for embeddings: {exc}") from exc
        if r.status_code != 200:
            raise _error(r, "embeddings")
        try:
            data = sorted(r.json()["data"], key=lambda d: d["index"])
            vectors = [[float(x) for x in d["embedding"]] for d in data]
        except (ValueError, KeyError, TypeError):
            raise BackendError(f"The engine at {self.url} sent embeddings that are not OpenAI's shape") from None
        if len(vectors) != len(texts) or any(len(v) != len(vectors[0]) or not v for v in vectors):
            raise BackendError(f"The engine at {self.url} sent {len(vectors)} embeddings for {len(texts)} texts")
        return [_unit(v) for v in vectors]

    # -- replies ------------------------------------------------------------------------------
    def expect(self) -> None:
        """Nothing to do: the engine batches as it sees fit."""

    def stream(self, request: GenerationRequest, cancel: threading.Event | None = None) -> Iterator[Chunk]:
        """See Engine.stream. The reply starts when called: the chosen model is checked against the
        member's allowed models then. `trim` and `owner` are the engine's business (it answers 400
        to a prompt past its window, and queues as it sees fit)."""
        info = self._info
        if info is None:
            raise NoModelLoaded("No model of the engine is chosen yet; pick one and press Load")
        model = info.options.model
        if request.allowed_models is not None and model not in request.allowed_models:
            raise ModelNotAllowed(
                f"Your account may not use {info.name}, the model chosen now; ask a household admin "
                "to choose one you may use"
            )
        params, prompt = request.params.validate(), request.prompt
        cancel = cancel or threading.Event()
        body: dict[str, Any] = {
            "model": model,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_new_tokens,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        # Beyond OpenAI's fields, but vLLM, llama.cpp and localchat honour them: send what is set.
        if params.top_k:
            body["top_k"] = params.top_k
        if params.min_p:
            body["min_p"] = params.min_p
        if params.repetition_penalty != 1.0:
            body["repetition_penalty"] = params.repetition_penalty
        if params.seed is not None:
            body["seed"] = params.seed
        if params.presence_penalty or params.frequency_penalty:
            body.update(presence_penalty=params.presence_penalty, frequency_penalty=params.frequency_penalty)
        if prompt is not None:
            body["prompt"] = prompt
            path = "/completions"
        else:
            body["messages"] = [{"role": m.role, "content": m.content} for m in request.messages]
            path = "/chat/completions"
        return self._stream(path, body, cancel)

    def _stream(self, path: str, body: dict[str, Any], cancel: threading.Event) -> Iterator[Chunk]:
        with self._lock:
            self._streaming += 1
        try:
            yield from self._stream_now(path, body, cancel)
        finally:
            with self._lock:
                self._streaming -= 1

    def _stream_now(self, path: str, body: dict[str, Any], cancel: threading.Event) -> Iterator[Chunk]:
        submitted = time.perf_counter()
        first_at: float | None = None
        usage: dict[str, Any] = {}
        reason = "stop"
        pieces = 0
        try:
            with self.http.stream("POST", self.url + path, json=body) as response:
                if response.status_code != 200:
                    raise _error(response)
                # Stop closes the connection at once, even while the engine has nothing to send.
                threading.Thread(target=_close_on, args=(cancel, response), daemon=True).start()
                for line in response.iter_lines():
                    if cancel.is_set():
                        reason = "cancelled"
                        break  # leaving the block closes the connection: the engine stops
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    try:
                        event = json.loads(data)
                    except ValueError:
                        raise BackendError(f"The engine sent something that is not JSON: {data[:80]!r}") from None
                    if not isinstance(event, dict):
                        continue
                    if "error" in event or event.get("object") == "error":
                        error = event.get("error", event)
                        message = error.get("message", error) if isinstance(error, dict) else error
                        raise BackendError(f"The engine failed: {message}")
                    usage = event.get("usage") or usage
                    for choice in event.get("choices") or []:
                        text = (choice.get("delta") or {}).get("content") or choice.get("text") or ""
                        if text:
                            first_at = first_at or time.perf_counter()
                            pieces += 1
                            yield Chunk(text=text)
                        if choice.get("finish_reason"):
                            reason = "length" if choice["finish_reason"] == "length" else "stop"
        except (httpx.HTTPError, httpx.StreamError) as exc:
            if cancel.is_set():  # we closed it ourselves (Stop)
                reason = "cancelled"
            else:
                raise BackendError(f"The engine at {self.url} stopped answering: {exc}") from exc
        finally:
            cancel.set()
        end = time.perf_counter()
        completion = int(usage.get("completion_tokens") or pieces)
        yield Chunk(
            usage=Usage(
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=completion,
                time_to_first_token=None if first_at is None else first_at - submitted,
                tokens_per_second=(completion - 1) / (end - first_at)
                if first_at and completion > 1 and end > first_at
                else None,
                finish_reason=reason,  # type: ignore[arg-type]
                model=body["model"],  # the id asked for: what the allowed models name
            )
        )

    def close(self) -> None:
        self.http.close()


def _close_on(cancel: threading.Event, response: httpx.Response) -> None:
    cancel.wait()
    response.close()


def _unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    if not math.isfinite(norm) or norm == 0:
        raise BackendError("The engine sent an embedding of length zero")
    return [x / norm for x in vector]


def _error(response: httpx.Response, what: str = "") -> BackendError:
    response.read()
    try:
        message = str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        message = response.text[:200]
    if response.status_code == 400 and "context" in message.lower():
        return PromptTooLong(message)
    if response.status_code in (429, 503):
        return ServerBusy(f"The engine is busy: {message}")
    about = f" for {what}" if what else ""
    return BackendError(f"The engine answered {response.status_code}{about}: {message}".splitlines()[0])
