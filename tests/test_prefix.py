"""The prefix cache: the next turn of a chat reuses the previous turn's KV cache, and the reply is
exactly what it would be without it (greedy, real tiny model); bounded, least recently used out."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import DynamicCache

from localchat.engine.backend import TransformersBackend
from localchat.engine.prefix import PrefixCache, common_prefix
from localchat.types import GenerationRequest, LoadOptions, Message, SamplingParams

GREEDY = SamplingParams(temperature=0, repetition_penalty=1.0, max_new_tokens=16)


def chat(backend: TransformersBackend, messages: list[Message]) -> str:
    return "".join(c.text for c in backend.stream(GenerationRequest(tuple(messages), GREEDY)))


def test_the_next_turn_reuses_the_cache_and_answers_the_same(tmp_path: Path, tiny_model: Path) -> None:
    warm, cold = TransformersBackend(tmp_path / "a"), TransformersBackend(tmp_path / "b")
    try:
        for b in (warm, cold):
            b.load(LoadOptions(model=str(tiny_model), device="cpu"))
        history = [Message("system", "You are kind."), Message("user", "Tell me about the sea.")]
        for turn in range(3):
            answer = chat(warm, history)
            cold.prefix.clear()  # the reference never reuses anything
            assert answer == chat(cold, history), f"turn {turn + 1} differs with the cache"
            history += [Message("assistant", answer), Message("user", f"And then {turn}?")]
        assert warm.prefix.hits == 2 and warm.prefix.reused_tokens > 40
    finally:
        warm.close()
        cold.close()


def test_another_conversation_starts_afresh_and_both_are_kept(tmp_path: Path, tiny_model: Path) -> None:
    backend = TransformersBackend(tmp_path)
    try:
        backend.load(LoadOptions(model=str(tiny_model), device="cpu"))
        chat(backend, [Message("user", "First conversation about cats and dogs")])
        chat(backend, [Message("user", "Second one, on a different subject")])
        assert len(backend.prefix) == 2
        backend.load(LoadOptions(model=str(tiny_model), device="cpu", dtype="bfloat16"))
        assert len(backend.prefix) == 0  # a new model: the old caches are gone
    finally:
        backend.close()


def test_a_new_chat_reuses_its_shared_start_but_only_for_the_same_member(tmp_path: Path, tiny_model: Path) -> None:
    warm, cold = TransformersBackend(tmp_path / "a"), TransformersBackend(tmp_path / "b")
    try:
        for b in (warm, cold):
            b.load(LoadOptions(model=str(tiny_model), device="cpu"))
        system = Message("system", "You are a kind and patient assistant for the whole family.")
        first = [system, Message("user", "Tell me about the sea.")]
        second = [system, Message("user", "What is a volcano?")]

        def ask(messages: list[Message], owner: str) -> str:
            return "".join(c.text for c in warm.stream(GenerationRequest(tuple(messages), GREEDY, owner=owner)))

        ask(first, "ann")
        assert ask(second, "bob") and warm.prefix.hits == 0  # Bob never reuses Ann's cache
        answer = ask(second, "ann")
        assert warm.prefix.hits == 1 and warm.prefix.reused_tokens > 60  # the system prompt, copied
        assert answer == "".join(c.text for c in cold.stream(GenerationRequest(tuple(second), GREEDY)))
        assert len(warm.prefix) == 3  # Ann's first chat keeps its own cache for its next turn
        again = first + [Message("assistant", ask(first, "ann")), Message("user", "More?")]
        hits = warm.prefix.hits
        ask(again, "ann")
        assert warm.prefix.hits == hits + 1
    finally:
        warm.close()
        cold.close()


def fake_cache(tokens: int) -> DynamicCache:
    cache = DynamicCache()
    cache.update(torch.zeros(1, 1, tokens, 4), torch.zeros(1, 1, tokens, 4), 0)
    return cache


def test_bounded_and_least_recently_used_out() -> None:
    prefix = PrefixCache(max_entries=2)
    for start in (100, 200, 300):
        ids = list(range(start, start + 20))
        prefix.put(ids, fake_cache(20))
    assert len(prefix) == 2
    assert prefix.take(list(range(100, 130)))[0] is None  # the oldest went first
    cache, reused = prefix.take(list(range(300, 330)))
    assert reused == 20 and cache.get_seq_length() == 20 and len(prefix) == 1  # taken out while in use
    cache, reused = prefix.take(list(range(200, 220)))  # the same prompt again: one token is read
    assert reused == 19 and cache.get_seq_length() == 19
    small = PrefixCache(max_bytes=1)
    small.put(list(range(20)), fake_cache(20))
    assert len(small) == 0
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
