"""Prompt building, context fitting, sampling mapping and stop strings, on a tiny real model."""

from __future__ import annotations

import threading

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from localchat.engine.batch import stream_reply
from localchat.engine.generate import (
    FALLBACK_SYSTEM,
    ContextOverflow,
    StopStringFilter,
    fallback_prompt,
    fit_to_window,
    prompt_ids,
)
from localchat.types import Message, SamplingParams


@pytest.fixture(scope="module")
def tok(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def base_tok(tiny_base_model):
    return AutoTokenizer.from_pretrained(tiny_base_model)


@pytest.fixture(scope="module")
def model(tiny_model):
    return AutoModelForCausalLM.from_pretrained(tiny_model)


def conversation(n_pairs: int, words: int = 20) -> list[Message]:
    msgs = [Message("system", "Be brief.")]
    for i in range(n_pairs):
        msgs.append(Message("user", f"question {i} " + "word " * words))
        msgs.append(Message("assistant", f"answer {i} " + "word " * words))
    msgs.append(Message("user", "last question"))
    return msgs


def text_of(tok, ids: list[int]) -> str:
    return tok.decode(ids)


def test_chat_template_is_used(tok):
    ids = prompt_ids(tok, [Message("system", "S"), Message("user", "hello")])
    assert text_of(tok, ids) == "<|system|>S</s><|user|>hello</s><|assistant|>"


def test_fallback_prompt_for_models_without_template(base_tok):
    msgs = [Message("user", "Hi"), Message("assistant", "Hello!"), Message("user", "Capital of France?")]
    text = fallback_prompt(msgs)
    assert text.startswith(FALLBACK_SYSTEM)
    assert text.endswith("User: Hi\nAssistant: Hello!\nUser: Capital of France?\nAssistant:")
    assert text_of(base_tok, prompt_ids(base_tok, msgs)) == text
    with_system = fallback_prompt([Message("system", "You are a pirate."), *msgs])
    assert with_system.startswith("You are a pirate.\n") and FALLBACK_SYSTEM not in with_system


def test_fit_keeps_everything_when_it_fits(tok):
    msgs = conversation(2, words=2)
    ids, fit = fit_to_window(tok, msgs, window=512, max_new_tokens=64)
    assert not fit.trimmed and ids == prompt_ids(tok, msgs)


def test_fit_drops_oldest_turns_and_keeps_system(tok):
    msgs = conversation(10)  # ~10 * 2 * 130 bytes: far over the window below
    ids, fit = fit_to_window(tok, msgs, window=512, max_new_tokens=128)
    text = text_of(tok, ids)
    assert fit.dropped_messages > 0 and not fit.truncated_last_message
    assert len(ids) <= 512 - 128
    assert text.startswith("<|system|>Be brief.</s><|user|>")  # system kept, then a user turn
    assert "question 0 " not in text and "last question" in text
    assert "answer 9" in text  # the newest turns stay
    # the smallest number of drops: dropping one pair fewer would not fit
    kept = [m for m in msgs if m.role != "system"][fit.dropped_messages - 2 :]
    assert len(prompt_ids(tok, [msgs[0], *kept])) > 512 - 128
    assert "dropped" not in fit.describe() and "oldest" in fit.describe()


def test_fit_cuts_the_start_of_one_huge_message(tok):
    msgs = [Message("system", "Be brief."), Message("user", "x" * 2000 + " the real question?")]
    ids, fit = fit_to_window(tok, msgs, window=256, max_new_tokens=64)
    assert fit.truncated_last_message and len(ids) <= 256 - 64
    assert text_of(tok, ids).endswith("the real question?</s><|assistant|>")
    assert "cut" in fit.describe()


def test_fit_reports_a_system_prompt_that_cannot_fit(tok):
    msgs = [Message("system", "s" * 400), Message("user", "hi")]
    with pytest.raises(ContextOverflow, match="system prompt"):
        fit_to_window(tok, msgs, window=256, max_new_tokens=64)


def test_reply_room_is_at_most_half_the_window(tok):
    msgs = conversation(1, words=10)
    ids, fit = fit_to_window(tok, msgs, window=512, max_new_tokens=10_000)
    assert not fit.trimmed  # ~150 tokens of prompt fit in the 256 left, despite max_new_tokens


def test_processors_follow_the_sampling_settings():
    from transformers import MinPLogitsWarper, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper

    from localchat.engine.batch import processors
    from localchat.engine.generate import PresenceFrequencyPenalty

    assert list(processors(SamplingParams(temperature=0, repetition_penalty=1.0), 5)) == []
    greedy = processors(SamplingParams(temperature=0, repetition_penalty=1.2, presence_penalty=0.5), 5)
    assert [type(p) for p in greedy] == [RepetitionPenaltyLogitsProcessor, PresenceFrequencyPenalty]
    sampled = processors(SamplingParams(temperature=0.8, top_p=0.5, top_k=3, min_p=0.1), 5)
    names = [type(p).__name__ for p in sampled]
    assert names[-4:] == ["TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper", "MinPLogitsWarper"]
    assert isinstance(sampled[-4], TemperatureLogitsWarper) and isinstance(sampled[-1], MinPLogitsWarper)
    assert not any("TopK" in type(p).__name__ for p in processors(SamplingParams(temperature=0.8, top_k=0), 5))


@pytest.mark.parametrize(
    ("pieces", "stops", "emitted", "hit"),
    [
        (["Hello", " wor", "ld"], ["STOP"], "Hello world", False),
        (["Hello ", "ST", "OP and more"], ["STOP"], "Hello ", True),
        (["a\nUs", "er: next"], ["\nUser:"], "a", True),
        (["ends with S"], ["STOP"], "ends with S", False),  # held back, then flushed at the end
        (["caf\ufffd"], [], "caf", False),  # half a character is never shown
    ],
)
def test_stop_string_filter(pieces, stops, emitted, hit):
    f = StopStringFilter(stops)
    text, out = "", ""
    for p in pieces:
        text += p
        out += f.feed(text)
        assert not any(s in out for s in stops)
    out += f.flush()
    assert out == emitted and f.hit is hit


def test_stream_reply_length_cancel_and_stop(model, tok):
    ids = prompt_ids(tok, [Message("user", "hi")])
    out: list[str] = []
    done = stream_reply(
        model, tok, ids, SamplingParams(temperature=0, max_new_tokens=12), 512, threading.Event(), out.append
    )
    assert done.finish_reason == "length" and done.completion_tokens == 12 and out

    cancel = threading.Event()
    seen: list[str] = []

    def emit(text: str) -> None:
        seen.append(text)
        cancel.set()  # the user pressed Stop after the first text

    stopped = stream_reply(model, tok, ids, SamplingParams(temperature=0, max_new_tokens=200), 512, cancel, emit)
    assert stopped.finish_reason == "cancelled" and stopped.completion_tokens < 20

    full = "".join(out)
    stop_at = full[3:5]  # a stop string taken from the greedy reply itself
    cut: list[str] = []
    params = SamplingParams(temperature=0, max_new_tokens=12, stop=(stop_at,))
    done = stream_reply(model, tok, ids, params, 512, threading.Event(), cut.append)
    assert done.finish_reason == "stop" and "".join(cut) == full[: full.index(stop_at)]


def test_stream_reply_never_passes_the_window(model, tok):
    ids = prompt_ids(tok, [Message("user", "x" * 100)])
    out: list[str] = []
    done = stream_reply(
        model, tok, ids, SamplingParams(temperature=0, max_new_tokens=500), len(ids) + 5, threading.Event(), out.append
    )
    assert done.completion_tokens == 5 and done.finish_reason == "length"


def test_seed_makes_sampling_repeatable(model, tok):
    ids = prompt_ids(tok, [Message("user", "hi")])
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=10, seed=42)

    def run() -> str:
        out: list[str] = []
        stream_reply(model, tok, ids, params, 512, threading.Event(), out.append)
        return "".join(out)

    assert run() == run()


def test_streamer_waits_for_split_characters_and_drops_broken_bytes(tok):
    from localchat.engine.generate import TextStream

    out: list[str] = []
    stream = TextStream(tok, StopStringFilter([]), out.append)
    for token in (ord("a"), 0xC3, 0xA9, 0xC3, ord("b")):  # a, é split in two bytes, a broken byte, b
        stream.add(token)
    stream.end()
    assert out == ["a", "é", "b"]


def test_neighbours_with_the_same_role_are_merged_for_strict_templates(tok):
    strict = (
        "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate') }}{% endif %}"
        "<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    original, tok.chat_template = tok.chat_template, strict
    try:
        # a reply that failed before its first word leaves two user messages in a row
        ids = prompt_ids(tok, [Message("user", "first"), Message("user", "second")])
        assert text_of(tok, ids) == "<|user|>first\n\nsecond</s><|assistant|>"
    finally:
        tok.chat_template = original
