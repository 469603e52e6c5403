"""A stand-in engine process for EngineProcess's supervision tests: it speaks the pipe protocol of
engine/worker_process.py (the typed messages of engines/pipe.py) with no model, so deaths, restarts
and shutdowns are quick and exact.

`python fake_engine.py MODE`. MODE `die`: exits before reading anything. MODE `serve`: loads any
model at once, except `crash` (the process kills itself mid-load) and `hang` (never answers);
a reply is one chunk `hi` and a usage chunk naming the model, except to the message `crash`
(killed mid-reply) and `hang` (no answer); a request whose allowed models leave out the loaded
one ends with ModelNotAllowed; an embed is answered with fakes.fake_embedding's vectors. Each
start appends a line to DATA_DIR/starts, so tests can count engine processes.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from fakes import fake_embedding

from localchat.backend import ModelNotAllowed
from localchat.engines.pipe import Call, ChunkMsg, Close, End, LoadCall, Result, Start, State, StreamCall, Wire
from localchat.types import Chunk, LoadedInfo, Usage


def main() -> None:
    if sys.argv[1] == "die":
        os._exit(3)
    wire = Wire(os.fdopen(os.dup(0), "rb"), os.fdopen(os.dup(1), "wb"))
    os.dup2(2, 1)
    config = wire.recv()
    assert isinstance(config, Start)
    data = Path(config.backend["data_dir"])
    with (data / "starts").open("a") as f:
        f.write(f"{os.getpid()}\n")
    state = State()
    wire.send(state)
    while True:
        message = wire.recv()
        match message:
            case Close():
                return
            case LoadCall(rid, options):
                if options.model == "crash":
                    os.kill(os.getpid(), signal.SIGKILL)
                if options.model == "hang":
                    continue
                info = LoadedInfo(options, options.model, "cpu", "float32", "none", 1, 512, 0.0, True)
                state = State(loaded=info)
                wire.send(state)
                wire.send(Result(rid, info))
            case StreamCall(rid, request):
                last = request.messages[-1].content
                if last == "crash":
                    wire.send(ChunkMsg(rid, Chunk(text="hi")))
                    os.kill(os.getpid(), signal.SIGKILL)
                if last == "hang":
                    continue
                model = state.loaded.options.model if state.loaded else ""
                if request.allowed_models is not None and model not in request.allowed_models:
                    wire.send(End(rid, ModelNotAllowed(f"Your account may not use {model}")))
                    continue
                wire.send(ChunkMsg(rid, Chunk(text="hi")))
                wire.send(ChunkMsg(rid, Chunk(usage=Usage(completion_tokens=1, model=model))))
                wire.send(End(rid))
            case Call(rid, "activity"):
                wire.send(Result(rid, {"generating": 0, "waiting": 0}))
            case Call(rid, "embed", (texts,)):
                wire.send(Result(rid, [fake_embedding(t) for t in texts]))


if __name__ == "__main__":
    main()
