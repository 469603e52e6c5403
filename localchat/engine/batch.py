"""Batched decoding: the replies of several people share each forward pass of the model.

Owns: the replies in flight, their joint KV cache (left-padded to one length), and one decode step
for all of them. Replies admitted since the last step have their prompts read together in one
forward pass (each from its prefix-cache hit when there is one; past and new tokens left-padded),
then their caches are stacked onto the others'; every step feeds each reply its own last token at
its own position, and masks the padding. A reply that ends leaves at
once (its rows are cut out, and padding no one needs any more is trimmed), so a long reply never
holds a short one back.

Invariants: runs on the inference worker thread only; each reply has its own sampling processors,
stop strings and random generator, so nothing of one reply reaches another; greedy replies equal
what they would be alone (checked by tests on the real model); models whose cache cannot be padded
(sliding-window layers) or whose arithmetic differs between one row and several (bfloat16,
float16, bitsandbytes: batched greedy replies diverged from solo ones, see `batchable`) decode one
reply at a time through the same code.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache, LogitsProcessorList

from localchat.engine.decoder import cache_fits, decoder_for
from localchat.engine.generate import (
    FALLBACK_STOPS,
    Decoded,
    StopStringFilter,
    TextStream,
    uses_fallback,
)
from localchat.engine.prefix import PrefixCache, reusable
from localchat.engine.sampling import processors
from localchat.types import FinishReason, SamplingParams

log = logging.getLogger(__name__)


def batchable(model: Any) -> bool:
    """Can replies to this model share forward passes?
    float32: yes, and every greedy reply equals its solo self (measured). localchat's CPU weight
    formats (engine.formats: activations float32, weights bf16/int8/int4/q8/q4): yes, for the speed, though
    a bf16 product of several rows rounds differently than of one: 3 of 4 greedy replies equalled
    their solo selves at 360M (bench/batching.py says it per run). A whole-model bfloat16 or
    bitsandbytes load: no (2 and 3 of 4 replies differed, and their batches measured no faster on
    CPU). Sliding-window caches cannot be padded."""
    from localchat.engine.formats import WeightOnlyLinear, computes_in_float32

    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        return False
    if not computes_in_float32(model):
        return False
    if any(isinstance(m, WeightOnlyLinear) for m in model.modules()):
        log.info("batching in a CPU weight format: batched greedy replies may round apart from solo ones")
    return reusable(DynamicCache(config=model.config))


def cache_argument(model: Any) -> str:
    """The name forward() takes the KV cache by: `cache` since transformers 5.2x, where
    `past_key_values` is deprecated (to be removed in 5.40); older 5.x releases know only the latter."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT wrapper passes it on
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


