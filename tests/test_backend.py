"""TransformersBackend on a tiny real model: one inference thread, per-request cancel, queueing."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from localchat.backend import ModelLoadFailed, NoModelLoaded, ServerBusy
from localchat.engine.backend import TransformersBackend
from localchat.types import GenerationRequest, LoadOptions, Message, SamplingParams

HI = (Message("user", "hi"),)


def test_every_torch_op_runs_on_the_worker_thread(tiny_backend):
    threads: set[int] = set()
    model = tiny_backend._current.model
    hook = model.register_forward_pre_hook(lambda *_: threads.add(threading.get_ident()))
    try:
        results: list[int] = []

        def ask() -> None:
            chunks = list(tiny_backend.stream(GenerationRequest(HI, SamplingParams(temperature=0, max_new_tokens=8))))
            results.append(chunks[-1].usage.completion_tokens)

        callers = [threading.Thread(target=ask) for _ in range(3)]
        for t in callers:
            t.start()
        for t in callers:
            t.join(60)
    finally:
        hook.remove()
    assert results == [8, 8, 8]
    assert threads == {tiny_backend.worker._thread.ident}


def test_closing_one_stream_cancels_only_that_reply(tiny_backend):
    long = SamplingParams(temperature=0, max_new_tokens=400)
    first = tiny_backend.stream(GenerationRequest(HI, long))
    next(first)  # the first reply is generating
    second_chunks: list = []
    second_done = threading.Event()

    def second() -> None:
        second_chunks.extend(
            tiny_backend.stream(GenerationRequest(HI, SamplingParams(temperature=0, max_new_tokens=20)))
        )
        second_done.set()

    t = threading.Thread(target=second)
    t.start()
    first.close()  # the user pressed Stop (or the connection dropped)
    t.join(60)
    assert second_done.is_set()
    assert second_chunks[-1].usage.finish_reason == "length"
    assert second_chunks[-1].usage.completion_tokens == 20


def test_cancel_event_stops_the_reply_early(tiny_backend):
    cancel = threading.Event()
    chunks = []
    for chunk in tiny_backend.stream(GenerationRequest(HI, SamplingParams(temperature=0, max_new_tokens=400)), cancel):
        chunks.append(chunk)
        if chunk.text:
            cancel.set()
    usage = chunks[-1].usage
    assert usage.finish_reason == "cancelled" and usage.completion_tokens < 50


def test_waiting_requests_see_their_queue_position(tiny_backend):
    gate = threading.Event()
    tiny_backend.worker.submit(lambda: gate.wait(30))  # the model is busy with someone else
    try:
        stream = tiny_backend.stream(GenerationRequest(HI, SamplingParams(temperature=0, max_new_tokens=3)))
        first = next(stream)
        assert first.queue_position == 1
    finally:
        gate.set()
    rest = list(stream)
    assert rest[-1].usage.completion_tokens == 3 and rest[-1].usage.queue_seconds > 0


def test_a_member_with_many_requests_waits_its_turn(tiny_backend):
    gate = threading.Event()
    tiny_backend.worker.submit(lambda: gate.wait(30))
    params = SamplingParams(temperature=0, max_new_tokens=2)
    try:
        anns = [tiny_backend.stream(GenerationRequest(HI, params, owner="ann")) for _ in range(3)]
        ann_positions = [next(s).queue_position for s in anns]
        bob = tiny_backend.stream(GenerationRequest(HI, params, owner="bob"))
        assert ann_positions == [1, 2, 3] and next(bob).queue_position == 2  # after Ann's first only
    finally:
        gate.set()
    for stream in [*anns, bob]:
        assert list(stream)[-1].usage.completion_tokens == 2


def test_busy_when_too_many_are_waiting(tmp_path: Path, tiny_model: Path):
    backend = TransformersBackend(tmp_path, max_waiting=1)
    try:
        backend.load(LoadOptions(model=str(tiny_model), device="cpu"))
        gate, started = threading.Event(), threading.Event()
        backend.worker.submit(lambda: (started.set(), gate.wait(30)))
        assert started.wait(10)
        waiting = backend.stream(GenerationRequest(HI, SamplingParams(max_new_tokens=2)))
        next(waiting)  # queued: position chunk
        with pytest.raises(ServerBusy, match="busy"):
            next(backend.stream(GenerationRequest(HI, SamplingParams(max_new_tokens=2))))
        gate.set()
        assert list(waiting)[-1].usage is not None
    finally:
        backend.close()


def test_no_model_loaded_is_a_clear_error(tmp_path: Path):
    backend = TransformersBackend(tmp_path)
    try:
        with pytest.raises(NoModelLoaded, match="No model is loaded"):
            list(backend.stream(GenerationRequest(HI, SamplingParams())))
    finally:
        backend.close()


def test_a_reply_sent_during_a_load_waits_for_the_new_model(tmp_path: Path, tiny_model: Path, tiny_base_model: Path):
    backend = TransformersBackend(tmp_path)
    try:
        backend.load_in_background(LoadOptions(model=str(tiny_model), device="cpu"))
        chunks = list(backend.stream(GenerationRequest(HI, SamplingParams(temperature=0, max_new_tokens=4))))
        assert chunks[-1].usage.completion_tokens == 4
        assert backend.loaded().name == "tiny-llama" and backend.loading is None
        info = backend.load(LoadOptions(model=str(tiny_base_model), device="cpu"))
        assert info.name == "tiny-base" and not info.has_chat_template
    finally:
        backend.close()


def test_discovers_models_in_the_models_folder(tmp_path: Path, tiny_model: Path):
    import shutil

    models = tmp_path / "models"
    shutil.copytree(tiny_model, models / "my-tiny")
    (models / "other.gguf").write_bytes(b"GGUF")
    (models / "notes").mkdir()
    backend = TransformersBackend(tmp_path, models_dir=models)
    try:
        found = {(m.name, m.source) for m in backend.available_models()}
    finally:
        backend.close()
    assert ("my-tiny", "folder") in found and ("other", "gguf") in found
    assert not any(name == "notes" for name, _ in found)


def test_stop_while_waiting_leaves_the_queue_at_once(tiny_backend):
    gate, started = threading.Event(), threading.Event()
    tiny_backend.worker.submit(lambda: (started.set(), gate.wait(30)))  # someone else's long reply
    assert started.wait(10)
    cancel = threading.Event()
    stream = tiny_backend.stream(GenerationRequest(HI, SamplingParams(max_new_tokens=5)), cancel)
    try:
        assert next(stream).queue_position == 1
        cancel.set()  # the waiting user presses Stop
        rest = list(stream)  # must end now, not when the reply ahead finishes
        assert rest[-1].usage.finish_reason == "cancelled"
        assert tiny_backend.worker.waiting() == 0 and not gate.is_set()
    finally:
        gate.set()


def test_idle_unload_and_a_reload_that_fails_says_why(tmp_path: Path, tiny_model: Path):
    import shutil
    import time

    copy = shutil.copytree(tiny_model, tmp_path / "tiny-copy")
    backend = TransformersBackend(tmp_path / "data", idle_unload=0.3)
    try:
        backend.load(LoadOptions(model=str(copy), device="cpu"))
        deadline = time.monotonic() + 20
        while backend.asleep is None:
            assert time.monotonic() < deadline, "the idle model was not unloaded"
            time.sleep(0.05)
        assert backend.loaded() is backend.asleep  # still named in the status line
        assert (
            list(backend.stream(GenerationRequest(HI, SamplingParams(temperature=0, max_new_tokens=2))))[
                -1
            ].usage.completion_tokens
            == 2
        )
        while backend.asleep is None:
            assert time.monotonic() < deadline + 20
            time.sleep(0.05)
        shutil.rmtree(copy)  # the files went away while it slept
        with pytest.raises(ModelLoadFailed):
            list(backend.stream(GenerationRequest(HI, SamplingParams(max_new_tokens=2))))
        assert backend.asleep is None and backend.last_load_error and backend.loading is None
    finally:
        backend.close()


def test_switching_models_while_someone_is_generating_lets_that_reply_finish(
    tmp_path: Path, tiny_model: Path, tiny_base_model: Path
):
    backend = TransformersBackend(tmp_path)
    try:
        backend.load(LoadOptions(model=str(tiny_model), device="cpu"))
        params = SamplingParams(temperature=0, repetition_penalty=1.0, max_new_tokens=40)
        solo = "".join(c.text for c in backend.stream(GenerationRequest(HI, params)))
        stream = backend.stream(GenerationRequest(HI, params))
        first = next(c for c in stream if c.text)  # generating now
        switched = threading.Thread(target=lambda: backend.load(LoadOptions(model=str(tiny_base_model), device="cpu")))
        switched.start()
        rest = list(stream)
        switched.join(60)
        assert first.text + "".join(c.text for c in rest) == solo  # the same reply, not a mix of two models
        assert rest[-1].usage.completion_tokens == 40
        assert backend.loaded().options.model == str(tiny_base_model)
    finally:
        backend.close()


def test_a_prompt_that_fails_to_be_read_ends_only_its_own_reply(tiny_backend, monkeypatch):
    params = SamplingParams(temperature=0, repetition_penalty=1.0, max_new_tokens=300)
    first = tiny_backend.stream(GenerationRequest(HI, params, owner="ann"))
    next(c for c in first if c.text)  # decoding
    batch = tiny_backend._batch

    def out_of_memory(group):
        raise RuntimeError("out of memory while reading the prompt")

    monkeypatch.setattr(batch, "_read_prompts", out_of_memory)
    with pytest.raises(RuntimeError, match="out of memory"):
        list(tiny_backend.stream(GenerationRequest(HI, SamplingParams(max_new_tokens=5), owner="bob")))
    monkeypatch.undo()
    rest = list(first)
    assert rest[-1].usage.completion_tokens == 300  # Ann's reply went on to its end
    assert tiny_backend.activity()["generating"] == 0


def test_idle_time_counts_from_the_end_of_the_last_reply(tiny_backend):
    list(tiny_backend.stream(GenerationRequest(HI, SamplingParams(max_new_tokens=60))))
    ended = time.monotonic()
    assert tiny_backend._last_used >= ended - 0.5


def test_a_load_that_fails_late_keeps_the_previous_model(tiny_backend, tiny_base_model, monkeypatch):
    from localchat.engine import backend as backend_module

    before = tiny_backend.loaded()

    def broken(*args, **kwargs):
        raise RuntimeError("cannot build the batch")

    monkeypatch.setattr(backend_module, "Batch", broken)
    with pytest.raises(ModelLoadFailed):
        tiny_backend.load(LoadOptions(model=str(tiny_base_model), device="cpu"))
    monkeypatch.undo()
    assert tiny_backend.loaded() is before
    assert (
        list(tiny_backend.stream(GenerationRequest(HI, SamplingParams(max_new_tokens=3))))[-1].usage.completion_tokens
        == 3
    )


def test_a_reply_queued_behind_a_load_is_told_it_waits(tiny_backend, tiny_model):
    params = SamplingParams(temperature=0, repetition_penalty=1.0, max_new_tokens=300)
    first = tiny_backend.stream(GenerationRequest(HI, params, owner="ann"))
    next(c for c in first if c.text)
    load = tiny_backend.load_in_background(LoadOptions(model=str(tiny_model), device="cpu"))
    later = tiny_backend.stream(GenerationRequest(HI, SamplingParams(max_new_tokens=3), owner="bob"))
    assert next(later).queue_position == 2  # the load, then Bob (after Ann's reply has ended)
    list(first)
    load.result(60)
    assert list(later)[-1].usage.completion_tokens == 3
