"""One decode step of a Llama-family model without transformers' per-layer machinery.

Owns: the decode step (every reply in the batch feeds one token) for models whose layers are the
Llama shape (Llama, Mistral, Qwen2: RMSNorm, rotary attention, SiLU-gated MLP) on the CPU, and
a KV cache that grows in place. Prompts are still read by the model's own forward.
Why: at 1.7B in q4 a decode step took 102 ms, of which the products were 67 ms; transformers'
modules, mask building and per-call checks took ~20 ms of Python, and DynamicCache's `torch.cat`
copied the whole cache at every step (3.7 ms at 50 tokens of context, ~30 ms at 1,000).
Invariants: the arithmetic is the model's own, op for op (the same norm, rotary and attention
calls; grouped products as engine.formats makes them), so logits equal the model's forward within
float32 rounding (tests compare them step by step, with padding and grouped-query heads); any
model, cache or layer this does not know takes the model's forward instead. The cache stays a
DynamicCache whose tensors are views of a larger buffer; a cache is only ever extended by the one
reply that holds it (prefix.py), so writing past the end of a view is safe.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from localchat.engine.formats import BlockLinear, WeightOnlyLinear, computes_in_float32
from localchat.engine.kernels import NarrowLinear

log = logging.getLogger(__name__)

FAMILIES = ("llama", "mistral", "qwen2")  # model types whose decoder layers have the Llama shape
ROOM = 128  # tokens a cache grows by at once: one copy per ROOM steps instead of one a step
PROJECTIONS = (nn.Linear, NarrowLinear, WeightOnlyLinear)  # layers whose forward is a plain product


@dataclass
class _Layer:
    norm1: torch.Tensor
    norm2: torch.Tensor
    eps1: float
    eps2: float
    qkv: Any  # a grouped product of q, k and v (engine.formats.SharedInput), or None
    qkv_bias: torch.Tensor | None
    q: nn.Module
    k: nn.Module
    v: nn.Module
    o: nn.Module
    gate_up: Any
    gate: nn.Module
    up: nn.Module
    down: nn.Module


def _norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama's RMSNorm, op for op (so its rounding is the model's own)."""
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return (x * cos) + (torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin)


def _grouped(members: list[nn.Module]) -> Any:
    """The SharedInput group of these sibling layers, if they are exactly its members in order."""
    group = getattr(members[0], "group", None)
    if isinstance(members[0], BlockLinear) and group is not None and group.members == members:
        return group
    return None


