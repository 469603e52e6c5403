"""The prefix cache: the next turn of a chat reuses the KV cache of the previous turn, so only the
new tokens are read and the time to the first token does not grow with the length of the chat.

Owns: a few KV caches keyed by the token ids they cover and by their owner (a household member),
least-recently-used first out, bounded in bytes. The next turn of the same chat takes its entry
out; a new chat that starts like an earlier one (the same system prompt and template) gets a copy
of the shared start and leaves the entry in place.
Invariants: used only on the inference worker thread (no locks); a cache is taken out while a
reply extends it, so two replies never share one; only caches whose every layer keeps all past
tokens are kept (sliding-window layers cannot be cut back to a prefix); a member only ever reuses
their own caches, so the time to a first token cannot tell anyone how another member's chat began.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from transformers import DynamicCache

MIN_REUSE = 8  # tokens: below this, reading the prompt afresh costs about the same


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def cache_bytes(cache: Any) -> int:
    total = 0
    for layer in getattr(cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if t is not None and hasattr(t, "numel"):
                total += t.numel() * t.element_size()
    return total


def reusable(cache: Any) -> bool:
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer).__name__ == "DynamicLayer" for layer in layers)


def copy_start(cache: Any, n: int) -> DynamicCache:
    """A new cache holding the first n tokens of `cache` (which stays as it is)."""
    new = DynamicCache()
    for i, layer in enumerate(cache.layers):
        new.update(layer.keys[:, :, :n].clone(), layer.values[:, :, :n].clone(), i)
    return new


class PrefixCache:
    def __init__(self, max_bytes: int = 256 * 2**20, max_entries: int = 8):
        self.max_bytes, self.max_entries = max_bytes, max_entries
        self._entries: OrderedDict[int, tuple[str, list[int], Any, int]] = OrderedDict()  # owner, ids, cache, prompt
        self._next = 0
        self.hits = 0
        self.reused_tokens = 0

    def _best(self, ids: list[int], owner: str) -> tuple[int | None, int]:
        """The owner's entry sharing the longest prefix with `ids`, and how many tokens it saves
        (always leaving at least one token of `ids` to read)."""
        best, best_len = None, 0
        for key, (who, covered, _, _) in self._entries.items():
            n = common_prefix(covered, ids)
            if who == owner and n > best_len:
                best, best_len = key, n
        keep = min(best_len, len(ids) - 1)
        return (best, keep) if best is not None and keep >= MIN_REUSE else (None, 0)

    def _continues(self, key: int, keep: int) -> bool:
        """Is this the same chat going on (all of the entry's prompt is shared, not just its start)?"""
        return keep >= self._entries[key][3]

    def take(self, ids: list[int], owner: str = "") -> tuple[Any | None, int]:
        """A cache holding the longest prefix of `ids` this owner has, and how many tokens it saves.
        The same chat going on takes its entry out and extends it; another chat that starts the
        same way gets a copy of the shared start, and the entry stays for its own chat."""
        best, keep = self._best(ids, owner)
        if best is None:
            return None, 0
        if self._continues(best, keep):
            _, _, cache, _ = self._entries.pop(best)
            extra = cache.get_seq_length() - keep
            if extra > 0:
                cache.crop(-extra)
        else:
            self._entries.move_to_end(best)
            cache = copy_start(self._entries[best][2], keep)
        self.hits += 1
        self.reused_tokens += keep
        return cache, keep

    def take_all(self, prompts: list[tuple[list[int], str]]) -> list[tuple[Any | None, int]]:
        """take() for prompts read together: the copies are made before any entry is taken out,
        so a new chat still gets the start of an entry that its owner's other chat takes."""

        def copies_first(i: int) -> bool:
            best, keep = self._best(*prompts[i])
            return best is not None and self._continues(best, keep)

        out: list[tuple[Any | None, int]] = [(None, 0)] * len(prompts)
        for i in sorted(range(len(prompts)), key=copies_first):
            out[i] = self.take(*prompts[i])
        return out

    def put(self, covered: list[int], cache: Any, owner: str = "", prompt: int | None = None) -> None:
        """Keep `cache`, which holds `covered` (a prompt of `prompt` tokens and its reply)."""
        if not reusable(cache) or cache.get_seq_length() != len(covered):
            return
        self._entries[self._next] = (owner, covered, cache, len(covered) if prompt is None else prompt)
        self._next += 1
        while len(self._entries) > self.max_entries or (
            self._entries and sum(cache_bytes(c) for _, _, c, _ in self._entries.values()) > self.max_bytes
        ):
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
