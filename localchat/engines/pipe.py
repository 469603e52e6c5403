"""The pipe between the server and its engine process: the typed messages that cross it, sent as
length-prefixed pickles, and the errors that may cross it.

Invariants: both ends are localchat's own processes, so unpickling trusts what it reads; every
message is one of the frozen dataclasses below (ToEngine one way, FromEngine the other), and each
end dispatches on their type, never on a string tag; only exceptions the server can always
unpickle cross (the engine makes them so: engine/worker_process.portable); the pipe imports no
torch.
"""

from __future__ import annotations

import logging
import pickle
import struct
import threading
from dataclasses import dataclass
from typing import Any, Literal

from localchat.types import Chunk, GenerationRequest, LoadedInfo, LoadOptions

# The backend methods the server may ask of the engine with a Call (anything else is refused).
CallName = Literal["fit", "unload", "hardware", "activity", "embed"]
CALLS: tuple[str, ...] = ("fit", "unload", "hardware", "activity", "embed")


# -- server -> engine ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Start:
    """The first message: the TransformersBackend's arguments and the server's switches."""

    backend: dict[str, Any]
    offline: bool = True
    log_level: int = logging.WARNING


@dataclass(frozen=True)
class StreamCall:
    """Generate one reply; answered by ChunkMsgs and then exactly one End."""

    rid: int
    request: GenerationRequest


@dataclass(frozen=True)
class Call:
    """Call one backend method (see CALLS); answered by a Result or a Failure."""

    rid: int
    method: CallName
    args: tuple = ()


@dataclass(frozen=True)
class LoadCall:
    """Queue a load; answered by a Result (the LoadedInfo) or a Failure when it ends."""

    rid: int
    options: LoadOptions


@dataclass(frozen=True)
class Cancel:
    """Stop the reply `rid` (Stop pressed, client gone); its End still follows."""

    rid: int


@dataclass(frozen=True)
class Expect:
    """A request for a reply has arrived at the server (see InferenceWorker.expect)."""


@dataclass(frozen=True)
class Close:
    """Shut down: replies in flight end at their next step, then the engine process exits."""


# -- engine -> server ---------------------------------------------------------------------------
@dataclass(frozen=True)
class State:
    """What the engine's model admin looks like now; sent whenever it changes, and always before
    the answer that changed it."""

    loaded: LoadedInfo | None = None
    asleep: bool = False
    loading: LoadOptions | None = None
    last_load_error: str | None = None


@dataclass(frozen=True)
class ChunkMsg:
    rid: int
    chunk: Chunk


@dataclass(frozen=True)
class End:
    """The reply `rid` is over: `error` None when it finished (its last chunk carried usage)."""

    rid: int
    error: BaseException | None = None


@dataclass(frozen=True)
class Result:
    rid: int
    value: Any = None


@dataclass(frozen=True)
class Failure:
    rid: int
    error: BaseException


@dataclass(frozen=True)
class LogMsg:
    """A log record of the engine process, for the server's handlers."""

    record: logging.LogRecord


ToEngine = Start | StreamCall | Call | LoadCall | Cancel | Expect | Close
FromEngine = State | ChunkMsg | End | Result | Failure | LogMsg
MESSAGES = (Start, StreamCall, Call, LoadCall, Cancel, Expect, Close, State, ChunkMsg, End, Result, Failure, LogMsg)


class Wire:
    """Messages over a pair of pipes; sends from any thread, one message at a time."""

    HEADER = struct.Struct("!I")

    def __init__(self, reader: Any, writer: Any):
        self.reader, self.writer = reader, writer
        self.lock = threading.Lock()

    def send(self, message: ToEngine | FromEngine) -> None:
        if not isinstance(message, MESSAGES):  # the protocol is these types, never ad hoc tuples
            raise TypeError(f"not a pipe message: {type(message).__name__}")
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        with self.lock:
            self.writer.write(self.HEADER.pack(len(data)) + data)
            self.writer.flush()

    def recv(self) -> ToEngine | FromEngine:
        (size,) = self.HEADER.unpack(self._exactly(self.HEADER.size))
        return pickle.loads(self._exactly(size))

    def _exactly(self, n: int) -> bytes:
        data = self.reader.read(n)
        if data is None or len(data) < n:
            raise EOFError("the other process closed the pipe")
        return data

    def put_nowait(self, record: logging.LogRecord) -> None:  # the queue of a QueueHandler
        try:
            self.send(LogMsg(record))
        except (OSError, ValueError):
            pass  # the server is gone; nobody reads the log any more
