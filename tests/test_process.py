"""EngineProcess: the model in a process of its own, driven over a pipe, against the real bundled
SmolLM2. Replies, Stop, errors and state cross the pipe; a dying engine fails only what was in
flight, with a clear line, and comes back with the model it had."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT

from localchat.backend import ModelLoadFailed, PromptTooLong
from localchat.engines.process import EngineProcess, EngineStopped
from localchat.types import Chunk, GenerationRequest, LoadOptions, Message, SamplingParams
from localchat.weights.models import SMOLLM2

pytestmark = pytest.mark.model
GREEDY = SamplingParams(temperature=0, repetition_penalty=1.0, max_new_tokens=24)
QUESTION = (Message("user", "What is the capital of France?"),)
STORY = (Message("user", "Write a long story about a lighthouse keeper."),)
WAIT = 120


def wait_for(condition, seconds: float = WAIT) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def engine(session_data_dir: Path, smol_backend) -> Iterator[EngineProcess]:
    """One engine process for this module, sharing the dequantized-model cache of the session."""
    backend = EngineProcess(session_data_dir)
    backend.load(LoadOptions(model=SMOLLM2, device="cpu"))
    yield backend
    backend.close()


def outcome(chunks: list[Chunk]) -> tuple[str, str, int]:
    usage = chunks[-1].usage
    return "".join(c.text for c in chunks), usage.finish_reason, usage.completion_tokens


def test_a_reply_from_the_engine_process_equals_the_in_process_one(engine, smol_backend) -> None:
    assert outcome(list(engine.stream(GenerationRequest(QUESTION, GREEDY)))) == outcome(
        list(smol_backend.stream(GenerationRequest(QUESTION, GREEDY)))
    )
    info = engine.loaded()
    assert info is not None and info.name == smol_backend.loaded().name and info.context_length == 8192
    assert engine.loading is None and engine.asleep is None and engine.last_load_error is None
    assert "fp32" in engine.fit(LoadOptions(model=SMOLLM2, device="cpu"))
    assert any(spec.id == SMOLLM2 for spec in engine.available_models())
    assert engine.hardware().cores == os.cpu_count()  # as the engine process sees the machine


def test_two_streams_at_once_each_equal_their_solo_reply_and_stop_ends_only_its_own(engine) -> None:
    long = SamplingParams(temperature=0, repetition_penalty=1.0, max_new_tokens=400)
    bob_params = SamplingParams(temperature=0, repetition_penalty=1.0, max_new_tokens=48)
    alone = outcome(list(engine.stream(GenerationRequest(STORY, bob_params))))
    stop = threading.Event()
    story = engine.stream(GenerationRequest(STORY, long, owner="ann"), stop)
    story_chunks = [next(c for c in story if c.text)]
    bob: list[Chunk] = []
    other = threading.Thread(
        target=lambda: bob.extend(engine.stream(GenerationRequest(STORY, bob_params, owner="bob")))
    )
    other.start()
    wait_for(lambda: engine.activity()["generating"] == 2)  # both decode in one batch
    stop.set()  # Ann presses Stop
    story_chunks.extend(story)
    other.join(WAIT)
    assert story_chunks[-1].usage.finish_reason == "cancelled" and story_chunks[-1].usage.completion_tokens < 400
    assert outcome(bob) == alone
    wait_for(lambda: engine.activity() == {"generating": 0, "waiting": 0})


def test_closing_a_stream_ends_its_generation(engine) -> None:
    stream = engine.stream(GenerationRequest(STORY, SamplingParams(temperature=0, max_new_tokens=4000)))
    next(c for c in stream if c.text)
    stream.close()  # a dropped connection
    wait_for(lambda: engine.activity()["generating"] == 0, 10)  # 4,000 tokens would take minutes


def test_errors_cross_the_pipe_as_themselves(engine) -> None:
    before = engine.loaded()
    with pytest.raises(ModelLoadFailed, match="not found"):
        engine.load(LoadOptions(model="/nowhere/model.gguf", device="cpu"))
    assert engine.loaded() == before and "not found" in engine.last_load_error
    huge = [Message("user", "word " * 9000)]
    with pytest.raises(PromptTooLong, match="context window"):
        list(engine.stream(GenerationRequest(tuple(huge), GREEDY, trim=False)))
    assert outcome(list(engine.stream(GenerationRequest(QUESTION, GREEDY))))[2] > 0  # still answering


def test_an_embed_crosses_the_pipe_beside_a_reply_and_equals_the_in_process_one(engine, smol_backend) -> None:
    texts = ["How do I clean the washing machine filter?", "School starts on 3 September.", ""]
    stream = engine.stream(GenerationRequest(STORY, GREEDY))
    chunks = [next(c for c in stream if c.text)]  # a reply is being written in the engine
    vectors = engine.embed(texts)  # the engine answers it on a thread of its own, beside the reply
    chunks.extend(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 1
    for got, want in zip(vectors, smol_backend.embed(texts), strict=True):
        assert len(got) == 384 and max(abs(a - b) for a, b in zip(got, want, strict=True)) < 1e-5


def test_the_engine_logs_through_the_servers_logging(session_data_dir: Path, caplog) -> None:
    with caplog.at_level(logging.INFO):
        backend = EngineProcess(session_data_dir)
        try:
            backend.load(LoadOptions(model=SMOLLM2, device="cpu"))
        finally:
            backend.close()
    loaded = [r for r in caplog.records if r.name == "localchat.engine.backend" and "loaded SmolLM2" in r.getMessage()]
    assert loaded and loaded[0].process != os.getpid()  # written here, recorded in the engine process


def test_a_dying_engine_fails_the_reply_in_flight_and_comes_back_with_its_model(session_data_dir: Path) -> None:
    backend = EngineProcess(session_data_dir)
    try:
        backend.load(LoadOptions(model=SMOLLM2, device="cpu"))
        first = backend._process
        stream = backend.stream(GenerationRequest(STORY, SamplingParams(temperature=0, max_new_tokens=400)))
        next(c for c in stream if c.text)
        os.kill(first.pid, signal.SIGKILL)  # as the kernel's out-of-memory killer would
        with pytest.raises(EngineStopped, match="signal 9.*out of memory.*started again"):
            list(stream)
        wait_for(lambda: backend.loaded() is not None)  # a new engine, loading the same model by itself
        assert backend._process.pid != first.pid and first.poll() is not None
        assert outcome(list(backend.stream(GenerationRequest(QUESTION, GREEDY))))[2] > 0
    finally:
        backend.close()
    assert backend._process.poll() is not None  # closing stops the engine process


def test_the_server_side_imports_no_torch() -> None:
    code = "import sys, localchat.server, localchat.engines.process; print('torch' in sys.modules)"  # noqa: E501
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"
