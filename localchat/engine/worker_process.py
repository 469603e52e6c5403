"""The engine process (`python -m localchat.engine.worker_process`): a TransformersBackend that
takes its requests from the server over stdin and answers over stdout (engine/pipe.py).

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
import signal
import threading
from concurrent.futures import Future
from typing import Any

from localchat.backend import BackendError
from localchat.engine.pipe import Wire, portable
from localchat.types import LoadOptions, Message, SamplingParams

STATE_EVERY_SECONDS = 0.5  # how often changes the server did not cause (an idle unload) are looked for
CALLS = ("fit", "count_tokens", "unload", "hardware", "activity")


class Engine:
    """Takes messages from the server and answers them."""

    def __init__(self, wire: Wire, backend: Any):
        self.wire, self.backend = wire, backend
        self.cancels: dict[int, threading.Event] = {}
        self._told: dict[str, Any] | None = None  # the state the server has
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
            elif kind == "load":  # queued at once, so the state sent next says it is loading
                self.load(*message[1:])
            elif kind == "expect":
                self.backend.expect()
            else:  # "call": may wait for the worker (counting tokens, unloading, estimating)
                threading.Thread(target=self.answer, args=message[1:], daemon=True).start()
        self._stopping.set()
        for event in list(self.cancels.values()):
            event.set()  # replies in flight end at their next step, so closing does not wait for them
        self.backend.close()

    # -- state ----------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        b = self.backend
        return {
            "loaded": b.loaded(),
            "asleep": b.asleep is not None,
            "loading": b.loading,
            "last_load_error": b.last_load_error,
        }

    def tell_state(self) -> None:
        """Send the state if it changed since the server last heard it."""
        with self._state_lock:
            now = self.state()
            if now != self._told:
                self.wire.send(("state", now))
                self._told = now

    def _watch_state(self) -> None:
        while not self._stopping.wait(STATE_EVERY_SECONDS):
            try:
                self.tell_state()
            except (OSError, ValueError):
                return

    # -- requests -------------------------------------------------------------------------------
    def answer(self, rid: int, method: str, args: tuple) -> None:
        try:
            if method not in CALLS:
                raise BackendError(f"The engine has no call {method!r}")
            result = getattr(self.backend, method)(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller in the server
            self.tell_state()
            self.wire.send(("error", rid, portable(exc)))
        else:
            self.tell_state()
            self.wire.send(("result", rid, result))

    def load(self, rid: int, options: LoadOptions) -> None:
        try:
            future = self.backend.load_in_background(options)
        except BaseException as exc:  # noqa: BLE001 - the queue is full, say
            self.wire.send(("error", rid, portable(exc)))
            return
        self.tell_state()

        def done(f: Future) -> None:
            exc = f.exception() if not f.cancelled() else BackendError("The load was cancelled")
            self.tell_state()  # the backend's own callback ran first: the state is final
            self.wire.send(("error", rid, portable(exc)) if exc else ("result", rid, f.result()))

        future.add_done_callback(done)

    def stream(self, rid: int, messages: list[Message], params: SamplingParams, options: dict[str, Any]) -> None:
        cancel = self.cancels[rid]
        try:
            for chunk in self.backend.stream(messages, params, cancel, **options):
                self.wire.send(("chunk", rid, chunk))
            self.wire.send(("end", rid, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller in the server
            self.wire.send(("end", rid, portable(exc)))
        finally:
            self.cancels.pop(rid, None)


def main() -> None:
    """Messages on stdin and stdout, the server's privacy switches and log level, then the model."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # sent to the whole group; the server stops us in order
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

    Engine(wire, TransformersBackend(**config["backend"])).run()


if __name__ == "__main__":
    main()
