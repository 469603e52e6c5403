"""The pipe between the server and its engine process: length-prefixed pickles, and the errors
that may cross it.

Invariants: both ends are localchat's own processes, so unpickling trusts what it reads; only
exceptions the server can always unpickle cross (builtins and localchat's own), anything else
becomes one BackendError line; the pipe imports no torch.
"""

from __future__ import annotations

import logging
import pickle
import struct
import threading
from typing import Any

from localchat.backend import BackendError, ServerBusy


class Wire:
    """Messages over a pair of pipes; sends from any thread, one message at a time."""

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

    def put_nowait(self, record: logging.LogRecord) -> None:  # the queue of a QueueHandler
        try:
            self.send(("log", record))
        except (OSError, ValueError):
            pass  # the server is gone; nobody reads the log any more


def portable(exc: BaseException) -> BaseException:
    """An exception as it may cross the pipe: builtins and localchat's own as they are, the
    scheduler's Busy as ServerBusy, anything else (torch's, transformers') as one BackendError line."""
    from localchat.engine.scheduler import Busy

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
