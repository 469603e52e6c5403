"""TransformersBackend: the real Backend, over a model loaded in this process.

Owns: the currently loaded model and the swap to a new one. Every load and every reply runs as a
job on the single InferenceWorker; the generators handed to callers only wait on a queue.
Invariant: a failed load leaves the previous model loaded; closing a reply's iterator cancels it.
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path

import torch

from localchat.backend import ModelLoadFailed, ModelNotAllowed, NoModelLoaded, PromptTooLong, ServerBusy
from localchat.engine.batch import Batch, Reply
from localchat.engine.embedding import SentenceEmbedder
from localchat.engine.fit import FitReport
from localchat.engine.formats import trim_heap
from localchat.engine.generate import ContextOverflow, Decoded, fit_to_window, prompt_ids, text_ids
from localchat.engine.loading import Loaded, LoadError, choose_quantization, fit_report, load_model, pick_device
from localchat.engine.patches import shared_gguf_reads
from localchat.engine.prefix import PrefixCache
from localchat.engine.scheduler import Busy, InferenceWorker
from localchat.hardware import Hardware, detect
from localchat.types import Chunk, ContextFit, GenerationRequest, LoadedInfo, LoadOptions, ModelSpec, Usage
from localchat.weights import models

log = logging.getLogger(__name__)
_DONE = object()
POLL_SECONDS = 0.2


class TransformersBackend:
    def __init__(
        self,
        data_dir: Path,
        models_dir: Path | None = None,
        max_waiting: int = 32,
        idle_unload: float = 0,
        max_batch: int = 8,
    ):
        """`idle_unload`: seconds without a request after which the model is unloaded (0: never);
        the next request loads it again with the same options. `max_batch`: how many replies
        may decode together (1: one at a time)."""
        self.data_dir = data_dir
        self.idle_unload = idle_unload
        self.asleep: LoadedInfo | None = None  # unloaded for being idle; loads again on the next request
        self._last_used = time.monotonic()
        self._closing = threading.Event()
        self.models_dir = models_dir or data_dir / "models"
        self.worker = InferenceWorker(max_waiting=max_waiting)
        self.worker.on_idle = trim_heap  # after each burst of replies: RSS back near the model's size
        self._current: Loaded | None = None
        self._batch: Batch | None = None  # the replies decoding on the current model
        self.max_batch = max_batch
        self.loading: LoadOptions | None = None  # set while a load is queued or running
        self.last_load_error: str | None = None
        self._pending_loads: list[LoadOptions] = []
        self._loads_lock = threading.Lock()
        self._materialize_lock = threading.Lock()
        self.prefix = PrefixCache()  # on the worker thread only
        self.cache_root = data_dir / "cache" / "gguf-dequantized"
        self.embedder = SentenceEmbedder()  # loaded on the first embed; runs beside the worker
        if idle_unload > 0:
            threading.Thread(target=self._watch_idle, name="localchat-idle", daemon=True).start()

    # -- models -------------------------------------------------------------------------------
    def available_models(self) -> list[ModelSpec]:
        return models.discover(self.models_dir)

    def loaded(self) -> LoadedInfo | None:
        current = self._current
        return current.info if current else self.asleep

    def hardware(self) -> Hardware:
        return detect()

    def load(self, options: LoadOptions) -> LoadedInfo:
        """Load and wait; raises ModelLoadFailed with one line, the old model still loaded."""
        try:
            return self.load_in_background(options).result()
        except Busy as exc:
            raise ServerBusy(str(exc)) from exc

    def fit(self, options: LoadOptions) -> str:
        """Will this model fit this machine, per load option (Markdown, for the Model panel)."""
        try:
            with self._materialize_lock:  # a load may be assembling the same bundled file
                real = replace(options, model=models.materialize(options.model, self.data_dir))
            return fit_report(real, self.cache_root).describe()
        except LoadError as exc:
            return f"⚠ {exc}"
        except Exception as exc:  # noqa: BLE001 - an estimate must never break the panel
            return f"⚠ Could not estimate the memory for {options.model}: {exc}"

    def load_in_background(self, options: LoadOptions) -> Future:
        """Queue a load on the worker; replies queued after it run on the new model."""

        def job() -> LoadedInfo:
            return self._load_now(options)

        def done(future: Future) -> None:
            with self._loads_lock:
                self._pending_loads.remove(options)
                self.loading = self._pending_loads[-1] if self._pending_loads else None
            exc = None if future.cancelled() else future.exception()
            self.last_load_error = str(exc) if exc else None

        with self._loads_lock:
            future = self.worker.submit(job)  # raises Busy before anything is recorded
            self._pending_loads.append(options)
            self.loading = options
        future.add_done_callback(done)
        return future

    def _load_now(self, options: LoadOptions) -> LoadedInfo:
        """Load on the worker thread, replacing the current model only on success."""
        try:
            with self._materialize_lock:
                real = replace(options, model=models.materialize(options.model, self.data_dir))
            report = None
            with shared_gguf_reads():  # the estimate and the load parse a GGUF once
                if real.quantization == "auto":  # the model being replaced gives its memory back
                    current = self._current
                    free = detect().free_bytes(pick_device(real.device)) + (current.info.memory_bytes if current else 0)
                    report = fit_report(real, self.cache_root, free)
                    real = choose_quantization(real, self.cache_root, report=report)
                new = load_model(real, self.cache_root)
            batch = self._new_batch(new)  # before the swap: if this fails, the old model stays
        except LoadError as exc:
            _free_memory()  # e.g. the CUDA blocks of a half-loaded model that ran out of memory
            raise ModelLoadFailed(str(exc)) from exc
        except Exception as exc:  # noqa: BLE001 - a load must never take the app down
            log.exception("load failed")
            _free_memory()
            raise ModelLoadFailed(f"Could not load {options.model}: {exc}".splitlines()[0]) from exc
        name = models.DISPLAY_NAMES.get(options.model, new.info.name)
        new.info = replace(new.info, options=options, name=name)  # keep the reference the user chose
        self._check_estimate(real, new.info, report)
        old, self._current, self.asleep = self._current, new, None
        del old
        self._set_batch(batch)
        _free_memory()
        self._last_used = time.monotonic()
        log.info("loaded %s", new.info.describe())
        return new.info

    def _check_estimate(self, options: LoadOptions, info: LoadedInfo, report: FitReport | None = None) -> None:
        """Compare the fit estimate with the real footprint, so a wrong estimate shows in the log.
        `report`: the one `auto` already made (estimates do not depend on the free memory)."""
        try:
            report = report or fit_report(options, self.cache_root, free_bytes=1)
        except Exception:  # noqa: BLE001 - an estimate is advice, never a reason to fail a load
            return
        option = info.quantization if info.quantization != "none" else report.unquantized
        if info.dtype == "bfloat16" and info.quantization == "none":
            option = "bfloat16"
        estimate = next((e.weights_bytes for e in report.estimates if e.option == option), None)
        if estimate and info.memory_bytes:
            error = (estimate - info.memory_bytes) / info.memory_bytes
            info.extra["estimate_error"] = f"{error:+.1%}"
            log.info(
                "memory estimate %.1f MiB, real %.1f MiB (%+.1f%%)",
                estimate / 2**20,
                info.memory_bytes / 2**20,
                error * 100,
            )

    # -- memory governance --------------------------------------------------------------------
    def _watch_idle(self) -> None:
        while not self._closing.wait(min(30.0, max(0.2, self.idle_unload / 4))):
            current = self._current
            if current is None or self.worker.busy or self.worker.waiting():
                continue
            if time.monotonic() - self._last_used < self.idle_unload or self._keep_resident(current.info):
                continue
            try:
                self.worker.submit(self._sleep)
            except Busy:
                pass

    def _keep_resident(self, info: LoadedInfo) -> bool:
        """The small bundled model stays loaded while it takes under a tenth of the free memory."""
        from localchat.hardware import detect

        bundled = info.options.model.startswith(models.BUNDLED_PREFIX)
        return bundled and info.memory_bytes * 10 < detect().free_bytes(info.device)

    def _sleep(self) -> None:
        current = self._current
        if current is None or self.worker.waiting() or time.monotonic() - self._last_used < self.idle_unload:
            return  # a request came in meanwhile
        self.asleep, self._current = current.info, None
        del current
        self._set_batch(None)
        _free_memory()
        log.info("unloaded %s after %.0f s without a request", self.asleep.name, self.idle_unload)

    def _new_batch(self, loaded: Loaded) -> Batch:
        window = loaded.info.context_length
        return Batch(loaded.model, loaded.tokenizer, window, self.max_batch, prefix=self.prefix)

    def _set_batch(self, batch: Batch | None) -> None:
        """On the worker, with no reply decoding: replies from now on decode in `batch`."""
        self.prefix.clear()  # its caches belong to the model before
        self._batch = batch
        self.worker.stepper = batch

    def activity(self) -> dict[str, int]:
        """For /health: how many replies are being generated now, and how many wait."""
        batch = self._batch
        return {"generating": len(batch) if batch is not None else 0, "waiting": self.worker.waiting()}

    def unload(self) -> None:
        def job() -> None:
            self._current = self.asleep = None
            self._set_batch(None)
            _free_memory()

        self.worker.call(job)

    # -- sentence vectors -----------------------------------------------------------------------
    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """See Engine.embed: on the caller's thread, not the inference worker's, so a reply being
        written and an embed both go on."""
        return self.embedder.embed(texts)

    # -- replies ------------------------------------------------------------------------------
    def expect(self) -> None:
        """A request for a reply has arrived and will call stream() soon (see InferenceWorker.expect)."""
        self.worker.expect()

    def stream(self, request: GenerationRequest, cancel: threading.Event | None = None) -> Iterator[Chunk]:
        """See Engine.stream: the job checks the model (and the member's allowed models) when it
        starts on the worker, after any load queued before it."""
        cancel = cancel or threading.Event()
        messages, params, prompt, owner = request.messages, request.params.validate(), request.prompt, request.owner
        out: queue.Queue = queue.Queue()
        ended: list[Usage | BaseException] = []  # set by the batch when the reply ends
        submitted = time.perf_counter()

        def job() -> None:
            started = time.perf_counter()
            # Checked when the job runs, so a reply queued behind a load is checked against the new
            # model; before _require, so a model asleep that would be refused is not woken for it.
            self._check_allowed(request)
            current = self._require()
            model = current.info.options.model
            window = current.info.context_length
            if prompt is not None or not request.trim:
                ids = (
                    text_ids(current.tokenizer, prompt, window)
                    if prompt is not None
                    else prompt_ids(current.tokenizer, messages, window)
                )
                fit = ContextFit()
                if len(ids) >= window:
                    raise PromptTooLong(
                        f"The prompt has {len(ids)} tokens, but this model's context window is {window} tokens"
                    )
            else:
                try:
                    ids, fit = fit_to_window(current.tokenizer, messages, window, params.max_new_tokens)
                except ContextOverflow as exc:
                    raise PromptTooLong(f"The conversation does not fit the context window: {exc}") from exc
            if fit.trimmed:
                out.put(Chunk(fit=fit))

            def done(decoded: Decoded | None, exc: BaseException | None) -> None:
                self._last_used = time.monotonic()  # idle time counts from the end of the last reply
                if exc is not None:
                    ended.append(exc)
                else:
                    assert decoded is not None
                    ended.append(usage(decoded, len(ids), submitted, started, model))
                out.put(_DONE)

            assert self._batch is not None
            self._batch.add(Reply(ids, params, cancel, lambda text: out.put(Chunk(text=text)), done, owner))

        self._last_used = time.monotonic()  # idle time counts from the last request and the last reply
        try:
            future = self.worker.submit(job, cancel, owner or None, joins=True)  # None: a turn of its own
        except Busy as exc:
            raise ServerBusy(f"The model is busy: {exc}") from exc

        def started_or_not(future: Future) -> None:
            self._last_used = time.monotonic()
            if future.cancelled() or future.exception() is not None:
                out.put(_DONE)  # it never joined the batch: nothing else will say so

        future.add_done_callback(started_or_not)
        try:
            last_position = self.worker.position(future)
            if last_position:
                yield Chunk(queue_position=last_position)
            while True:
                try:
                    item = out.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    if cancel.is_set() and future.cancel():
                        continue  # stopped while still waiting: leaves the queue now (_DONE follows)
                    position = self.worker.position(future)
                    if position != last_position and position is not None:
                        yield Chunk(queue_position=position)
                    last_position = position
                    continue
                if item is _DONE:
                    break
                yield item
            if future.cancelled():
                yield Chunk(usage=Usage(finish_reason="cancelled", queue_seconds=time.perf_counter() - submitted))
                return
            exc = future.exception()
            if exc is not None:
                raise exc
            result = ended[0]
            if isinstance(result, BaseException):
                raise result
            yield Chunk(usage=result)
        finally:
            cancel.set()  # a closed iterator (Stop, dropped connection) ends the generation

    def _check_allowed(self, request: GenerationRequest) -> None:
        """On the worker: refuse a model (loaded, or asleep and about to load) the member may not use."""
        info = self.loaded()
        if request.allowed_models is not None and info is not None and info.options.model not in request.allowed_models:
            raise ModelNotAllowed(
                f"Your account may not use {info.name}, the model loaded now; ask a household admin "
                "to load one you may use"
            )

    def _require(self) -> Loaded:
        """The loaded model; on the worker, one unloaded for being idle is loaded again first."""
        self._last_used = time.monotonic()
        current = self._current
        if current is None and self.asleep is not None and self.worker.is_worker_thread():
            options = self.asleep.options
            with self._loads_lock:
                self.loading = options  # the status line says "Loading…" meanwhile
            try:
                self._load_now(options)
            except ModelLoadFailed as exc:
                self.asleep, self.last_load_error = None, str(exc)  # the status line says why
                raise
            finally:
                with self._loads_lock:
                    self.loading = self._pending_loads[-1] if self._pending_loads else None
            current = self._current
        if current is None:
            raise NoModelLoaded("No model is loaded yet; pick one and press Load")
        return current

    def close(self) -> None:
        self._closing.set()
        self.worker.close()
        self.embedder.close()


def usage(decoded: Decoded, prompt_tokens: int, submitted: float, started: float, model: str = "") -> Usage:
    first = decoded.first_token_at
    speed = None
    if first is not None and decoded.completion_tokens > 1 and decoded.finished_at > first:
        speed = (decoded.completion_tokens - 1) / (decoded.finished_at - first)
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=decoded.completion_tokens,
        time_to_first_token=None if first is None else first - submitted,
        tokens_per_second=speed,
        finish_reason=decoded.finish_reason,
        queue_seconds=started - submitted,
        model=model,
    )


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