def why_not(model: Any) -> str | None:
    """Why this decode step cannot run `model` (None: it can)."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in FAMILIES:
        return f"model type {getattr(config, 'model_type', None)!r} is not one of {', '.join(FAMILIES)}"
    inner = getattr(model, "model", None)
    if type(model).__name__ != f"{type(inner).__name__.removesuffix('Model')}ForCausalLM":
        return "the model is wrapped (an adapter or a custom head)"
    if getattr(config, "hidden_act", None) != "silu" or getattr(config, "mlp_bias", False):
        return "its MLP is not SiLU-gated without bias"
    if any(t != "full_attention" for t in getattr(config, "layer_types", None) or []):
        return "it has sliding-window layers"
    if getattr(config, "pretraining_tp", 1) not in (None, 1):
        return "it splits products (pretraining_tp)"
    if not computes_in_float32(model):
        return "it does not compute in float32"
    try:
        layers = list(inner.layers)
        parts = [inner.embed_tokens, inner.norm, inner.rotary_emb, model.lm_head]
        for layer in layers:
            a, m = layer.self_attn, layer.mlp
            projections = [a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj]
            if not all(isinstance(p, PROJECTIONS) and "forward" not in p.__dict__ for p in projections):
                return "a layer's products are not plain (bitsandbytes, an adapter or an offload hook)"
            parts += [layer.input_layernorm, layer.post_attention_layernorm]
    except AttributeError as exc:
        return f"its layers are not the Llama shape ({exc})"
    weights = [p for part in parts for p in [*part.parameters(), *part.buffers()]]
    if any(w.device.type != "cpu" for w in weights) or not layers:
        return "it is not on the CPU"
    return None


class Decoder:
    """The decode step for one model: `logits = decoder(ids, positions, mask, cache)`."""

    def __init__(self, model: Any):
        inner = model.model
        self.embed, self.rotary, self.head = inner.embed_tokens, inner.rotary_emb, model.lm_head
        self.final, self.final_eps = inner.norm.weight, inner.norm.variance_epsilon
        first = inner.layers[0].self_attn
        self.head_dim = first.head_dim
        self.scaling = first.scaling
        self.heads = model.config.num_attention_heads
        self.kv_heads = model.config.num_key_value_heads
        self.layers = [self._layer(layer) for layer in inner.layers]

    @staticmethod
    def _layer(layer: nn.Module) -> _Layer:
        a, m = layer.self_attn, layer.mlp
        qkv = _grouped([a.q_proj, a.k_proj, a.v_proj])
        biases = [p.bias for p in (a.q_proj, a.k_proj, a.v_proj)]
        qkv_bias = None
        if qkv is not None and any(b is not None for b in biases):
            widths = [p.out_features for p in (a.q_proj, a.k_proj, a.v_proj)]
            qkv_bias = torch.cat([b if b is not None else torch.zeros(w) for b, w in zip(biases, widths, strict=True)])
        return _Layer(
            layer.input_layernorm.weight,
            layer.post_attention_layernorm.weight,
            layer.input_layernorm.variance_epsilon,
            layer.post_attention_layernorm.variance_epsilon,
            qkv,
            qkv_bias,
            a.q_proj,
            a.k_proj,
            a.v_proj,
            a.o_proj,
            _grouped([m.gate_proj, m.up_proj]),
            m.gate_proj,
            m.up_proj,
            m.down_proj,
        )

    def __call__(
        self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None, cache: Any
    ) -> torch.Tensor:
        """One step: `ids` and `positions` [rows, 1], `mask` [rows, cached + 1] (1 for a real
        token; None: no padding), `cache` a DynamicCache holding every layer's past; returns the
        next-token logits [rows, vocab] and extends the cache by one token."""
        rows = ids.shape[0]
        d, hq, hk = self.head_dim, self.heads, self.kv_heads
        h = self.embed(ids).reshape(rows, -1).float()
        cos, sin = self.rotary(h, positions)  # [rows, 1, d]
        keep = None if mask is None else mask.bool()[:, None, None, :]
        for layer, past in zip(self.layers, cache.layers, strict=True):
            x = _norm(h, layer.norm1, layer.eps1)
            if layer.qkv is not None:
                qkv = layer.qkv.product(x)
                if layer.qkv_bias is not None:
                    qkv = qkv + layer.qkv_bias
                qk = _rotate(qkv[:, : (hq + hk) * d].view(rows, hq + hk, d), cos, sin)
                q, k = qk[:, :hq], qk[:, hq:]
                v = qkv[:, (hq + hk) * d :].view(rows, hk, d)
            else:
                q = _rotate(layer.q(x).view(rows, hq, d), cos, sin)
                k = _rotate(layer.k(x).view(rows, hk, d), cos, sin)
                v = layer.v(x).view(rows, hk, d)
            keys, values = _append(past, k, v)
            a = self._attend(q, keys, values, keep, rows)
            h = h + layer.o(a)
            x = _norm(h, layer.norm2, layer.eps2)
            if layer.gate_up is not None:
                gu = layer.gate_up.product(x)
                g, u = gu[:, : layer.gate.out_features], gu[:, layer.gate.out_features :]
            else:
                g, u = layer.gate(x), layer.up(x)
            h = h + layer.down(F.silu(g) * u)
        return self.head(_norm(h, self.final, self.final_eps)).float()

    def _attend(
        self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, keep: torch.Tensor | None, rows: int
    ) -> torch.Tensor:
        """Attention of one query per row over the cache, as transformers' sdpa does it for one
        query: grouped-query heads through enable_gqa without a mask, packed per key head with one."""
        hq, hk = self.heads, self.kv_heads
        q = q.unsqueeze(2)  # [rows, hq, 1, d]
        if hq == hk:
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=keep, scale=self.scaling)
        elif keep is None:
            out = F.scaled_dot_product_attention(q, keys, values, scale=self.scaling, enable_gqa=True)
        else:
            packed = q.reshape(rows, hk, hq // hk, self.head_dim)
            out = F.scaled_dot_product_attention(packed, keys, values, attn_mask=keep, scale=self.scaling)
        return out.reshape(rows, hq * self.head_dim)


def _append(layer: Any, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Write one token's keys and values ([rows, heads, d]) after the layer's cache: in place when
    its tensors are the start of the buffers this step made for it, else into new buffers with
    ROOM places more (the first step after a prompt, or after the batch changed its rows)."""
    length = layer.keys.shape[2]
    room = getattr(layer, "localchat_room", None)
    if room is None or not (_starts(room[0], layer.keys) and _starts(room[1], layer.values)):
        room = (_buffer(layer.keys), _buffer(layer.values))
        layer.localchat_room = room  # inference tensors keep no _base: the layer holds its buffers
    layer.keys, layer.values = room[0][:, :, : length + 1], room[1][:, :, : length + 1]
    layer.keys[:, :, length] = k
    layer.values[:, :, length] = v
    return layer.keys, layer.values


def _starts(buffer: torch.Tensor, t: torch.Tensor) -> bool:
    """Is t ([rows, heads, length, d]) the start of `buffer` with a place left behind it?"""
    return (
        buffer.data_ptr() == t.data_ptr()
        and buffer.stride() == t.stride()
        and buffer.shape[:2] == t.shape[:2]
        and buffer.shape[3] == t.shape[3]
        and buffer.shape[2] > t.shape[2]
    )


def _buffer(t: torch.Tensor) -> torch.Tensor:
    """A buffer holding t ([rows, heads, length, d]) with ROOM places more."""
    buffer = torch.empty((*t.shape[:2], t.shape[2] + ROOM, t.shape[3]), dtype=t.dtype, device=t.device)
    buffer[:, :, : t.shape[2]] = t
    return buffer


def decoder_for(model: Any) -> Decoder | None:
    """The lean decode step for `model`, or None where the model's forward must run."""
    reason = why_not(model)
    if reason is not None:
        log.debug("decoding through the model's forward: %s", reason)
        return None
    return Decoder(model)


def cache_fits(decoder: Decoder, cache: Any) -> bool:
    """Does `cache` hold every layer's past as DynamicCache tensors this step can extend?"""
    layers = getattr(cache, "layers", None)
    return (
        layers is not None
        and len(layers) == len(decoder.layers)
        and all(type(layer).__name__ == "DynamicLayer" and layer.is_initialized for layer in layers)
    )
