"""The real bundled models (SmolLM2-135M-Instruct GGUF, Gemma 3 270M base GGUF) end to end."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from localchat.backend import ModelLoadFailed
from localchat.core import ChatService
from localchat.engine.backend import TransformersBackend
from localchat.store import Member
from localchat.types import GenerationRequest, LoadOptions, Message, SamplingParams
from localchat.weights.models import GEMMA3, SMOLLM2

pytestmark = pytest.mark.model
GREEDY = SamplingParams(temperature=0, repetition_penalty=1.0, max_new_tokens=40)
FRANCE = (Message("user", "What is the capital of France?"),)


def answer(backend, messages=FRANCE, params=GREEDY) -> tuple[str, object]:
    chunks = list(backend.stream(GenerationRequest(tuple(messages), params)))
    return "".join(c.text for c in chunks), chunks[-1].usage


def test_greedy_answers_a_factual_question_with_full_stats(smol_backend):
    text, usage = answer(smol_backend)
    assert "Paris" in text
    assert usage.prompt_tokens > 10 and 0 < usage.completion_tokens <= 40
    assert usage.finish_reason == "stop"  # the model ended its turn itself
    assert usage.time_to_first_token > 0 and usage.tokens_per_second > 1
    info = smol_backend.loaded()
    assert info.context_length == 8192 and info.memory_bytes > 100 * 2**20 and info.has_chat_template


def test_gguf_is_dequantized_once_into_the_cache(smol_backend, session_data_dir: Path):
    cached = list((session_data_dir / "cache" / "gguf-dequantized").glob("SmolLM2-*/config.json"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    backend = TransformersBackend(session_data_dir)
    try:
        backend.load(LoadOptions(model=SMOLLM2, device="cpu"))
        assert "Paris" in answer(backend)[0]
    finally:
        backend.close()
    assert cached[0].stat().st_mtime_ns == stamp  # reused, not written again


def test_gguf_reads_with_plain_arrays_see_the_same_file():
    import gguf.gguf_reader as reader
    import numpy as np

    from localchat.engine.loading import gguf_reads
    from localchat.weights.models import smollm2_path

    path = smollm2_path()
    stock = reader.GGUFReader(path)
    with gguf_reads(path.name):
        fast = reader.GGUFReader(path)
    assert reader.np is np  # put back
    assert type(stock.data) is np.memmap and type(fast.data) is np.ndarray
    assert list(stock.fields) == list(fast.fields)
    for name, field in stock.fields.items():
        other = fast.fields[name]
        assert field.types == other.types and field.data == other.data, name
        assert all(np.array_equal(a, b) for a, b in zip(field.parts, other.parts, strict=True)), name
    assert [t.name for t in stock.tensors] == [t.name for t in fast.tensors]
    assert all(np.array_equal(a.data, b.data) for a, b in zip(stock.tensors, fast.tensors, strict=True))


@pytest.mark.parametrize("quant", ["8bit", "4bit"])
def test_bitsandbytes_quantized_load_on_cpu_produces_text(smol_backend, session_data_dir: Path, quant: str, caplog):
    backend = TransformersBackend(session_data_dir)
    try:
        info = backend.load(LoadOptions(model=SMOLLM2, device="cpu", quantization=quant))
        assert info.quantization == quant
        assert info.memory_bytes < smol_backend.loaded().memory_bytes * 0.6
        with caplog.at_level(logging.WARNING):
            text, usage = answer(backend)
        assert usage.completion_tokens > 0 and len(text.split()) >= 2
        assert not [r for r in caplog.records if "MatMul8bitLt" in r.getMessage()]  # silenced: ~16% of decode
    finally:
        backend.close()


def test_stop_ends_a_stream_early(smol_backend):
    cancel = threading.Event()
    story = [Message("user", "Write a long story about a dragon who learns to bake bread.")]
    chunks = []
    for chunk in smol_backend.stream(
        GenerationRequest(tuple(story), SamplingParams(temperature=0, max_new_tokens=400)), cancel
    ):
        chunks.append(chunk)
        if sum(1 for c in chunks if c.text) == 5:
            cancel.set()
    usage = chunks[-1].usage
    assert usage.finish_reason == "cancelled" and usage.completion_tokens < 20


def test_stop_strings_cut_the_reply(smol_backend):
    full, _ = answer(smol_backend)
    stop = "Paris"
    text, usage = answer(smol_backend, params=GREEDY.with_(stop=(stop,)))
    assert usage.finish_reason == "stop"
    assert text == full[: full.index(stop)].lstrip() and stop not in text


def test_a_conversation_longer_than_the_window_is_trimmed_and_answered(session_data_dir: Path, smol_backend):
    backend = TransformersBackend(session_data_dir)
    try:
        backend.load(LoadOptions(model=SMOLLM2, device="cpu", context_length=256))
        history = []
        for i in range(12):
            history += [
                Message("user", f"Tell me fact number {i} about the ocean."),
                Message("assistant", f"Fact {i}: the ocean is deep, wide and full of life. " * 2),
            ]
        service = ChatService(backend)
        me = Member(id=1, name="Me", role="admin")
        updates = list(service.reply(me, [*history, *FRANCE], "You are a helpful assistant.", GREEDY))
        final = updates[-1]
        assert final.error is None and "Paris" in final.text
        assert "oldest messages were left out" in final.notice
        assert final.usage.prompt_tokens <= 256 - 40
    finally:
        backend.close()


def test_a_corrupt_model_file_keeps_the_old_model(smol_backend, tmp_path: Path):
    bad = tmp_path / "corrupt.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 4096)
    with pytest.raises(ModelLoadFailed, match="corrupt.gguf") as err:
        smol_backend.load(LoadOptions(model=str(bad), device="cpu"))
    assert "\n" not in str(err.value)
    assert smol_backend.loaded().name.startswith("SmolLM2")
    assert "Paris" in answer(smol_backend)[0]


def test_a_base_model_without_chat_template_still_chats(session_data_dir: Path):
    backend = TransformersBackend(session_data_dir)
    try:
        info = backend.load(LoadOptions(model=GEMMA3, device="cpu"))
        assert not info.has_chat_template
        assert (session_data_dir / "bundled" / "gemma-3-270m-q4_k_m.gguf").exists()  # inside the data dir
        text, usage = answer(backend)
        assert "Paris" in text
        assert "User:" not in text and not text.startswith(" ")
        assert usage.finish_reason == "stop"
    finally:
        backend.close()
