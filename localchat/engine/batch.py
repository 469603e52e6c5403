"""Batched decoding: the replies of several people share each forward pass of the model.

Owns: the replies in flight, their joint KV cache (left-padded to one length), and one decode step
for all of them. A reply joins by reading its prompt alone (batch of one, from a prefix-cache hit
when there is one), then its cache is padded and stacked onto the others'; every step feeds each
reply its own last token at its own position, and masks the padding. A reply that ends leaves at
once (its rows are cut out, and padding no one needs any more is trimmed), so a long reply never
holds a short one back.

Invariants: runs on the inference worker thread only; each reply has its own sampling processors,
stop strings and random generator, so nothing of one reply reaches another; greedy replies equal
what they would be alone (checked by tests on the real model); models whose cache cannot be padded
(sliding-window layers) or whose kernels differ between one row and several (bitsandbytes: one row
takes a separate kernel, and batched greedy replies diverged from solo ones) decode one reply at a
time through the same code.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import (
    DynamicCache,
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from localchat.engine.generate import (
    FALLBACK_STOPS,
    Decoded,
    PresenceFrequencyPenalty,
    StopStringFilter,
    TextStream,
    uses_fallback,
)
from localchat.engine.prefix import PrefixCache, reusable
from localchat.types import FinishReason, SamplingParams

log = logging.getLogger(__name__)


def batchable(model: Any) -> bool:
    """Can replies to this model share forward passes and still equal their solo selves?"""
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        return False
    return reusable(DynamicCache(config=model.config))


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def processors(params: SamplingParams, prompt_length: int) -> LogitsProcessorList:
    """The same logits processors, in the same order, as transformers' generate() would use."""
    out = LogitsProcessorList()
    if params.repetition_penalty != 1.0:
        out.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    if params.presence_penalty or params.frequency_penalty:
        out.append(PresenceFrequencyPenalty(prompt_length, params.presence_penalty, params.frequency_penalty))
    if params.temperature > 0:
        if params.temperature != 1.0:
            out.append(TemperatureLogitsWarper(params.temperature))
        if params.top_k:
            out.append(TopKLogitsWarper(params.top_k))
        if params.top_p < 1.0:
            out.append(TopPLogitsWarper(params.top_p))
        if params.min_p:
            out.append(MinPLogitsWarper(params.min_p))
    return out


@dataclass(eq=False)
class Reply:
    """One reply being generated. `done` is called once, on the worker, with the result or error."""

    ids: list[int]  # the prompt
    params: SamplingParams
    cancel: threading.Event
    emit: Callable[[str], None]
    done: Callable[[Decoded | None, BaseException | None], None]
    owner: str = ""  # whose reply: the prefix cache only reuses a member's own caches
    max_new: int = 0
    tokens: list[int] = field(default_factory=list)  # generated so far; the last is not in the cache yet
    text: TextStream | None = None
    rules: LogitsProcessorList = field(default_factory=LogitsProcessorList)
    generator: torch.Generator | None = None
    first_token_at: float | None = None
    finished: FinishReason | None = None

    @property
    def position(self) -> int:
        """Position of the last token, the next one fed to the model."""
        return len(self.ids) + len(self.tokens) - 1


