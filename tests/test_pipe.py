"""The engine's seams without a model: the typed pipe messages (engines/pipe.py) cross a real OS pipe
as themselves, errors cross as what the server can catch, and every backend implements every
method the Engine and ModelAdmin protocols declare (so no caller needs getattr)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT

from localchat.backend import Backend, BackendError, Engine, ModelAdmin, ModelNotAllowed, ServerBusy
from localchat.engine.scheduler import Busy
from localchat.engine.worker_process import portable
from localchat.engines import pipe
from localchat.engines.pipe import Wire
from localchat.types import Chunk, GenerationRequest, LoadedInfo, LoadOptions, Message, SamplingParams, Usage

INFO = LoadedInfo(LoadOptions(model="m"), "m", "cpu", "float32", "none", 1, 512, 0.0, True, extra={"a": "b"})
REQUEST = GenerationRequest(
    (Message("system", "Be brief."), Message("user", "hi")),
    SamplingParams(temperature=0.2, stop=("\n",)),
    trim=False,
    owner="ann",
    allowed_models=("m",),
)


@pytest.fixture()
def wire() -> Iterator[Wire]:
    read, write = os.pipe()
    with os.fdopen(read, "rb") as reader, os.fdopen(write, "wb") as writer:
        yield Wire(reader, writer)


@pytest.mark.parametrize(
    "message",
    [
        pipe.Start({"data_dir": Path("/tmp/x"), "max_batch": 4}, offline=True, log_level=logging.INFO),
        pipe.StreamCall(1, REQUEST),
        pipe.Call(2, "fit", (LoadOptions(model="m", device="cpu"),)),
        pipe.LoadCall(3, LoadOptions(model="m", device="cpu")),
        pipe.Cancel(4),
        pipe.Expect(),
        pipe.Close(),
        pipe.State(loaded=INFO, asleep=True, loading=LoadOptions(model="n"), last_load_error="no"),
        pipe.ChunkMsg(5, Chunk(usage=Usage(completion_tokens=3, model="m"))),
        pipe.End(6),
        pipe.Result(7, {"generating": 1, "waiting": 0}),
    ],
    ids=lambda m: type(m).__name__,
)
def test_every_message_crosses_the_pipe_as_itself(wire: Wire, message) -> None:
    wire.send(message)
    assert wire.recv() == message


def test_errors_cross_as_what_the_server_catches(wire: Wire) -> None:
    wire.send(pipe.End(1, portable(ModelNotAllowed("Your account may not use m"))))
    wire.send(pipe.Failure(2, portable(Busy("3 replies are already waiting"))))
    wire.send(pipe.Failure(3, portable(_Foreign("a torch error\nwith a traceback"))))
    refused, busy, foreign = wire.recv(), wire.recv(), wire.recv()
    assert type(refused.error) is ModelNotAllowed and str(refused.error) == "Your account may not use m"
    assert type(busy.error) is ServerBusy and "already waiting" in str(busy.error)
    assert type(foreign.error) is BackendError and str(foreign.error) == "_Foreign: a torch error"


def test_a_log_record_crosses_for_the_servers_handlers(wire: Wire) -> None:
    record = logging.LogRecord("localchat.engine.backend", logging.INFO, __file__, 1, "loaded %s", ("m",), None)
    wire.put_nowait(record)
    received = wire.recv()
    assert isinstance(received, pipe.LogMsg) and received.record.getMessage() == "loaded m"


def test_only_typed_messages_cross(wire: Wire) -> None:
    with pytest.raises(TypeError, match="not a pipe message: tuple"):
        wire.send(("stream", 1, REQUEST))  # the string-tagged tuples this protocol replaced


def _declared(protocol: type) -> set[str]:
    return {name for name in vars(protocol) if not name.startswith("_")}


def test_the_backend_protocol_declares_replies_and_model_admin() -> None:
    assert _declared(Engine) == {"stream", "expect", "embed"}
    assert _declared(ModelAdmin) == {
        "load", "load_in_background", "unload", "loaded", "loading", "asleep", "last_load_error",
        "available_models", "fit", "hardware", "activity", "close",
    }  # fmt: skip
    assert Engine in Backend.__mro__ and ModelAdmin in Backend.__mro__


def test_every_backend_implements_every_declared_method(tmp_path: Path) -> None:
    from fakes import FakeBackend  # the UI tests' stand-in must keep the same contract

    from localchat.engine.backend import TransformersBackend
    from localchat.engines.process import EngineProcess
    from localchat.engines.remote import OpenAIBackend

    backends = [
        FakeBackend("hi", model=None),
        TransformersBackend(tmp_path / "local"),
        EngineProcess(tmp_path, command=[sys.executable, str(ROOT / "tests" / "fake_engine.py"), "serve"]),
        OpenAIBackend("http://127.0.0.1:9"),  # nothing listens there: construction sends nothing
    ]
    try:
        for backend in backends:
            missing = {name for name in _declared(Engine) | _declared(ModelAdmin) if not hasattr(backend, name)}
            assert not missing, f"{type(backend).__name__} lacks {sorted(missing)}"
            assert backend.loading is None and backend.asleep is None and backend.loaded() is None
            assert set(backend.activity()) == {"generating", "waiting"}
            backend.expect()  # a hint: never fails
    finally:
        for backend in backends:
            backend.close()


class _Foreign(Exception):
    """Stands for an exception of a library the server cannot unpickle."""


_Foreign.__module__ = "torch.somewhere"