@dataclass(eq=False)
class Reply:
    """One reply being generated. `done` is called exactly once, on the worker, with the result or
    the error."""

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
    """The replies decoding together on one model. Everything runs on the worker thread, except
    `len()` and `room()`, which callers may read (for queue positions and /health)."""

    def __init__(self, model: Any, tokenizer: Any, window: int, max_size: int = 8, prefix: PrefixCache | None = None):
        self.model, self.tokenizer, self.window = model, tokenizer, window
        self.max_size = max_size if batchable(model) else 1
        self.prefix = prefix
        self.device = model.get_input_embeddings().weight.device  # where the inputs go
        out = model.get_output_embeddings()  # a CPU weight format keeps its weights as buffers
        self.out_device = next(iter([*out.parameters(), *out.buffers()])).device  # where the logits come out
        self.eos = eos_ids(model, tokenizer)
        self.cache_kw = cache_argument(model)
        self.decoder = decoder_for(model)  # the lean decode step, where the model is of a kind it knows
        self.stops = FALLBACK_STOPS if uses_fallback(tokenizer) else ()
        self.rows: list[Reply] = []  # decoding
        self.joining: list[Reply] = []  # admitted; their prompts are read at the next step
        self.cache: Any = None  # the joint cache: [rows, heads, length, dim] per layer
        self.mask: torch.Tensor | None = None  # [rows, length]: 1 for a real token, 0 for padding

    def __len__(self) -> int:
        return len(self.rows) + len(self.joining)

    def room(self) -> int:
        return self.max_size - len(self)

    def reading_only(self) -> bool:
        return bool(self.joining) and not self.rows

    # -- joining --------------------------------------------------------------------------------
    def add(self, reply: Reply) -> None:
        """Admit a reply: its prompt is read at the next step, together with the prompts of the
        others admitted meanwhile (one forward pass for all of them), then it decodes with the rest."""
        params = reply.params
        reply.max_new = max(1, min(params.max_new_tokens, self.window - len(reply.ids)))
        reply.text = TextStream(self.tokenizer, StopStringFilter(params.stop + self.stops), reply.emit)
        reply.rules = processors(params, len(reply.ids))
        if params.temperature > 0:
            reply.generator = torch.Generator(device=self.out_device)
            if params.seed is not None:
                reply.generator.manual_seed(params.seed)
            else:
                reply.generator.seed()
        self.joining.append(reply)

    def _prefill(self) -> None:
        """Read the prompts of the replies waiting to join; a failure (out of memory, say) ends
        those replies only, and the ones already decoding go on."""
        group, self.joining = self.joining, []
        for reply in [r for r in group if r.cancel.is_set()]:  # stopped before its prompt was read
            group.remove(reply)
            reply.finished = "cancelled"
            self._finish(reply, None)
        if not group:
            return
        try:
            self._read_prompts(group)
        except Exception as exc:  # noqa: BLE001 - handed to each waiting caller
            log.exception("reading %d prompt(s) failed", len(group))
            for reply in group:
                if reply not in self.rows:
                    self._end(reply, exc)

    def _read_prompts(self, group: list[Reply]) -> None:
        """One forward pass over the group's prompts (each from its prefix-cache hit, if any):
        take each one's first token and stack the group onto the batch."""
        found = self.prefix.take_all([(r.ids, r.owner) for r in group]) if self.prefix is not None else []
        caches = [cache for cache, _ in found] or [None] * len(group)
        reused = [n for _, n in found] or [0] * len(group)
        todo = [r.ids[n:] for r, n in zip(group, reused, strict=True)]
        # past and new tokens each left-padded to the longest: [pad, past, pad, new] (one reply: no padding)
        past, length = max(reused), max(len(t) for t in todo)
        cache = self._stack_past(caches, reused, past)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        rows, masks, places = [], [], []
        for n, ids in zip(reused, todo, strict=True):
            gap = length - len(ids)
            rows.append([pad] * gap + ids)
            masks.append([0] * (past - n) + [1] * n + [0] * gap + [1] * len(ids))
            places.append([n] * gap + list(range(n, n + len(ids))))
        inputs = torch.tensor(rows, device=self.device)
        mask = torch.tensor(masks, dtype=torch.long, device=self.device)
        positions = torch.tensor(places, device=self.device)
        with torch.inference_mode():
            out = self.model(
                input_ids=inputs,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
                **{self.cache_kw: cache},
            )
        log.debug("read %d prompt(s): %s new tokens after %s cached, %d already decoding",
                  len(group), [len(t) for t in todo], reused, len(self.rows))  # fmt: skip
        logits = out.logits[:, -1, :].float()
        greedy = logits.argmax(-1).tolist()
        for i, reply in enumerate(group):
            self._accept(reply, self._choose(reply, logits[i], greedy[i]))
        self._join(group, cache, mask)
        if any(r.finished for r in group):
            self._leave()

    def _stack_past(self, caches: list[Any | None], reused: list[int], past: int) -> Any:
        """One cache of len(caches) rows holding each one's reused tokens (None: no hit),
        left-padded to `past`; a single hit is used as it is."""
        if len(caches) == 1 and caches[0] is not None:
            return caches[0]
        joint = DynamicCache(config=self.model.config)
        if past == 0:
            return joint
        donor = next(c for c, n in zip(caches, reused, strict=True) if n)
        for layer_index, shape in enumerate(donor.layers):
            keys, values = [], []
            for cache, n in zip(caches, reused, strict=True):
                if n:
                    layer = cache.layers[layer_index]
                    keys.append(_left_pad(layer.keys, past - n))
                    values.append(_left_pad(layer.values, past - n))
                else:
                    keys.append(_left_pad(shape.keys[:, :, :0], past))
                    values.append(_left_pad(shape.values[:, :, :0], past))
            joint.update(torch.cat(keys), torch.cat(values), layer_index)
        return joint

    def _join(self, group: list[Reply], cache: Any, mask: torch.Tensor) -> None:
        """Stack a group's cache (and mask) onto the batch's, left-padding the shorter."""
        if not self.rows:
            self.rows, self.cache, self.mask = group, cache, mask
            return
        assert self.mask is not None
        mine, theirs = self.mask.shape[1], mask.shape[1]
        if theirs > mine:  # the newcomers are longer: everyone else is padded further
            for layer in self.cache.layers:
                layer.keys, layer.values = _left_pad(layer.keys, theirs - mine), _left_pad(layer.values, theirs - mine)
            self.mask = _left_pad_mask(self.mask, theirs - mine)
        total = self.mask.shape[1]
        for layer, new in zip(self.cache.layers, cache.layers, strict=True):
            layer.keys = torch.cat([layer.keys, _left_pad(new.keys, total - theirs)])
            layer.values = torch.cat([layer.values, _left_pad(new.values, total - theirs)])
        self.mask = torch.cat([self.mask, _left_pad_mask(mask, total - theirs)])
        self.rows = self.rows + group

    # -- decoding -------------------------------------------------------------------------------
    def step(self) -> None:
        """Read the prompts of replies that joined, or else one forward pass for every reply in
        the batch; replies that end leave it."""
        try:
            if self.joining:
                self._prefill()  # ends only the newcomers if it fails
                return
            rows = self.rows
            for reply in rows:  # Stop pressed between steps: no need to compute its next token
                if reply.cancel.is_set():
                    reply.finished = "cancelled"
            if any(r.finished for r in rows):
                self._leave()
                if not self.rows:
                    return
                rows = self.rows
            assert self.mask is not None
            mask = torch.cat([self.mask, torch.ones((len(rows), 1), dtype=torch.long, device=self.device)], 1)
            ids = torch.tensor([[r.tokens[-1]] for r in rows], device=self.device)
            positions = torch.tensor([[r.position] for r in rows], device=self.device)
            with torch.inference_mode():
                if self.decoder is not None and cache_fits(self.decoder, self.cache):
                    logits = self.decoder(ids, positions, None if bool(mask.all()) else mask, self.cache)
                else:
                    out = self.model(
                        input_ids=ids,
                        attention_mask=mask,
                        position_ids=positions,
                        use_cache=True,
                        **{self.cache_kw: self.cache},
                    )
                    logits = out.logits[:, -1, :].float()
            self.mask = mask
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
                seen = torch.tensor([reply.ids + reply.tokens], device=logits.device)
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
        leaving = [(self.rows[i], self._row_cache(i)) for i in gone]
        if not keep:
            self.rows, self.cache, self.mask = [], None, None
        else:
            index = torch.tensor(keep, device=self.device)
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[index], layer.values[index]
            self.mask = self.mask[index]
            self.rows = [self.rows[i] for i in keep]
            lead = int(self.mask.any(0).int().argmax())  # columns of padding every reply has
            if lead:
                for layer in self.cache.layers:
                    layer.keys, layer.values = layer.keys[:, :, lead:], layer.values[:, :, lead:]
                self.mask = self.mask[:, lead:]
        for reply, cache in leaving:
            self._finish(reply, cache)

    def _row_cache(self, i: int) -> Any:
        """Row i's own cache: its real tokens only, without the padding."""
        assert self.mask is not None
        if len(self.rows) == 1 and bool(self.mask.all()):
            return self.cache  # the last one out, with no padding: the joint cache is its own
        real = self.mask[i].nonzero().squeeze(1)
        own = DynamicCache(config=self.model.config)
        for n, layer in enumerate(self.cache.layers):
            own.update(layer.keys[i : i + 1].index_select(2, real), layer.values[i : i + 1].index_select(2, real), n)
        return own

    def _finish(self, reply: Reply, cache: Any) -> None:
        """Hand the reply its result, and its cache (None: nothing worth keeping) to the prefix cache."""
        assert reply.text is not None and reply.finished is not None
        try:
            reply.text.end()
        except Exception as exc:  # noqa: BLE001 - handed to the waiting caller
            self._end(reply, exc)
            return
        if self.prefix is not None and cache is not None:
            try:
                covered = [*reply.ids, *reply.tokens]
                self.prefix.put(covered[: cache.get_seq_length()], cache, reply.owner, len(reply.ids))
            except Exception:  # noqa: BLE001 - the reply is complete; only its reuse is lost
                log.exception("could not keep the reply's cache")
        decoded = Decoded(
            len(reply.tokens), reply.finished, reply.first_token_at, time.perf_counter(), tuple(reply.tokens)
        )
        self._end(reply, None, decoded)

    @staticmethod
    def _end(reply: Reply, exc: BaseException | None, decoded: Decoded | None = None) -> None:
        try:
            reply.done(decoded, exc)
        except Exception:  # noqa: BLE001 - a caller's callback must not stop the others
            log.exception("reply callback failed")

    def fail(self, exc: BaseException) -> None:
        """A decode step failed (e.g. out of memory): every reply in flight ends with that error."""
        replies, self.rows, self.cache, self.mask = self.rows + self.joining, [], None, None
        self.joining = []
        for reply in replies:
            self._end(reply, exc)


def _left_pad_mask(mask: torch.Tensor, n: int) -> torch.Tensor:
    if n <= 0:
        return mask
    return torch.cat([torch.zeros((mask.shape[0], n), dtype=mask.dtype, device=mask.device), mask], 1)


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