class Batch:
    """The replies decoding together on one model (all methods run on the worker thread)."""

    def __init__(self, model: Any, tokenizer: Any, window: int, max_size: int = 8, prefix: PrefixCache | None = None):
        self.model, self.tokenizer, self.window = model, tokenizer, window
        self.max_size = max_size if batchable(model) else 1
        self.prefix = prefix
        self.device = next(model.parameters()).device
        self.eos = eos_ids(model, tokenizer)
        self.stops = FALLBACK_STOPS if uses_fallback(tokenizer) else ()
        self.rows: list[Reply] = []
        self.cache: Any = None  # the joint cache: [rows, heads, length, dim] per layer
        self.mask: torch.Tensor | None = None  # [rows, length]: 1 for a real token, 0 for padding

    def __len__(self) -> int:
        return len(self.rows)

    def room(self) -> int:
        return self.max_size - len(self.rows)

    # -- joining --------------------------------------------------------------------------------
    def add(self, reply: Reply) -> None:
        """Read the reply's prompt and take its first token; it then decodes with the others."""
        params = reply.params
        reply.max_new = max(1, min(params.max_new_tokens, self.window - len(reply.ids)))
        reply.text = TextStream(self.tokenizer, StopStringFilter(params.stop + self.stops), reply.emit)
        reply.rules = processors(params, len(reply.ids))
        if params.temperature > 0:
            reply.generator = torch.Generator(device=self.device)
            if params.seed is not None:
                reply.generator.manual_seed(params.seed)
            else:
                reply.generator.seed()
        cache, reused = self.prefix.take(reply.ids, reply.owner) if self.prefix is not None else (None, 0)
        if cache is None:
            cache, reused = DynamicCache(config=self.model.config), 0
        todo = reply.ids[reused:]
        with torch.inference_mode():
            out = self.model(
                input_ids=torch.tensor([todo], device=self.device),
                attention_mask=torch.ones((1, len(reply.ids)), dtype=torch.long, device=self.device),
                position_ids=torch.arange(reused, len(reply.ids), device=self.device).unsqueeze(0),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        logits = out.logits[:, -1, :].float()
        self._accept(reply, self._choose(reply, logits[0], int(logits[0].argmax())))
        if reply.finished:
            self._finish(reply, cache)
            return
        self._join(reply, cache)

    def _join(self, reply: Reply, cache: Any) -> None:
        length = cache.get_seq_length()
        if not self.rows:
            self.rows, self.cache = [reply], cache
            self.mask = torch.ones((1, length), dtype=torch.long, device=self.device)
            return
        assert self.mask is not None
        total = self.mask.shape[1]
        if length > total:  # the newcomer is longer: everyone else is padded further
            self._pad_all(length - total)
            total = length
        row_mask = torch.zeros((1, total), dtype=torch.long, device=self.device)
        row_mask[:, total - length :] = 1
        for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([mine.keys, _left_pad(theirs.keys, total - length)])
            mine.values = torch.cat([mine.values, _left_pad(theirs.values, total - length)])
        self.mask = torch.cat([self.mask, row_mask])
        self.rows.append(reply)

    def _pad_all(self, n: int) -> None:
        assert self.mask is not None
        for layer in self.cache.layers:
            layer.keys, layer.values = _left_pad(layer.keys, n), _left_pad(layer.values, n)
        self.mask = torch.cat([torch.zeros((len(self.rows), n), dtype=torch.long, device=self.device), self.mask], 1)

    # -- decoding -------------------------------------------------------------------------------
    def step(self) -> None:
        """One forward pass for every reply in the batch; replies that end leave it."""
        assert self.mask is not None
        rows = self.rows
        try:
            for reply in rows:  # Stop pressed between steps: no need to compute its next token
                if reply.cancel.is_set():
                    reply.finished = "cancelled"
            if any(r.finished for r in rows):
                self._leave()
                if not self.rows:
                    return
                rows = self.rows
            mask = torch.cat([self.mask, torch.ones((len(rows), 1), dtype=torch.long, device=self.device)], 1)
            with torch.inference_mode():
                out = self.model(
                    input_ids=torch.tensor([[r.tokens[-1]] for r in rows], device=self.device),
                    attention_mask=mask,
                    position_ids=torch.tensor([[r.position] for r in rows], device=self.device),
                    past_key_values=self.cache,
                    use_cache=True,
                )
            self.mask = mask
            logits = out.logits[:, -1, :].float()
            greedy = logits.argmax(-1).tolist()
            for i, reply in enumerate(rows):
                self._accept(reply, self._choose(reply, logits[i], greedy[i]))
            if any(r.finished for r in rows):
                self._leave()
        except BaseException as exc:
            self.fail(exc)
            raise

    def _choose(self, reply: Reply, logits: torch.Tensor, greedy: int) -> int:
        if not reply.rules and reply.generator is None:
            return greedy
        with torch.inference_mode():
            scores = logits.unsqueeze(0)
            if reply.rules:
                seen = torch.tensor([reply.ids + reply.tokens], device=self.device)
                scores = reply.rules(seen, scores)
            if reply.generator is None:
                return int(scores[0].argmax())
            probs = torch.softmax(scores, dim=-1)
            return int(torch.multinomial(probs, 1, generator=reply.generator)[0, 0])

    def _accept(self, reply: Reply, token: int) -> None:
        if reply.first_token_at is None:
            reply.first_token_at = time.perf_counter()
        reply.tokens.append(token)
        assert reply.text is not None
        reply.text.add(token)
        if reply.cancel.is_set():
            reply.finished = "cancelled"
        elif token in self.eos or reply.text.stops.hit:
            reply.finished = "stop"
        elif len(reply.tokens) >= reply.max_new:
            reply.finished = "length"

    # -- leaving --------------------------------------------------------------------------------
    def _leave(self) -> None:
        """Cut the finished replies out of the batch and hand each its own cache and result."""
        assert self.mask is not None
        keep = [i for i, r in enumerate(self.rows) if not r.finished]
        gone = [i for i, r in enumerate(self.rows) if r.finished]
        if not keep:  # the last ones out: the joint cache itself, less its padding, is theirs
            leaving = [(self.rows[i], self._row_cache(i) if len(gone) > 1 else self._trimmed()) for i in gone]
            self.rows, self.cache, self.mask = [], None, None
        else:
            leaving = [(self.rows[i], self._row_cache(i)) for i in gone]
            index = torch.tensor(keep, device=self.device)
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[index], layer.values[index]
            self.mask = self.mask[index]
            self.rows = [self.rows[i] for i in keep]
            self._trim()
        for reply, cache in leaving:
            self._finish(reply, cache)

    def _row_cache(self, i: int) -> Any:
        assert self.mask is not None
        real = int(self.mask[i].sum())
        own = DynamicCache(config=self.model.config)
        for n, layer in enumerate(self.cache.layers):
            own.update(layer.keys[i : i + 1, :, -real:].clone(), layer.values[i : i + 1, :, -real:].clone(), n)
        return own

    def _trimmed(self) -> Any:
        self._trim()
        return self.cache

    def _trim(self) -> None:
        """Drop the columns of padding every remaining reply has."""
        assert self.mask is not None
        lead = int((self.mask.shape[1] - self.mask.sum(1)).min())
        if lead:
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, lead:], layer.values[:, :, lead:]
            self.mask = self.mask[:, lead:]

    def _finish(self, reply: Reply, cache: Any) -> None:
        assert reply.text is not None and reply.finished is not None
        try:
            reply.text.end()
            if self.prefix is not None:
                covered = [*reply.ids, *reply.tokens]
                self.prefix.put(covered[: cache.get_seq_length()], cache, reply.owner)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
            reply.done(None, exc)
            return
        reply.done(
            Decoded(len(reply.tokens), reply.finished, reply.first_token_at, time.perf_counter(), tuple(reply.tokens)),
            None,
        )

    def fail(self, exc: BaseException) -> None:
        """A step failed (e.g. out of memory): every reply in flight ends with that error."""
        rows, self.rows, self.cache, self.mask = self.rows, [], None, None
        for reply in rows:
            try:
                reply.done(None, exc)
            except Exception:  # noqa: BLE001
                log.exception("reply callback failed")


def _left_pad(t: torch.Tensor, n: int) -> torch.Tensor:
    if n <= 0:
        return t
    pad = torch.zeros((*t.shape[:2], n, *t.shape[3:]), dtype=t.dtype, device=t.device)
    return torch.cat([pad, t], dim=2)


def stream_reply(
    model: Any,
    tokenizer: Any,
    ids: list[int],
    params: SamplingParams,
    window: int,
    cancel: threading.Event,
    emit: Callable[[str], None],
    prefix: PrefixCache | None = None,
) -> Decoded:
    """Generate one reply alone (a batch of one), calling emit(text_delta) as text becomes final."""
    result: list[Decoded | BaseException | None] = [None]

    def done(decoded: Decoded | None, exc: BaseException | None) -> None:
        result[0] = decoded if exc is None else exc

    batch = Batch(model, tokenizer, window, max_size=1, prefix=prefix)
    batch.add(Reply(ids, params, cancel, emit, done))
    while len(batch):
        batch.step()
    if isinstance(result[0], BaseException):
        raise result[0]
    assert result[0] is not None
    return result[0]
