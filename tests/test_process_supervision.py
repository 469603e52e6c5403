"""EngineProcess's supervision, with a stand-in engine (tests/fake_engine.py): every request in
flight is answered when the engine dies or the server closes, a dead engine comes back with the
model it had (also when it died loading another), and one that keeps dying is given up in one line."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT

from localchat.backend import ServerBusy
from localchat.engines.process import EngineProcess, EngineStopped
from localchat.types import GenerationRequest, LoadOptions, Message, SamplingParams

WAIT = 20


def fake(tmp_path: Path, mode: str = "serve") -> EngineProcess:
    return EngineProcess(tmp_path, command=[sys.executable, str(ROOT / "tests" / "fake_engine.py"), mode])


@pytest.fixture()
def engine(tmp_path: Path) -> Iterator[EngineProcess]:
    backend = fake(tmp_path)
    yield backend
    backend.close()


def starts(tmp_path: Path) -> int:
    f = tmp_path / "starts"
    return len(f.read_text().split()) if f.exists() else 0


def wait_for(condition) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def ask(backend: EngineProcess, text: str) -> str:
    return "".join(c.text for c in backend.stream(GenerationRequest((Message("user", text),), SamplingParams())))


def test_a_reply_and_a_load_through_the_pipe(engine: EngineProcess, tmp_path: Path) -> None:
    assert engine.loaded() is None
    info = engine.load(LoadOptions(model="good"))
    assert info.name == "good" and engine.loaded() == info  # the state came before the answer
    assert ask(engine, "hello") == "hi" and starts(tmp_path) == 1


def test_a_dying_engine_fails_the_reply_in_flight_and_comes_back_with_its_model(engine, tmp_path) -> None:
    engine.load(LoadOptions(model="good"))
    with pytest.raises(EngineStopped, match=r"signal 9, often the system running out of memory.*loading good again"):
        ask(engine, "crash")
    wait_for(lambda: engine.loaded() is not None)
    assert engine.loaded().name == "good" and starts(tmp_path) == 2
    assert ask(engine, "hello") == "hi"


def test_a_crash_while_loading_another_model_brings_back_the_one_before(engine, tmp_path) -> None:
    engine.load(LoadOptions(model="good"))
    with pytest.raises(EngineStopped, match="while loading crash"):
        engine.load(LoadOptions(model="crash"))
    wait_for(lambda: engine.loaded() is not None)
    assert engine.loaded().name == "good"


def test_an_engine_that_keeps_dying_is_given_up_and_every_call_says_why(tmp_path: Path) -> None:
    backend = fake(tmp_path, "die")
    try:
        wait_for(lambda: backend.last_load_error is not None)
        assert "exit code 3" in backend.last_load_error and "not started again" in backend.last_load_error
        assert backend.loaded() is None and backend.loading is None  # answered here, at once
        with pytest.raises(EngineStopped, match="not started again"):
            ask(backend, "hello")
        with pytest.raises(EngineStopped, match="exit code 3"):  # a load tries a fresh engine once more
            backend.load_in_background(LoadOptions(model="good")).result(WAIT)
        assert backend.activity() == {"generating": 0, "waiting": 0}
    finally:
        backend.close()


def test_close_answers_every_request_in_flight(engine: EngineProcess) -> None:
    engine.load(LoadOptions(model="good"))
    errors: list[BaseException] = []
    reply = threading.Thread(target=lambda: errors.extend(_raised(lambda: ask(engine, "hang"))))
    reply.start()
    load = engine.load_in_background(LoadOptions(model="hang"))
    time.sleep(0.2)  # both are with the engine, which never answers them
    engine.close()
    reply.join(WAIT)
    assert not reply.is_alive() and isinstance(errors[0], ServerBusy)
    with pytest.raises(ServerBusy, match="shutting down"):
        load.result(WAIT)
    assert engine._process.poll() is not None


def test_a_load_cannot_be_cancelled_halfway_and_the_engine_keeps_answering(engine: EngineProcess) -> None:
    load = engine.load_in_background(LoadOptions(model="hang"))
    assert load.cancel() is False  # the engine could not be told; the Future says so
    assert ask(engine, "hello") == "hi"


def _raised(fn) -> list[BaseException]:
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001 - the test looks at it
        return [exc]
    return []
