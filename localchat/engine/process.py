"""EngineProcess: the real Backend, with the model in a process of its own.

Owns: the engine process (a TransformersBackend behind a pipe), the messages between the two, and
starting a new engine process when one dies. Why a process: the web server's threads (Gradio,
the event loop, SSE) and the inference worker shared one interpreter lock, and the worker waits
for it between torch ops. Measured on a 2-core CPU: Python work on another thread for 30% of the
time cut decode from 22.6 to 14.4 tok/s; the same work in another process, to 19.1.
Invariants: the server process never runs the model; every request's cancel event reaches the
engine within one token (or one poll while it waits); a dying engine process fails only the
requests in flight, each with one clear line, and a new one loads the model that was loaded.
This module imports no torch: that happens in the engine process.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import logging.handlers
import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localchat.backend import BackendError, ServerBusy
from localchat.hardware import Hardware
from localchat.types import Chunk, LoadedInfo, LoadOptions, Message, ModelSpec, SamplingParams

log = logging.getLogger(__name__)
POLL_SECONDS = 0.2  # how often a waiting stream looks at its cancel event
RELOAD_AFTER_CRASH_SECONDS = 60  # a second death within this time does not load the model again


class EngineStopped(BackendError):
    """The engine process ended while requests were in flight."""


@dataclass(frozen=True)
class _End:
    error: BaseException | None = None


# -- the engine process ------------------------------------------------------------------------
def _portable(exc: BaseException) -> BaseException:
    """The exception itself if it survives pickling, else a BackendError with its line."""
    from localchat.engine.scheduler import Busy

    if isinstance(exc, Busy):
        return ServerBusy(f"The model is busy: {exc}")
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - anything that does not travel becomes one readable line
        return BackendError(f"{type(exc).__name__}: {exc}".splitlines()[0])


class Wire:
    """Length-prefixed pickles over a pair of pipes; sends from any thread, one message at a time.
    Both ends are localchat's own processes, so unpickling trusts what it reads."""

    HEADER = struct.Struct("!I")

    def __init__(self, reader: Any, writer: Any):
        self.reader, self.writer = reader, writer
        self.lock = threading.Lock()

    def send(self, message: Any) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        with self.lock:
            self.writer.write(self.HEADER.pack(len(data)) + data)
            self.writer.flush()

    def recv(self) -> Any:
        (size,) = self.HEADER.unpack(self._exactly(self.HEADER.size))
        return pickle.loads(self._exactly(size))

    def _exactly(self, n: int) -> bytes:
        data = self.reader.read(n)
        if data is None or len(data) < n:
            raise EOFError("the other process closed the pipe")
        return data

    def put_nowait(self, record: logging.LogRecord) -> None:  # a QueueHandler's queue
        try:
            self.send(("log", record))
        except (OSError, ValueError):
            pass  # the server is gone; nobody reads the log any more


