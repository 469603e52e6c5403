"""A stand-in engine process for EngineProcess's supervision tests: it speaks the pipe protocol of
engine/worker_process.py with no model, so deaths, restarts and shutdowns are quick and exact.

`python fake_engine.py MODE`. MODE `die`: exits before reading anything. MODE `serve`: loads any
model at once, except `crash` (the process kills itself mid-load) and `hang` (never answers);
a reply is one chunk `hi`, except to the message `crash` (killed mid-reply) and `hang` (no
answer). Each start appends a line to DATA_DIR/starts, so tests can count engine processes.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from localchat.engine.pipe import Wire
from localchat.types import Chunk, LoadedInfo


def main() -> None:
    if sys.argv[1] == "die":
        os._exit(3)
    wire = Wire(os.fdopen(os.dup(0), "rb"), os.fdopen(os.dup(1), "wb"))
    os.dup2(2, 1)
    config = wire.recv()
    data = Path(config["backend"]["data_dir"])
    with (data / "starts").open("a") as f:
        f.write(f"{os.getpid()}\n")
    state = {"loaded": None, "asleep": False, "loading": None, "last_load_error": None}
    wire.send(("state", dict(state)))
    while True:
        message = wire.recv()
        kind = message[0]
        if kind == "close":
            return
        if kind == "load":
            rid, options = message[1], message[2]
            if options.model == "crash":
                os.kill(os.getpid(), signal.SIGKILL)
            if options.model == "hang":
                continue
            info = LoadedInfo(options, options.model, "cpu", "float32", "none", 1, 512, 0.0, True)
            state["loaded"] = info
            wire.send(("state", dict(state)))
            wire.send(("result", rid, info))
        elif kind == "stream":
            rid, messages = message[1], message[2]
            last = messages[-1].content
            if last == "crash":
                wire.send(("chunk", rid, Chunk(text="hi")))
                os.kill(os.getpid(), signal.SIGKILL)
            if last == "hang":
                continue
            wire.send(("chunk", rid, Chunk(text="hi")))
            wire.send(("end", rid, None))
        elif kind == "call":
            rid, method = message[1], message[2]
            if method == "activity":
                wire.send(("result", rid, {"generating": 0, "waiting": 0}))


if __name__ == "__main__":
    main()
