"""The engine's half of a member's model allowlist, with tiny random models: the model is checked
when the reply's job starts (after any load queued before it), in process and across the engine
process's pipe, and every finished reply names the model that wrote it (Usage.model).

Why at job start: the core checks the allowlist when a request arrives, but an admin's load may
be queued ahead of it; on the old code the reply then came from a model the member may not use."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from localchat.backend import ModelNotAllowed
from localchat.engine.backend import TransformersBackend
from localchat.engines.process import EngineProcess
from localchat.types import Chunk, GenerationRequest, LoadOptions, Message, SamplingParams

HI = (Message("user", "hi"),)
SHORT = SamplingParams(temperature=0, max_new_tokens=3)


@pytest.fixture(scope="module")
def two_models(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """The tiny model and a copy under another name: two models as the allowlist sees them."""
    other = tmp_path_factory.mktemp("models") / "tiny-other"
    shutil.copytree(tiny_model, other)
    return str(tiny_model), str(other)


def wait_for(condition) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def ask(backend, allowed: tuple[str, ...] | None) -> tuple[list[Chunk], BaseException | None]:
    """The chunks of one reply, and the error it ended with (None if it finished)."""
    chunks: list[Chunk] = []
    try:
        for chunk in backend.stream(GenerationRequest(HI, SHORT, owner="bob", allowed_models=allowed)):
            chunks.append(chunk)
    except ModelNotAllowed as exc:
        return chunks, exc
    return chunks, None


def test_a_reply_queued_behind_a_load_is_checked_against_the_new_model(tmp_path: Path, two_models) -> None:
    allowed, other = two_models
    backend = TransformersBackend(tmp_path)
    try:
        backend.load(LoadOptions(model=allowed, device="cpu"))
        chunks, error = ask(backend, (allowed,))
        assert error is None and chunks[-1].usage.model == allowed  # the model that wrote it

        gate = threading.Event()
        backend.worker.submit(lambda: gate.wait(30))  # hold the worker: what follows waits in its queue
        backend.load_in_background(LoadOptions(model=other, device="cpu"))  # an admin's load, queued first
        outcome: list = []
        reply = threading.Thread(target=lambda: outcome.extend(ask(backend, (allowed,))))
        reply.start()
        wait_for(lambda: backend.worker.waiting() == 2)  # the load, then the reply: both queued
        assert backend.loaded().options.model == allowed  # checked now, the reply would pass
        gate.set()
        reply.join(30)
        chunks, error = outcome
        assert isinstance(error, ModelNotAllowed) and "may not use tiny-other" in str(error)
        assert not [c for c in chunks if c.text]  # nothing was generated
        assert backend.loaded().options.model == other

        chunks, error = ask(backend, None)  # no allowlist: any model
        assert error is None and chunks[-1].usage.model == other and chunks[-1].usage.completion_tokens > 0
    finally:
        backend.close()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, two_models) -> Iterator[EngineProcess]:
    backend = EngineProcess(tmp_path_factory.mktemp("engine-data"))
    backend.load(LoadOptions(model=two_models[0], device="cpu"))
    yield backend
    backend.close()


def test_across_the_pipe_the_engine_process_refuses_a_model_loaded_before_the_job(engine, two_models) -> None:
    allowed, other = two_models
    chunks, error = ask(engine, (allowed,))
    assert error is None and chunks[-1].usage.model == allowed
    load = engine.load_in_background(LoadOptions(model=other, device="cpu"))  # sent before the reply
    chunks, error = ask(engine, (allowed,))
    assert type(error) is ModelNotAllowed and "may not use tiny-other" in str(error)  # itself, not a BackendError
    assert not [c for c in chunks if c.text]
    assert load.result(60).options.model == other
    chunks, error = ask(engine, (allowed, other))
    assert error is None and chunks[-1].usage.model == other
