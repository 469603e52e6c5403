"""Batching on the real bundled SmolLM2: replies that run at the same time share forward passes,
and each stays exactly its own (greedy text equal to the same reply alone)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from localchat.engine.batch import Batch, Reply, batchable, stream_reply
from localchat.engine.generate import prompt_ids
from localchat.types import Chunk, GenerationRequest, LoadOptions, Message, SamplingParams

GREEDY = SamplingParams(temperature=0, repetition_penalty=1.0, max_new_tokens=40)
SHORT = (Message("user", "What is the capital of France?"),)
LONG = (
    Message("system", "You are a patient teacher who explains things step by step to a curious child."),
    Message("user", "Why do leaves change colour in autumn? Please explain it simply, in a few sentences."),
)


@pytest.fixture()
def rows_per_step(smol_backend) -> Iterator[list[int]]:
    """How many replies each forward pass of the model carried (prompts through the model's forward,
    decode steps through engine.decoder: both look up their tokens in the input embeddings)."""
    rows: list[int] = []
    embeddings = smol_backend._current.model.get_input_embeddings()
    hook = embeddings.register_forward_pre_hook(lambda _m, args: rows.append(args[0].shape[0]))
    yield rows
    hook.remove()


def text(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks)


def outcome(chunks: list[Chunk]) -> tuple[str, str, int]:
    usage = chunks[-1].usage
    return text(chunks), usage.finish_reason, usage.completion_tokens


def solo(backend, messages: list[Message], params: SamplingParams = GREEDY) -> list[Chunk]:
    return list(backend.stream(GenerationRequest(tuple(messages), params)))


def together(backend, first: list[Message], second: list[Message], params: SamplingParams = GREEDY):
    """Start `first`, and `second` once `first` has its first words: both then decode together."""
    a = backend.stream(GenerationRequest(tuple(first), params, owner="ann"))
    a_chunks = [next(c for c in a if c.text)]
    b_chunks: list[Chunk] = []
    b = threading.Thread(
        target=lambda: b_chunks.extend(backend.stream(GenerationRequest(tuple(second), params, owner="bob")))
    )
    b.start()
    a_chunks.extend(a)
    b.join(120)
    return a_chunks, b_chunks


@pytest.mark.parametrize("order", ["short first", "long first"])
def test_two_concurrent_streams_each_equal_their_solo_greedy_reply(smol_backend, rows_per_step, order):
    alone_short, alone_long = outcome(solo(smol_backend, SHORT)), outcome(solo(smol_backend, LONG))
    smol_backend.prefix.clear()  # both read their whole prompt again, joining the batch mid-reply
    rows_per_step.clear()
    if order == "short first":
        short, long = together(smol_backend, SHORT, LONG)
    else:
        long, short = together(smol_backend, LONG, SHORT)
    assert max(rows_per_step) == 2  # they really shared forward passes
    assert outcome(short) == alone_short and outcome(long) == alone_long
    assert "Paris" in alone_short[0] and alone_long[1:] == ("length", 40)


def test_stop_on_one_reply_leaves_the_other_complete(smol_backend, rows_per_step):
    alone = solo(smol_backend, LONG)
    a = smol_backend.stream(GenerationRequest(SHORT, SamplingParams(temperature=0, max_new_tokens=200), owner="ann"))
    next(c for c in a if c.text)
    b_chunks: list[Chunk] = []
    b = threading.Thread(
        target=lambda: b_chunks.extend(smol_backend.stream(GenerationRequest(LONG, GREEDY, owner="bob")))
    )
    b.start()
    while max(rows_per_step, default=0) < 2:  # wait until both decode in one batch, then Stop Ann's
        next(a)
    a.close()
    b.join(120)
    assert text(b_chunks) == text(alone) and b_chunks[-1].usage.completion_tokens == 40
    assert smol_backend.activity()["generating"] == 0


def test_the_engine_equals_transformers_generate(smol_backend):
    current = smol_backend._current
    ids = prompt_ids(current.tokenizer, LONG)
    with torch.inference_mode():
        out = current.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                     do_sample=False, max_new_tokens=40)  # fmt: skip
    reference = out[0, len(ids) :].tolist()
    decoded = smol_backend.worker.call(
        lambda: stream_reply(current.model, current.tokenizer, ids, GREEDY, 2048, threading.Event(), lambda _: None)
    )
    assert list(decoded.tokens) == reference


def test_a_seeded_sampled_reply_is_the_same_alone_and_in_company(smol_backend):
    seeded = SamplingParams(temperature=0.9, top_p=0.95, top_k=40, max_new_tokens=30, seed=1234)
    alone = text(solo(smol_backend, LONG, seeded))
    smol_backend.prefix.clear()
    company, _ = together(smol_backend, LONG, SHORT, seeded)
    assert text(company) == alone  # its own random generator: the neighbour draws from another


def test_many_replies_join_and_leave_a_batch_in_any_order(smol_backend):
    """Replies of different lengths join at different steps; each ends exactly as it would alone."""
    current = smol_backend._current
    prompts = [SHORT, LONG, [Message("user", "Name three red fruits.")], [Message("user", "Count to five.")]]
    lengths = [5, 30, 12, 20]
    ids = [prompt_ids(current.tokenizer, p) for p in prompts]

    def run() -> tuple[list[list[int]], list[list[int]], int]:
        alone = []
        for i, n in zip(ids, lengths, strict=True):
            params = SamplingParams(temperature=0, repetition_penalty=1.0, max_new_tokens=n)
            alone.append(
                list(stream_reply(current.model, current.tokenizer, i, params, 2048, threading.Event(), id).tokens)
            )
        results: dict[int, list[int]] = {}
        batch = Batch(current.model, current.tokenizer, 2048, max_size=3)
        waiting, step, widest = list(range(4)), 0, 0
        while waiting or len(batch):
            if waiting and batch.room() and step % 2 == 0:
                k = waiting.pop(0)
                params = SamplingParams(temperature=0, repetition_penalty=1.0, max_new_tokens=lengths[k])
                done = lambda d, e, k=k: results.__setitem__(k, list(d.tokens))  # noqa: E731
                batch.add(Reply(ids[k], params, threading.Event(), id, done))
            widest = max(widest, len(batch))
            if len(batch):
                batch.step()
            step += 1
        return alone, [results[k] for k in range(4)], widest

    alone, batched, widest = smol_backend.worker.call(run)
    assert widest == 3 and batched == alone


def test_quantized_half_precision_and_sliding_window_models_decode_one_at_a_time(tmp_path: Path, tiny_model: Path):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from localchat.engine.loading import load_model

    four_bit = load_model(LoadOptions(model=str(tiny_model), device="cpu", quantization="4bit"), tmp_path)
    assert not batchable(four_bit.model)
    assert Batch(four_bit.model, four_bit.tokenizer, 512, max_size=8).room() == 1
    plain = load_model(LoadOptions(model=str(tiny_model), device="cpu", quantization="none"), tmp_path)
    assert batchable(plain.model)
    half = load_model(LoadOptions(model=str(tiny_model), device="cpu", dtype="bfloat16", quantization="none"), tmp_path)
    assert not batchable(half.model)
    config = Gemma3TextConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=8)  # fmt: skip
    assert not batchable(Gemma3ForCausalLM(config))


def test_prompts_that_arrive_together_are_read_in_one_pass_and_each_reply_is_its_own(smol_backend, rows_per_step):
    """Three prompts read in one forward pass: one continues a chat (most of it cached), one starts a
    chat with a cached system prompt, one shares nothing; padding sits before and between."""
    system = Message("system", "You are a cheerful assistant who answers in full sentences.")
    turn1 = [system, Message("user", "What is the largest ocean on Earth?")]
    params = SamplingParams(temperature=0, repetition_penalty=1.0, max_new_tokens=24)

    def cold(messages: list[Message]) -> tuple[str, str, int]:
        smol_backend.prefix.clear()
        return outcome(list(smol_backend.stream(GenerationRequest(tuple(messages), params))))

    first = cold(turn1)
    turn2 = [*turn1, Message("assistant", first[0]), Message("user", "And the smallest?")]
    fresh = [system, Message("user", "Name a bird that cannot fly.")]
    other = [Message("user", "Write one sentence about winter.")]
    expected = [cold(turn2), cold(fresh), cold(other)]

    smol_backend.prefix.clear()
    list(smol_backend.stream(GenerationRequest(tuple(turn1), params, owner="ann")))  # Ann's chat so far, cached
    gate = threading.Event()
    smol_backend.worker.submit(lambda: gate.wait(30))  # hold the model so all three queue up
    asks = [(turn2, "ann"), (fresh, "ann"), (other, "bob")]
    streams = [smol_backend.stream(GenerationRequest(tuple(m), params, owner=who)) for m, who in asks]
    results: list[list[Chunk]] = [[] for _ in streams]
    threads = [threading.Thread(target=lambda s=s, r=r: r.extend(s)) for s, r in zip(streams, results, strict=True)]
    hits = smol_backend.prefix.hits
    for t in threads:
        t.start()
    rows_per_step.clear()
    gate.set()
    for t in threads:
        t.join(120)
    assert rows_per_step[0] == 3  # the three prompts in one pass
    assert smol_backend.prefix.hits == hits + 2  # Ann's chat and Ann's system prompt; nothing of hers for Bob
    assert [outcome(r) for r in results] == expected


def test_replies_announced_together_share_their_prompt_read(smol_backend, rows_per_step, monkeypatch):
    """Requests announced as they arrive (expect) are read in one pass even when they reach the
    worker one by one; alone, each reads at once and gives the same reply."""
    from localchat.engine import scheduler

    monkeypatch.setattr(scheduler, "GATHER_SECONDS", 30.0)  # generous: only announced replies end the wait
    prompts = [[Message("user", f"Write one sentence about {what}.")] for what in ("rain", "bread", "owls")]
    params = SamplingParams(temperature=0, repetition_penalty=1.0, max_new_tokens=12)
    smol_backend.prefix.clear()
    alone = [
        outcome(list(smol_backend.stream(GenerationRequest(tuple(p), params, owner=str(i)))))
        for i, p in enumerate(prompts)
    ]
    smol_backend.prefix.clear()
    for _ in prompts:
        smol_backend.expect()
    results: list[list[Chunk]] = [[] for _ in prompts]
    threads = []
    rows_per_step.clear()
    for i, (p, r) in enumerate(zip(prompts, results, strict=True)):
        threads.append(
            threading.Thread(
                target=lambda p=p, r=r, i=i: r.extend(
                    smol_backend.stream(GenerationRequest(tuple(p), params, owner=str(i)))
                )
            )
        )
        threads[-1].start()
        threading.Event().wait(0.1)  # they arrive one after another, well apart
    for t in threads:
        t.join(120)
    assert rows_per_step[0] == 3  # read together
    assert [outcome(r) for r in results] == alone
