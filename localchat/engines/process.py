"""EngineProcess: the real Backend, with the model in a process of its own.

Owns: the engine process (engine/worker_process.py: a TransformersBackend behind a pipe), the
requests in flight to it, what it last said of its state, and starting a new one when it dies.
Why a process: the web server's threads (Gradio, the event loop, SSE) and the inference worker
shared one interpreter lock, and the worker waits for it between torch ops. Measured on a 2-core
CPU: Python work on another thread for 30% of the time cut decode from 22.6 to 14.4 tok/s; the
same work in another process, to 19.1.
Invariants: no lock is held while writing to or reading from the pipe (one writer thread sends,
one reader thread receives), so nothing here blocks the event loop; `loaded()` and the other
state are answered from what the engine last said; a Stop reaches the engine within
CANCEL_SECONDS whatever the caller does meanwhile; every request in flight is answered, also
when the engine dies (EngineStopped) or the server closes (ServerBusy); a dead engine is started
again with the model it had, unless it died too often, which is then said in one line.
This module imports no torch.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localchat.backend import BackendError, ServerBusy
from localchat.engines import pipe
from localchat.engines.pipe import End, State, Wire
from localchat.hardware import Hardware
from localchat.types import Chunk, GenerationRequest, LoadedInfo, LoadOptions, ModelSpec

log = logging.getLogger(__name__)
CANCEL_SECONDS = 0.05  # how often the writer looks for Stop pressed on a reply in flight
DEATHS, DEATH_WINDOW_SECONDS = 3, 60.0  # this many deaths within the window: not started again
CALL_SECONDS = 60.0  # an engine that does not answer a short call in this time is reported
EMBED_SECONDS_PER_TEXT = 1.0  # on top of CALL_SECONDS (which covers loading the embedding model)
NO_STATE = State()  # before the engine said anything, and after it died
ENGINE_COMMAND = [sys.executable, "-m", "localchat.engine.worker_process"]


class EngineStopped(BackendError):
    """The engine process ended while requests were in flight, or cannot be started."""


@dataclass(eq=False)
class _Stream:
    cancel: threading.Event
    replies: queue.SimpleQueue[Chunk | End] = field(default_factory=queue.SimpleQueue)
    generation: int = 0
    told: bool = False  # the engine was told to cancel it
    ended: bool = False


class EngineProcess:
    """A Backend whose model runs in a child process; the same calls as TransformersBackend."""

    def __init__(
        self,
        data_dir: Path,
        models_dir: Path | None = None,
        max_waiting: int = 32,
        idle_unload: float = 0,
        max_batch: int = 8,
        *,
        command: list[str] | None = None,
    ):
        """`command`: how to start the engine process (tests start stand-ins)."""
        from localchat.privacy import is_offline

        self.data_dir = data_dir
        self.models_dir = models_dir or data_dir / "models"
        self._command = command or ENGINE_COMMAND
        self._config = pipe.Start(
            backend={
                "data_dir": data_dir,
                "models_dir": self.models_dir,
                "max_waiting": max_waiting,
                "idle_unload": idle_unload,
                "max_batch": max_batch,
            },
            offline=is_offline(),
            log_level=logging.getLogger().getEffectiveLevel(),
        )
        self._lock = threading.Lock()  # guards the fields below; never held during pipe I/O
        self._ids = itertools.count()
        self._calls: dict[int, Future] = {}
        self._streams: dict[int, _Stream] = {}
        self._loads: dict[int, LoadOptions] = {}  # loads in flight, by call id
        self._state = NO_STATE  # what the engine last said
        self._model: LoadOptions | None = None  # what is loaded, to load again after a crash
        self._deaths: deque[float] = deque()
        self._broken: str | None = None  # why no engine runs (it died too often or cannot start)
        self._closed = False
        self._generation = 0  # which engine process: messages for an earlier one are dropped
        self._outbox: queue.SimpleQueue[tuple[int, pipe.ToEngine]] = queue.SimpleQueue()
        self._start()
        threading.Thread(target=self._write, name="localchat-engine-writer", daemon=True).start()
        atexit.register(self.close)

    # -- the engine process ---------------------------------------------------------------------
    def _start(self) -> None:
        """Start an engine process (raises OSError if it cannot); under self._lock, or in __init__."""
        package_root = str(Path(__file__).resolve().parents[2])  # where `localchat` can be imported from
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        process = subprocess.Popen(self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        wire = Wire(process.stdout, process.stdin)
        self._generation += 1
        self._process = process
        self._current = (self._generation, wire)  # one reference: the writer reads both at once
        self._outbox.put((self._generation, self._config))  # the first message it reads
        args = (wire, process, self._generation)
        threading.Thread(target=self._read, args=args, name="localchat-engine-reader", daemon=True).start()

    def _write(self) -> None:
        """The one thread that writes to the engine: queued messages, and cancels for Stop."""
        while True:
            try:
                generation, message = self._outbox.get(timeout=CANCEL_SECONDS)
            except queue.Empty:
                generation, message = None, None
            current, wire = self._current
            if message is not None and generation == current:  # a message for an engine that died: dropped
                self._send_now(wire, message)
                if isinstance(message, pipe.Close):
                    return
            for rid, _ in self._stopped_streams(current):
                self._send_now(wire, pipe.Cancel(rid))

    @staticmethod
    def _send_now(wire: Wire, message: pipe.ToEngine) -> None:
        try:
            wire.send(message)
        except (OSError, ValueError):
            pass  # the engine is gone: the reader sees it end and answers what was in flight

    def _stopped_streams(self, generation: int) -> list[tuple[int, _Stream]]:
        """Streams of this engine whose caller pressed Stop and that the engine was not told of."""
        with self._lock:
            stopped = [(rid, s) for rid, s in self._streams.items()
                       if s.cancel.is_set() and not s.told and s.generation == generation]  # fmt: skip
            for _, s in stopped:
                s.told = True
        return stopped

    def _read(self, wire: Wire, process: subprocess.Popen, generation: int) -> None:
        while True:
            try:
                message = wire.recv()
            except (EOFError, OSError):
                break
            except Exception:  # noqa: BLE001 - one message that did not unpickle; the next ones can
                log.exception("a message from the engine could not be read")
                continue
            try:
                self._dispatch(message)
            except Exception:  # noqa: BLE001 - the reader must outlive any one message
                log.exception("a message from the engine could not be handled")
        self._engine_died(process, generation)

    def _dispatch(self, message: pipe.FromEngine) -> None:
        match message:
            case pipe.LogMsg(record):
                logging.getLogger(record.name).handle(record)
            case State():
                with self._lock:
                    self._state = message
            case pipe.ChunkMsg(rid, _) | End(rid, _):
                with self._lock:
                    stream = self._streams.get(rid)
                    if stream is not None:
                        stream.replies.put(message.chunk if isinstance(message, pipe.ChunkMsg) else message)
            case pipe.Result(rid, _) | pipe.Failure(rid, _):
                with self._lock:
                    future = self._calls.pop(rid, None)
                    options = self._loads.pop(rid, None)
                    if options is not None and isinstance(message, pipe.Result):
                        self._model = options
                if future is None or future.done():
                    return
                if isinstance(message, pipe.Result):
                    future.set_result(message.value)
                else:
                    future.set_exception(message.error)
            case _:
                log.error("the engine sent a message the server does not know: %r", type(message).__name__)

    def _engine_died(self, process: subprocess.Popen, generation: int) -> None:
        try:
            code = process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        with self._lock:
            if generation != self._generation:
                return
            loading = [o.model for o in self._loads.values()]
            calls, streams = self._take_in_flight()
            self._state = NO_STATE
            closed = self._closed
            if not closed:
                now = time.monotonic()
                self._deaths.append(now)
                while self._deaths and self._deaths[0] < now - DEATH_WINDOW_SECONDS:
                    self._deaths.popleft()
                reload = self._model
        if closed:
            self._fail(calls, streams, lambda: ServerBusy("The server is shutting down"))
            return
        how = f"exit code {code}" if code >= 0 else f"stopped by signal {-code}"
        if code == -signal.SIGKILL:
            how += ", often the system running out of memory"
        during = f" while loading {', '.join(loading)}" if loading else ""
        line = f"The model engine stopped unexpectedly ({how}){during}"
        if len(self._deaths) >= DEATHS:
            line += f", {DEATHS} times within a minute, so it is not started again; see the log"
            self._give_up(line)
        else:
            try:
                with self._lock:
                    self._start()
            except OSError as exc:
                line += f", and could not be started again ({exc})"
                self._give_up(line)
            else:
                again = f"; loading {reload.model} again" if reload is not None else ""
                line += f" and was started again{again}"
        log.error("%s", line)
        self._fail(calls, streams, lambda: EngineStopped(line))
        if self._broken is None and reload is not None:
            self.load_in_background(reload)  # the model it had, also when a new one was loading

    def _give_up(self, why: str) -> None:
        with self._lock:
            self._broken = why
            calls, streams = self._take_in_flight()
        self._fail(calls, streams, lambda: EngineStopped(why))

    def _take_in_flight(self) -> tuple[list[Future], list[tuple[int, _Stream]]]:
        """The calls (now forgotten) and streams waiting for an answer; under self._lock. Streams
        leave by themselves once they have read their end."""
        calls, streams = list(self._calls.values()), list(self._streams.items())
        self._calls.clear()
        self._loads.clear()
        return calls, streams

    @staticmethod
    def _fail(calls: list[Future], streams: list[tuple[int, _Stream]], error: Callable[[], BackendError]) -> None:
        for future in calls:
            if not future.done():
                future.set_exception(error())
        for rid, stream in streams:
            stream.replies.put(End(rid, error()))

    # -- requests -------------------------------------------------------------------------------
    def _call(self, make: Callable[[int], pipe.Call | pipe.LoadCall], load: LoadOptions | None = None) -> Future:
        """Send the request `make(rid)` (a Call or LoadCall); the Future (which cannot be cancelled)
        gets the engine's answer. `load`: the options of a LoadCall."""
        future: Future = Future()
        future.set_running_or_notify_cancel()  # cancel() would not reach the engine: refuse it
        with self._lock:
            if self._closed:
                future.set_exception(ServerBusy("The server is shutting down"))
                return future
            if self._broken is not None and load is not None:
                self._deaths.clear()  # someone asks for a model: try a fresh engine once more
                try:
                    self._start()
                    self._broken = None
                except OSError as exc:
                    self._broken = f"The model engine could not be started ({exc})"
            if self._broken is not None:
                future.set_exception(EngineStopped(self._broken))
                return future
            rid = next(self._ids)
            self._calls[rid] = future
            if load is not None:
                self._loads[rid] = load
            self._outbox.put((self._generation, make(rid)))
        return future

    def _ask(self, method: pipe.CallName, *args: Any, seconds: float = CALL_SECONDS) -> Any:
        try:
            return self._call(lambda rid: pipe.Call(rid, method, args)).result(timeout=seconds)
        except TimeoutError:
            raise EngineStopped(f"The model engine did not answer within {seconds:.0f} s") from None

    # -- the Backend calls ----------------------------------------------------------------------
    def available_models(self) -> list[ModelSpec]:
        from localchat.weights import models

        return models.discover(self.models_dir)  # files only: no need to ask the engine

    def loaded(self) -> LoadedInfo | None:
        return self._state.loaded

    @property
    def asleep(self) -> LoadedInfo | None:
        state = self._state
        return state.loaded if state.asleep else None

    @property
    def loading(self) -> LoadOptions | None:
        with self._lock:
            pending = list(self._loads.values())
        return pending[-1] if pending else self._state.loading

    @property
    def last_load_error(self) -> str | None:
        return self._broken or self._state.last_load_error

    def activity(self) -> dict[str, int]:
        try:
            return self._ask("activity", seconds=5)
        except BackendError:
            return {"generating": 0, "waiting": 0}

    def load_in_background(self, options: LoadOptions) -> Future[LoadedInfo]:
        return self._call(lambda rid: pipe.LoadCall(rid, options), load=options)

    def load(self, options: LoadOptions) -> LoadedInfo:
        return self.load_in_background(options).result()

    def fit(self, options: LoadOptions) -> str:
        try:
            return self._ask("fit", options)
        except BackendError as exc:
            return f"⚠ {exc}"

    def hardware(self) -> Hardware:
        return self._ask("hardware")

    def unload(self) -> None:
        self._call(lambda rid: pipe.Call(rid, "unload")).result()
        with self._lock:
            self._model = None

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """See Engine.embed: the engine process answers it on a thread of its own, beside replies."""
        texts = [str(t) for t in texts]
        if not texts:
            return []
        return self._ask("embed", texts, seconds=CALL_SECONDS + EMBED_SECONDS_PER_TEXT * len(texts))

    def expect(self) -> None:
        if not self._closed:  # a hint: never blocks (the writer sends it) and never fails
            self._outbox.put((self._generation, pipe.Expect()))

    def stream(self, request: GenerationRequest, cancel: threading.Event | None = None) -> Iterator[Chunk]:
        """See Engine.stream; the engine process checks the model when the job starts there."""
        cancel = cancel or threading.Event()
        request.params.validate()
        stream, rid = _Stream(cancel), None
        try:
            with self._lock:
                if self._closed:
                    raise ServerBusy("The server is shutting down")
                if self._broken is not None:
                    raise EngineStopped(self._broken)
                rid = next(self._ids)
                stream.generation = self._generation
                self._streams[rid] = stream
                self._outbox.put((self._generation, pipe.StreamCall(rid, request)))
            while True:
                item = stream.replies.get()  # the engine, its death or close() always puts an end
                if isinstance(item, End):
                    stream.ended = True
                    if item.error is not None:
                        raise item.error
                    return
                yield item
        finally:
            cancel.set()  # a closed iterator (Stop, a dropped client) ends the generation
            if rid is not None:
                self._streams.pop(rid, None)
                if not stream.ended and not stream.told:
                    stream.told = True
                    self._outbox.put((stream.generation, pipe.Cancel(rid)))

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._outbox.put((self._generation, pipe.Close()))
            process = self._process
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        with self._lock:  # the reader answers these too; this covers an engine that was given up
            calls, streams = self._take_in_flight()
        self._fail(calls, streams, lambda: ServerBusy("The server is shutting down"))
