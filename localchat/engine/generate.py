"""Prompt building, context fitting, stop strings and tokens to text (decoding is in batch.py).

Owns: the chat template (or a plain fallback for base models), fitting a conversation into the
context window, stop strings, and a reply's tokens turned into text.
Invariant: every function that touches torch here is called on the inference worker thread only;
`emit` callbacks only put text on a queue.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from localchat.backend import PromptTooLong
from localchat.types import ContextFit, FinishReason, Message

FALLBACK_SYSTEM = "The following is a conversation between a helpful assistant and a user."
FALLBACK_STOPS = ("\nUser:", "\nuser:")


class ContextOverflow(ValueError):
    """The prompt cannot fit even after trimming (e.g. the system prompt alone is too long)."""


def uses_fallback(tokenizer: Any) -> bool:
    return not getattr(tokenizer, "chat_template", None)


@dataclass(frozen=True)
class TokenizerFacts:
    """What the prompt code needs to know of a tokenizer, found once per tokenizer."""

    controls: tuple[str, ...]  # texts the tokenizer reads as one special token (e.g. <|im_start|>)
    token_bytes: int  # at least the UTF-8 bytes of text any one ordinary token stands for


def facts(tokenizer: Any) -> TokenizerFacts:
    found = tokenizer.__dict__.get("_localchat_facts")
    if found is None:
        added = getattr(tokenizer, "added_tokens_decoder", {}).values()
        controls = sorted({t.content for t in added if getattr(t, "special", False) and t.content}, key=len)
        special = set(controls)  # Gemma 3: 6k special tokens and 262k others (a list took 30 s)
        longest = max((len(t.encode("utf-8", "surrogatepass")) for t in tokenizer.get_vocab() if t not in special),
                      default=1)  # fmt: skip
        # A normalizer may shrink text before it is split (NFKC: a 4-byte letter becomes 1 byte).
        backend = getattr(tokenizer, "backend_tokenizer", None)
        shrink = 1 if backend is not None and backend.normalizer is None else 4
        found = TokenizerFacts(tuple(reversed(controls)), max(1, longest) * shrink)
        tokenizer.__dict__["_localchat_facts"] = found
    return found


def least_tokens(tokenizer: Any, text: str) -> int:
    """A lower bound on the tokens of `text`, without tokenizing it (a 10 MB prompt takes 18 s)."""
    return len(text.encode("utf-8", "surrogatepass")) // facts(tokenizer).token_bytes


def _check_room(tokenizer: Any, texts: Sequence[str], limit: int | None) -> None:
    if limit is None:
        return
    least = sum(least_tokens(tokenizer, t) for t in texts)
    if least >= limit:
        raise PromptTooLong(
            f"The prompt has at least {least:,} tokens, but this model's context window is {limit:,} tokens"
        )


def _has_control(tokenizer: Any, texts: Sequence[str]) -> bool:
    controls = facts(tokenizer).controls
    return any(c in t for t in texts for c in controls)


def text_ids(tokenizer: Any, text: str, limit: int | None = None) -> list[int]:
    """A raw prompt (/v1/completions, the fallback transcript) as ids; a special token's text in it
    stays text. `limit`: a prompt that certainly has `limit` tokens or more is refused untokenized."""
    _check_room(tokenizer, [text], limit)
    if not _has_control(tokenizer, [text]):
        return list(tokenizer(text)["input_ids"])  # the common case: exactly the ids of old
    return list(tokenizer(text, split_special_tokens=True)["input_ids"])


def _content_ids(tokenizer: Any, text: str) -> list[int]:
    """Text written by someone (a message, a part of one): never a special token."""
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])


def fallback_prompt(messages: Sequence[Message]) -> str:
    """A plain transcript that base models continue naturally; generation stops at the next 'User:'."""
    system = [m.content for m in messages if m.role == "system" and m.content.strip()]
    lines = [("\n".join(system) or FALLBACK_SYSTEM).strip(), ""]
    for m in messages:
        if m.role != "system":
            lines.append(f"{'User' if m.role == 'user' else 'Assistant'}: {m.content.strip()}")
    lines.append("Assistant:")
    return "\n".join(lines)


def _render(tokenizer: Any, dicts: list[dict[str, str]], tokenize: bool) -> Any:
    def apply(items: list[dict[str, str]]) -> Any:
        if not tokenize:
            return tokenizer.apply_chat_template(items, add_generation_prompt=True, tokenize=False)
        return tokenizer.apply_chat_template(items, add_generation_prompt=True, tokenize=True, return_dict=True)

    try:
        return apply(dicts)
    except Exception:
        # Some templates (e.g. Gemma) reject a system role: fold it into the first user turn.
        if not dicts or dicts[0]["role"] != "system" or len(dicts) < 2:
            raise
        merged = [{"role": dicts[1]["role"], "content": f"{dicts[0]['content']}\n\n{dicts[1]['content']}"}]
        return apply(merged + dicts[2:])


def _template(tokenizer: Any, messages: Sequence[Message]) -> list[int]:
    dicts = [{"role": m.role, "content": m.content} for m in messages]
    if not _has_control(tokenizer, [m.content for m in messages]):
        return list(_render(tokenizer, dicts, tokenize=True)["input_ids"])  # exactly the ids of old
    return _guarded_template(tokenizer, dicts)


def _guarded_template(tokenizer: Any, dicts: list[dict[str, str]]) -> list[int]:
    """The template's own text is read with its special tokens; each message's text without.

    The template is rendered once with a placeholder per message to find where the messages go,
    and trusted only if putting the messages in its place gives exactly the real rendering."""
    marks = [f"\ue000{i}\ue001" for i in range(len(dicts))]
    real = _render(tokenizer, dicts, tokenize=False)
    shell = _render(tokenizer, [{**d, "content": m} for d, m in zip(dicts, marks, strict=True)], tokenize=False)
    pieces = [shell]
    for mark in marks:
        head, found, tail = pieces[-1].partition(mark)
        if not found or mark in tail:
            pieces = []
            break
        pieces[-1:] = [head, tail]
    for strip in (False, True):
        contents = [d["content"].strip() if strip else d["content"] for d in dicts]
        if pieces and "".join(p + c for p, c in zip(pieces, [*contents, ""], strict=True)) == real:
            ids: list[int] = []
            for piece, content in zip(pieces, [*contents, ""], strict=True):
                ids += tokenizer(piece, add_special_tokens=False)["input_ids"] if piece else []
                ids += _content_ids(tokenizer, content) if content else []
            return ids
    # A template that rewrites the messages: a word joiner inside each special token's text.
    controls = facts(tokenizer).controls
    defanged = []
    for d in dicts:
        content = d["content"]
        for c in controls:
            content = content.replace(c, f"{c[0]}\u2060{c[1:]}")
        defanged.append({**d, "content": content})
    return list(_render(tokenizer, defanged, tokenize=True)["input_ids"])


def merge_same_role(messages: Sequence[Message]) -> list[Message]:
    """Join neighbours with the same role: many templates demand user/assistant alternation, and
    a reply that failed before its first word leaves two user messages in a row."""
    merged: list[Message] = []
    for m in messages:
        if merged and merged[-1].role == m.role:
            merged[-1] = Message(m.role, f"{merged[-1].content}\n\n{m.content}")
        else:
            merged.append(m)
    return merged


def prompt_ids(tokenizer: Any, messages: Sequence[Message], limit: int | None = None) -> list[int]:
    """The chat as the model reads it. Text in messages never becomes a special token (a message
    cannot open a turn of its own). `limit`: as in text_ids."""
    _check_room(tokenizer, [m.content for m in messages], limit)
    messages = merge_same_role(messages)
    if uses_fallback(tokenizer):
        return text_ids(tokenizer, fallback_prompt(messages))
    return _template(tokenizer, messages)


def _tail_ids(tokenizer: Any, text: str, room: int) -> list[int]:
    """The ids of a tail of `text` with more than `room` tokens (or all of it), tokenizing only a
    tail a few times longer than `room` tokens usually take, never the whole of a huge text."""
    size = 8 * room
    while True:
        tail = text[-size:]
        ids = _content_ids(tokenizer, tail)
        if len(tail) == len(text) or len(ids) > room:
            return ids
        size *= 4


def fit_to_window(
    tokenizer: Any, messages: Sequence[Message], window: int, max_new_tokens: int
) -> tuple[list[int], ContextFit]:
    """Drop the oldest turns (never the system prompt) until prompt + reply room fits the window.

    Reply room is max_new_tokens but at most half the window, so a long max_new_tokens never
    pushes the whole conversation out. If the last message alone is too long, its start is cut.
    """
    budget = window - min(max_new_tokens, window // 2)
    system = [m for m in messages if m.role == "system"]
    turns = [m for m in messages if m.role != "system"]
    if not turns:
        raise ContextOverflow("there is no message to answer")

    def ids_for(drop: int) -> list[int]:
        kept = turns[drop:]
        while len(kept) > 1 and kept[0].role == "assistant":
            kept = kept[1:]  # keep roles alternating from a user turn
        return prompt_ids(tokenizer, system + kept)

    # A last message that alone certainly overflows is cut at once, untokenized.
    last_alone_too_long = least_tokens(tokenizer, turns[-1].content) > budget
    ids = [] if last_alone_too_long else ids_for(0)
    if ids and len(ids) <= budget:
        return ids, ContextFit()
    lo, hi = 1, 0 if last_alone_too_long else len(turns) - 1  # smallest drop count that fits, by bisection
    best: tuple[int, list[int]] | None = None
    while lo <= hi:
        mid = (lo + hi) // 2
        candidate = ids_for(mid)
        if len(candidate) <= budget:
            best, hi = (mid, candidate), mid - 1
        else:
            lo = mid + 1
    if best is not None:
        dropped = best[0]
        kept = turns[dropped:]
        while len(kept) > 1 and kept[0].role == "assistant":
            kept, dropped = kept[1:], dropped + 1
        return best[1], ContextFit(dropped_messages=dropped)
    last = turns[-1]
    least = sum(least_tokens(tokenizer, m.content) for m in system)
    overhead = least if least > budget else len(prompt_ids(tokenizer, [*system, Message(last.role, "")]))
    room = budget - overhead - 2
    if room < 8:
        raise ContextOverflow(
            f"the system prompt alone takes {'at least ' * (least > budget)}{overhead:,} of the {window:,} tokens in the context window; "
            "shorten it or load the model with a longer context"
        )
    content_ids = _tail_ids(tokenizer, last.content, room)
    while True:
        tail = tokenizer.decode(content_ids[-room:], skip_special_tokens=True)
        ids = prompt_ids(tokenizer, [*system, Message(last.role, tail)])
        if len(ids) <= budget:
            break
        if room <= 8:
            raise ContextOverflow(f"even a few words of your message do not fit the {window}-token context window")
        room = max(8, room - max(1, len(ids) - budget))
    return ids, ContextFit(dropped_messages=len(turns) - 1, truncated_last_message=True)


class StopStringFilter:
    """Accumulates decoded text; emits only what cannot be the start of a stop string."""

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(s for s in stops if s)
        self.text = ""
        self.emitted = 0
        self.hit = False

    def feed(self, text: str) -> str:
        """Take the whole text decoded so far; return the new safe part."""
        self.text = text
        for s in self.stops:
            at = text.find(s)
            if at != -1:
                self.hit = True
                text = text[:at]
        end = len(text)
        if not self.hit:
            for s in self.stops:
                for k in range(min(len(s) - 1, len(text)), 0, -1):
                    if text.endswith(s[:k]):
                        end = min(end, len(text) - k)
                        break
        if text.endswith("\ufffd") and not self.hit:
            end = min(end, len(text) - 1)  # half of a multi-byte character: wait for the rest
        end = max(end, self.emitted)
        new, self.emitted = text[self.emitted : end], end
        return new

    def flush(self) -> str:
        """At the end, release held-back text unless a stop string cut it off."""
        if self.hit:
            return ""
        rest, self.emitted = self.text[self.emitted :].rstrip("\ufffd"), len(self.text)
        return rest


class TextStream:
    """Turns a reply's tokens, one at a time, into text deltas that are final (never taken back)."""

    def __init__(self, tokenizer: Any, stops: StopStringFilter, emit: Callable[[str], None]):
        self.tokenizer, self.stops, self.emit = tokenizer, stops, emit
        self.ids: list[int] = []

    def add(self, token: int) -> None:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return  # half of a multi-byte character: wait for the rest
        self._feed(text)

    def _feed(self, text: str) -> None:
        # A U+FFFD left inside is a byte sequence the model never completed: not worth showing.
        new = self.stops.feed(text.replace("\ufffd", "").lstrip())
        if new:
            self.emit(new)

    def end(self) -> None:
        if self.ids:
            self._feed(self.tokenizer.decode(self.ids, skip_special_tokens=True))
        rest = self.stops.flush()
        if rest:
            self.emit(rest)


@dataclass(frozen=True)
class Decoded:
    completion_tokens: int
    finish_reason: FinishReason
    first_token_at: float | None
    finished_at: float
    tokens: tuple[int, ...] = ()  # the reply's token ids
