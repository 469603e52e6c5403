"""The engine process (`python -m localchat.engine.worker_process`): a TransformersBackend that
takes its requests from the server over stdin and answers over stdout (engines/pipe.py).

Owns: the requests in flight in this process and their cancel events, and telling the server what
it needs to show (the loaded model, a load going on, its last error) whenever that changes.
Invariants: the main thread only reads messages and hands them on, never waits for the model;
a state message always goes out before the answer that changed it (a load's result, say), so the
server never shows an older state after the answer; when the server goes away this process
ends at once; Ctrl+C and SIGTERM sent to the whole group are left to the server, which closes us.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import pickle
import signal
import threading
from concurrent.futures import Future

from localchat.backend import Backend, BackendError, ServerBusy
from localchat.engine.scheduler import Busy
from localchat.engines.pipe import (
    CALLS,
    Call,
    Cancel,
    ChunkMsg,
    Close,
    End,
    Expect,
    Failure,
    LoadCall,
    Result,
    Start,
    State,
    StreamCall,
    Wire,
)
from localchat.types import LoadedInfo

STATE_EVERY_SECONDS = 0.5  # how often changes the server did not cause (an idle unload) are looked for


class Engine:
    """Takes messages from the server and answers them."""

    def __init__(self, wire: Wire, backend: Backend):
        self.wire, self.backend = wire, backend
        self.cancels: dict[int, threading.Event] = {}
        self._told: State | None = None  # the state the server has
        self._state_lock = threading.Lock()
        self._stopping = threading.Event()

    def run(self) -> None:
        self.tell_state()
        threading.Thread(target=self._watch_state, name="localchat-engine-state", daemon=True).start()
        while True:
            try:
                message = self.wire.recv()
            except (EOFError, OSError):
                os._exit(0)  # the server is gone: nothing here is worth finishing
            match message:
                case Close():
                    break
                case Cancel(rid):
                    event = self.cancels.get(rid)
                    if event is not None:
                        event.set()
                case StreamCall(rid, _):
                    self.cancels[rid] = threading.Event()  # before any cancel can come for it
                    threading.Thread(target=self.stream, args=(message,), daemon=True).start()
                case LoadCall():  # queued at once, so the state sent next says it is loading
                    self.load(message)
                case Expect():
                    self.backend.expect()
                case Call():  # may wait (unloading, estimating, embedding): on a thread of its own
                    threading.Thread(target=self.answer, args=(message,), daemon=True).start()
                case _:
                    logging.getLogger(__name__).error("unknown message from the server: %r", type(message).__name__)
        self._stopping.set()
        for event in list(self.cancels.values()):
            event.set()  # replies in flight end at their next step, so closing does not wait for them
        self.backend.close()

    # -- state ----------------------------------------------------------------------------------
    def state(self) -> State:
        b = self.backend
        return State(
            loaded=b.loaded(), asleep=b.asleep is not None, loading=b.loading, last_load_error=b.last_load_error
        )

    def tell_state(self) -> None:
        """Send the state if it changed since the server last heard it."""
        with self._state_lock:
            now = self.state()
            if now != self._told:
                self.wire.send(now)
                self._told = now

    def _watch_state(self) -> None:
        while not self._stopping.wait(STATE_EVERY_SECONDS):
            try:
                self.tell_state()
            except (OSError, ValueError):
                return

    # -- requests -------------------------------------------------------------------------------
    def answer(self, call: Call) -> None:
        try:
            if call.method not in CALLS:
                raise BackendError(f"The engine has no call {call.method!r}")
            result = getattr(self.backend, call.method)(*call.args)  # one of CALLS, checked above
        except BaseException as exc:  # noqa: BLE001 - handed to the caller in the server
            self.tell_state()
            self.wire.send(Failure(call.rid, portable(exc)))
        else:
            self.tell_state()
            self.wire.send(Result(call.rid, result))

    def load(self, call: LoadCall) -> None:
        rid, options = call.rid, call.options
        try:
            future = self.backend.load_in_background(options)
        except BaseException as exc:  # noqa: BLE001 - the queue is full, say
            self.wire.send(Failure(rid, portable(exc)))
            return
        self.tell_state()

        def done(f: Future[LoadedInfo]) -> None:
            exc = f.exception() if not f.cancelled() else BackendError("The load was cancelled")
            self.tell_state()  # the backend's own callback ran first: the state is final
            self.wire.send(Failure(rid, portable(exc)) if exc else Result(rid, f.result()))

        future.add_done_callback(done)

    def stream(self, call: StreamCall) -> None:
        cancel = self.cancels[call.rid]
        try:
            for chunk in self.backend.stream(call.request, cancel):
                self.wire.send(ChunkMsg(call.rid, chunk))
            self.wire.send(End(call.rid))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller in the server
            self.wire.send(End(call.rid, portable(exc)))
        finally:
            self.cancels.pop(call.rid, None)


def portable(exc: BaseException) -> BaseException:
    """An exception as it may cross the pipe: builtins and localchat's own as they are, the
    scheduler's Busy as ServerBusy, anything else (torch's, transformers') as one BackendError line."""
    if isinstance(exc, Busy):
        return ServerBusy(f"The model is busy: {exc}")
    module = type(exc).__module__
    if module == "builtins" or module.startswith("localchat."):
        try:
            pickle.loads(pickle.dumps(exc))
            return exc
        except Exception:  # noqa: BLE001 - one that does not survive pickling is described instead
            pass
    return BackendError(f"{type(exc).__name__}: {exc}".splitlines()[0])


def main() -> None:
    """Messages on stdin and stdout, the server's privacy switches and log level, then the model."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # sent to the whole group; the server stops us in order
    wire = Wire(os.fdopen(os.dup(0), "rb"), os.fdopen(os.dup(1), "wb"))
    os.dup2(2, 1)  # a library's stray print must not end up in the messages
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    config = wire.recv()
    if not isinstance(config, Start):
        raise SystemExit(f"the server's first message must be Start, not {type(config).__name__}")
    import localchat  # noqa: F401 - offline/telemetry switches before transformers is imported

    if config.offline:
        from localchat.privacy import go_offline

        go_offline()
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(wire)]  # the server's handlers write them
    root.setLevel(config.log_level)
    from localchat.engine.backend import TransformersBackend

    Engine(wire, TransformersBackend(**config.backend)).run()


if __name__ == "__main__":
    main()