class _Engine:
    """Runs in the engine process: takes messages from the server and answers them."""

    def __init__(self, pipe: Wire, backend: Any):
        self.pipe, self.backend = pipe, backend
        self.cancels: dict[int, threading.Event] = {}

    def run(self) -> None:
        while True:
            try:
                message = self.pipe.recv()
            except (EOFError, OSError):
                os._exit(0)  # the server is gone: nothing here is worth finishing
            kind = message[0]
            if kind == "close":
                break
            if kind == "cancel":
                event = self.cancels.get(message[1])
                if event is not None:
                    event.set()
            elif kind == "stream":
                self.cancels[message[1]] = threading.Event()  # before any cancel can come for it
                threading.Thread(target=self.stream, args=message[1:], daemon=True).start()
            elif kind == "load":  # queued at once, so the state calls after it see it loading
                self.load(*message[1:])
            elif kind == "expect":
                self.backend.expect()
            elif kind == "state":
                self.answer(message[1], self.state)
            else:  # "call": may wait for the worker (counting tokens, unloading, estimating)
                threading.Thread(target=self.answer, args=(message[1], self.call, *message[2:]), daemon=True).start()
        self.backend.close()

    def answer(self, rid: int, fn: Any, *args: Any) -> None:
        try:
            result = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller in the server
            self.pipe.send(("error", rid, _portable(exc)))
        else:
            self.pipe.send(("result", rid, result))

    def call(self, method: str, args: tuple) -> Any:
        if method not in ("fit", "count_tokens", "unload", "hardware"):
            raise BackendError(f"The engine has no call {method!r}")
        return getattr(self.backend, method)(*args)

    def state(self) -> dict[str, Any]:
        b = self.backend
        return {
            "loaded": b.loaded(),
            "asleep": b.asleep is not None,
            "loading": b.loading,
            "last_load_error": b.last_load_error,
            "activity": b.activity(),
        }

    def load(self, rid: int, options: LoadOptions) -> None:
        try:
            future = self.backend.load_in_background(options)
        except BaseException as exc:  # noqa: BLE001 - the queue is full, say
            self.pipe.send(("error", rid, _portable(exc)))
            return

        def done(f: Future) -> None:
            exc = f.exception() if not f.cancelled() else BackendError("The load was cancelled")
            self.pipe.send(("error", rid, _portable(exc)) if exc else ("result", rid, f.result()))

        future.add_done_callback(done)

    def stream(self, rid: int, messages: list[Message], params: SamplingParams, options: dict[str, Any]) -> None:
        cancel = self.cancels[rid]
        try:
            for chunk in self.backend.stream(messages, params, cancel, **options):
                self.pipe.send(("chunk", rid, chunk))
            self.pipe.send(("end", rid, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller in the server
            self.pipe.send(("end", rid, _portable(exc)))
        finally:
            self.cancels.pop(rid, None)


def main() -> None:
    """The engine process (`python -m localchat.engine.process`): messages on stdin and stdout,
    the server's privacy switches and log level, then a TransformersBackend."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C reaches the whole group; the server stops us
    wire = Wire(os.fdopen(os.dup(0), "rb"), os.fdopen(os.dup(1), "wb"))
    os.dup2(2, 1)  # a library's stray print must not end up in the messages
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    config = wire.recv()
    import localchat  # noqa: F401 - offline/telemetry switches before transformers is imported

    if config["offline"]:
        from localchat.privacy import go_offline

        go_offline()
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(wire)]  # the server's handlers write them
    root.setLevel(config["log_level"])
    from localchat.engine.backend import TransformersBackend

    _Engine(wire, TransformersBackend(**config["backend"])).run()


# -- the server's side -------------------------------------------------------------------------
class EngineProcess:
    """A Backend whose model runs in a child process; the same calls as TransformersBackend."""

    def __init__(
        self,
        data_dir: Path,
        models_dir: Path | None = None,
        max_waiting: int = 32,
        idle_unload: float = 0,
        max_batch: int = 8,
    ):
        from localchat.privacy import is_offline

        self.data_dir = data_dir
        self.models_dir = models_dir or data_dir / "models"
        self._config = {
            "backend": {
                "data_dir": data_dir,
                "models_dir": self.models_dir,
                "max_waiting": max_waiting,
                "idle_unload": idle_unload,
                "max_batch": max_batch,
            },
            "offline": is_offline(),
            "log_level": logging.getLogger().getEffectiveLevel(),
        }
        self._lock = threading.Lock()  # guards the fields below and every send
        self._ids = itertools.count()
        self._calls: dict[int, Future] = {}
        self._streams: dict[int, queue.SimpleQueue] = {}
        self._loads: dict[int, LoadOptions] = {}  # loads in flight, by call id
        self._model: LoadOptions | None = None  # what is loaded, to load again after a crash
        self._last_crash = -float("inf")
        self._closed = False
        self._start()
        atexit.register(self.close)

    def _start(self) -> None:
        """Start an engine process; under self._lock (or before any other thread exists)."""
        package_root = str(Path(__file__).resolve().parents[2])  # where `localchat` can be imported from
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        process = subprocess.Popen(
            [sys.executable, "-m", "localchat.engine.process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self._conn, self._process = Wire(process.stdout, process.stdin), process
        self._conn.send(self._config)
        threading.Thread(
            target=self._read, args=(self._conn, process), name="localchat-engine-reader", daemon=True
        ).start()

    # -- messages -------------------------------------------------------------------------------
    def _send(self, message: tuple) -> None:
        with self._lock:
            self._send_locked(message)

    def _send_locked(self, message: tuple) -> None:
        if self._closed:
            raise ServerBusy("The server is shutting down")
        try:
            self._conn.send(message)
        except (OSError, ValueError) as exc:  # the engine just died: _read fails the request
            log.debug("engine pipe closed: %s", exc)

    def _read(self, conn: Any, process: Any) -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            except Exception:  # noqa: BLE001 - one message that did not unpickle; the next ones can
                log.exception("a message from the engine could not be read")
                continue
            kind = message[0]
            if kind == "log":
                record = message[1]
                logging.getLogger(record.name).handle(record)
                continue
            with self._lock:
                if kind in ("chunk", "end"):
                    target: Any = self._streams.get(message[1])
                else:
                    target = self._calls.pop(message[1], None)
                    options = self._loads.pop(message[1], None)
                    if options is not None and kind == "result":
                        self._model = options
            if target is None:
                continue  # a stream its caller already closed
            if kind == "chunk":
                target.put(message[2])
            elif kind == "end":
                target.put(_End(message[2]))
            elif kind == "result":
                target.set_result(message[2])
            else:
                target.set_exception(message[2])
        self._engine_died(process)

    def _engine_died(self, process: subprocess.Popen) -> None:
        try:
            code = process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        with self._lock:
            if self._closed:
                return
            how = f"exit code {code}" if code >= 0 else f"stopped by signal {-code}"
            if code == -signal.SIGKILL:
                how += ", often the system running out of memory"
            calls, streams, loading = list(self._calls.values()), list(self._streams.values()), bool(self._loads)
            self._calls.clear()
            self._loads.clear()
            reload = (
                self._model
                if not loading and time.monotonic() - self._last_crash > RELOAD_AFTER_CRASH_SECONDS
                else None
            )
            self._last_crash = time.monotonic()
            self._model = None
            self._start()
        error = EngineStopped(f"The model engine stopped unexpectedly ({how}) and was started again")
        log.error("%s%s", error, f"; loading {reload.model} again" if reload else "")
        for future in calls:
            future.set_exception(error)
        for stream in streams:
            stream.put(_End(error))
        if reload is not None:
            self.load_in_background(reload)

    def _call(self, kind: str, *args: Any) -> Future:
        future: Future = Future()
        with self._lock:
            rid = next(self._ids)
            self._calls[rid] = future
            if kind == "load":
                self._loads[rid] = args[0]
            self._send_locked((kind, rid, *args))
        return future

    def _state(self) -> dict[str, Any]:
        return self._call("state").result()

    # -- the Backend calls ----------------------------------------------------------------------
    def available_models(self) -> list[ModelSpec]:
        from localchat.engine import models

        return models.discover(self.models_dir)  # files only: no need to ask the engine

    def loaded(self) -> LoadedInfo | None:
        return self._state()["loaded"]

    @property
    def asleep(self) -> LoadedInfo | None:
        state = self._state()
        return state["loaded"] if state["asleep"] else None

    @property
    def loading(self) -> LoadOptions | None:
        return self._state()["loading"]

    @property
    def last_load_error(self) -> str | None:
        return self._state()["last_load_error"]

    def activity(self) -> dict[str, int]:
        return self._state()["activity"]

    def load_in_background(self, options: LoadOptions) -> Future:
        return self._call("load", options)

    def load(self, options: LoadOptions) -> LoadedInfo:
        return self.load_in_background(options).result()

    def fit(self, options: LoadOptions) -> str:
        return self._call("call", "fit", (options,)).result()

    def expect(self) -> None:
        if not self._closed:  # a hint: a server shutting down just does not pass it on
            self._send(("expect",))

    def hardware(self) -> Hardware:
        return self._call("call", "hardware", ()).result()

    def count_tokens(self, messages: Sequence[Message]) -> int:
        return self._call("call", "count_tokens", (list(messages),)).result()

    def unload(self) -> None:
        self._call("call", "unload", ()).result()
        with self._lock:
            self._model = None

    def stream(
        self,
        messages: Sequence[Message],
        params: SamplingParams,
        cancel: threading.Event | None = None,
        *,
        trim: bool = True,
        prompt: str | None = None,
        owner: str | None = None,
    ) -> Iterator[Chunk]:
        cancel = cancel or threading.Event()
        params.validate()
        replies: queue.SimpleQueue = queue.SimpleQueue()
        with self._lock:
            rid = next(self._ids)
            self._streams[rid] = replies
            options = {"trim": trim, "prompt": prompt, "owner": owner}
            self._send_locked(("stream", rid, list(messages), params, options))
        told, ended = False, False
        try:
            while True:
                try:
                    item = replies.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    item = None
                if cancel.is_set() and not told:
                    self._send(("cancel", rid))
                    told = True
                if item is None:
                    continue
                if isinstance(item, _End):
                    ended = True
                    if item.error is not None:
                        raise item.error
                    return
                yield item
        finally:
            with self._lock:
                self._streams.pop(rid, None)
                if not ended and not told and not self._closed:
                    self._send_locked(("cancel", rid))  # a closed iterator (Stop, a dropped client) ends it

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._send_locked(("close",))
            self._closed = True
        try:
            self._process.wait(15)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(5)


if __name__ == "__main__":
    main()
