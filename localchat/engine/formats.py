"""Weight formats for CPU decoding, chosen by measuring them on the loaded model's own weights.

Owns: the weight-only formats a float32 model's linear layers can take on the CPU, and the choice
among them for `quantization auto`. Decoding a 0.5-8B model reads every weight once per token, so
its speed is set by the bytes read and by how fast this CPU's kernels turn them into products:
  - fp32: 4 bytes a weight (nn.Linear, or the narrow product of engine.kernels);
  - bf16: 2 bytes; rows are rounded to bf16 and multiplied by oneDNN/MKL's bf16 kernels;
  - int8: 1 byte plus a scale per output row (symmetric, per channel; torch's _weight_int8pack_mm);
  - int4: half a byte plus a scale and zero per 32 weights (torch's _weight_int4pack_mm_for_cpu);
  - q8: blocks of 32 weights in GGUF's Q8_0 layout (1.06 bytes a weight); q4: super-blocks of 256
    with 8-bit scales and minimums per block of 32, llama.cpp's Q4_K scheme (0.58 bytes a weight);
    multiplied by engine/quant_kernels.c in int8 with AVX2 as llama.cpp does; built at first use
    where a C compiler is (engine.native), measured ~2x the bandwidth of torch's int8 kernel.
A prompt (more than DECODE_ROWS rows) multiplies in float32 on weights widened for that call:
CPUs without native bf16 (AVX2, most AVX-512) compute bf16 and int products several times slower
than float32 per row, which made a 1,000-token prompt 5x slower to read in bf16 (measured at 1.7B).
Invariants: activations, norms and the KV cache stay float32; only nn.Linear layers on the CPU
change; `auto` takes formats of equal quality (fp32, bf16, int8, q8: measured perplexity within
0.5%), and q4 for models of FOUR_BIT_FROM and more (the size where 4-bit is what people run, and
where its cost is stated: bench/quality.py), only when a measurement at load says the format
decodes clearly faster here; of formats equally fast (within 5%), the smallest.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from localchat.engine import native
from localchat.engine.kernels import SAMPLE_BYTES, NarrowLinear, narrow_product, sample

log = logging.getLogger(__name__)

DECODE_ROWS = 16  # up to this many rows (replies in a batch) use the format's own kernel
# q8/q4 kernels cost ~0.6 of a one-row step per extra row; widening every weight to float32 costs
# ~1.5 s at 1.7B before the first product: short prompts read faster in the kernels (1.7B, 50
# tokens: 3.3 s widened)
BLOCK_ROWS = 64
INT4_GROUP = 32  # weights sharing a scale and zero (llama.cpp's Q4 blocks are 32 too)
MIN_GAIN = 1.15  # leave float32 only when another format decodes clearly faster
# Perplexity of a fixed text on the bundled SmolLM2-135M (bench/quality.py, decode path), fp32 30.49:
# bf16 weights 0.996x, int8 0.989x, q8 0.994x (equal, within the rounding), int4 1.074x (a real
# loss): `auto` may take these; q4 (cosine 0.978 on MiniLM's trained weights) from FOUR_BIT_FROM.
EQUAL_QUALITY = ("fp32", "bf16", "int8", "q8")
BYTES_PER_WEIGHT = {"fp32": 4.0, "bf16": 2.0, "int8": 1.0, "int4": 0.5, "q8": 34 / 32, "q4": 148 / 256}
# From ~1B parameters (4 GiB of float32 linear weights) `auto` may also take q4: a 4-bit format is
# what such models are run in (llama.cpp's Q4_K_M), and q4 decodes ~1.7x faster than q8 here.
FOUR_BIT_FROM = 4 * 2**30
TIE = 1.05  # formats within 5% of the fastest count as equally fast: the smallest of them wins
# Below this many bytes of float32 linear weights (~0.25B parameters) a decode step is mostly Python
# and kernel overhead, and float32 with narrow products measured fastest (SmolLM2-135M: 36.7 tok/s).
MEASURED_FROM = 2**30


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x as float32 rows of its last dimension (what every format's kernel takes)."""
    return x.reshape(-1, x.shape[-1]).float()


class Scratch:
    """The float32 buffer a model's layers widen their weights into for a prompt, shared by all of
    them and grown to the largest: widening in place into memory already mapped measured ~10x
    faster than a new tensor per layer (14 vs 143 ms for 8192x2048 int8 weights), which made a
    50-token prompt 3x slower to read than in float32. One forward at a time (the engine's worker)."""

    def __init__(self) -> None:
        self._buffer = torch.empty(0, dtype=torch.float32)

    def take(self, shape: torch.Size) -> torch.Tensor:
        size = shape[0] * shape[1]
        if self._buffer.numel() < size:
            self._buffer = torch.empty(size, dtype=torch.float32)  # never the default: a load may change it
        return self._buffer[:size].view(shape)


class WeightOnlyLinear(nn.Module):
    """A linear layer whose weights are stored in a narrower format; products widen activations
    only as far as the format's kernel needs. Subclasses store weights and define `_decode` (a few
    rows, float32 in, float32 out) and `_wide_weight` (the weights as float32, for prompts)."""

    format = ""

    def __init__(self, linear: nn.Linear, scratch: Scratch | None = None):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float(), requires_grad=False)
        self.scratch = scratch or Scratch()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = _rows(x)
        return self._finish(self._decode(flat) if flat.shape[0] <= self.kernel_rows() else self._prompt(flat), x)

    def _finish(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The rows' products (float32) as this layer's output for `x`: bias, x's dtype and shape."""
        if self.bias is not None:
            out = out + self.bias
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def kernel_rows(self) -> int:
        """Up to how many rows the format's own kernel multiplies (more: widened weights)."""
        return DECODE_ROWS

    def _prompt(self, flat: torch.Tensor) -> torch.Tensor:
        return F.linear(flat, self._wide_weight())

    def _decode(self, flat: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _wide_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, format={self.format}"


class BF16Linear(WeightOnlyLinear):
    format = "bf16"

    def __init__(self, linear: nn.Linear, scratch: Scratch | None = None):
        super().__init__(linear, scratch)
        self.register_buffer("weight", linear.weight.detach().to(torch.bfloat16))

    def _decode(self, flat: torch.Tensor) -> torch.Tensor:
        return F.linear(flat.to(torch.bfloat16), self.weight).float()

    def _wide_weight(self) -> torch.Tensor:
        return self.scratch.take(self.weight.shape).copy_(self.weight)


class Int8Linear(WeightOnlyLinear):
    format = "int8"

    def __init__(self, linear: nn.Linear, scratch: Scratch | None = None):
        super().__init__(linear, scratch)
        w = linear.weight.detach().float()
        scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-12).to(torch.bfloat16)  # the kernel takes bf16
        self.register_buffer("qweight", torch.round(w / scales.float()[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scales", scales)
        self.register_buffer("wide_scales", scales.float()[:, None].clone(), persistent=False)

    def _decode(self, flat: torch.Tensor) -> torch.Tensor:
        return torch._weight_int8pack_mm(flat.to(torch.bfloat16), self.qweight, self.scales).float()

    def _wide_weight(self) -> torch.Tensor:
        return self.scratch.take(self.qweight.shape).copy_(self.qweight).mul_(self.wide_scales)


class Int4Linear(WeightOnlyLinear):
    """Asymmetric 4-bit in groups of INT4_GROUP along each row: w = (q - 8) * scale + zero."""

    format = "int4"

    def __init__(self, linear: nn.Linear, scratch: Scratch | None = None):
        super().__init__(linear, scratch)
        w = linear.weight.detach().float()
        n, k = w.shape
        groups = w.reshape(n, k // INT4_GROUP, INT4_GROUP)
        low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
        scale = ((high - low) / 15).clamp(min=1e-12)
        q = torch.clamp(torch.round((groups - low) / scale), 0, 15).to(torch.int32).reshape(n, k)
        zero = low + 8 * scale
        pairs = torch.cat([scale, zero], -1).transpose(0, 1).contiguous()  # [k / group, n, 2]
        self.register_buffer("packed", torch._convert_weight_to_int4pack_for_cpu(q, 2))
        self.register_buffer("scales_zeros", pairs.to(torch.bfloat16))

    def _decode(self, flat: torch.Tensor) -> torch.Tensor:
        return torch._weight_int4pack_mm_for_cpu(
            flat.to(torch.bfloat16), self.packed, INT4_GROUP, self.scales_zeros
        ).float()

    def _prompt(self, flat: torch.Tensor) -> torch.Tensor:
        # torch keeps no float copy and its packing is private: prompts use the same kernel
        return self._decode(flat)

    @staticmethod
    def fits(linear: nn.Linear) -> bool:
        return linear.in_features % INT4_GROUP == 0 and linear.out_features % 64 == 0


class BlockLinear(WeightOnlyLinear):
    """Weights in blocks of 32 (q8 or q4: engine/quant_kernels.c); needs the compiled kernels."""

    def __init__(self, linear: nn.Linear, scratch: Scratch | None = None):
        super().__init__(linear, scratch)
        kernels = native.kernels()
        if kernels is None:
            raise RuntimeError("the compiled CPU kernels are not available here")
        self.kernels = kernels
        self.group: SharedInput | None = None
        self.register_buffer("blocks", kernels.pack(self.format, linear.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.group is not None and self.group.enabled and x.numel() // x.shape[-1] <= self.kernel_rows():
            return self._finish(self.group.take(self, x), x)
        return super().forward(x)

    def kernel_rows(self) -> int:
        return max(DECODE_ROWS, BLOCK_ROWS)

    def _decode(self, flat: torch.Tensor) -> torch.Tensor:
        return self.kernels.matmul(self.format, self.blocks, self.in_features, flat)

    def _wide_weight(self) -> torch.Tensor:
        out = self.scratch.take(torch.Size((self.out_features, self.in_features)))
        return self.kernels.unpack(self.format, self.blocks, self.in_features, out)

    @classmethod
    def fits(cls, linear: nn.Linear) -> bool:
        return native.fits(cls.format, linear.in_features)


class SharedInput:
    """Sibling layers that multiply the same input in a decode step (an attention's q, k and v; an
    MLP's gate and up): their blocks are one buffer (each layer's weights a view of its rows), and
    the first of them called makes one kernel call for all; the others take their part. At 360M
    a decode step made 7 kernel calls a layer, each with its thread start-up; grouped, it makes 4.
    Reuse is by the input's identity (transformers passes the same tensor to each sibling); a model
    that does not is noticed (its parts go unused) and its group is switched off."""

    NAMES = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))

    def __init__(self, members: list[BlockLinear]):
        self.members = members
        self.blocks = torch.cat([m.blocks for m in members])
        start = 0
        for m in members:
            m.blocks = self.blocks[start : start + m.out_features]  # a view: no second copy
            m.group = self
            start += m.out_features
        self.enabled = True
        self._input: torch.Tensor | None = None
        self._parts: dict[int, torch.Tensor] = {}
        self._unused = 0

    def product(self, x: torch.Tensor) -> torch.Tensor:
        """One kernel call for every member: [rows, the members' widths side by side]."""
        first = self.members[0]
        return first.kernels.matmul(first.format, self.blocks, first.in_features, _rows(x))

    def take(self, member: BlockLinear, x: torch.Tensor) -> torch.Tensor:
        if self._input is not x or id(member) not in self._parts:
            if self._parts:
                self._unused += 1  # computed parts nobody took: not the same input after all
                if self._unused >= 2:
                    self.enabled, self._input, self._parts = False, None, {}
                    log.info("grouped products off for %s: its layers take different inputs", member)
                    return member.kernels.matmul(member.format, member.blocks, member.in_features, _rows(x))
            out = self.product(x)
            self._input, self._parts, start = x, {}, 0
            for m in self.members:
                self._parts[id(m)] = out[:, start : start + m.out_features]
                start += m.out_features
        part = self._parts.pop(id(member))
        if not self._parts:
            self._input, self._unused = None, 0  # all taken: an earlier stray forward is forgiven
        return part if part.is_contiguous() else part.contiguous()

    @classmethod
    def join(cls, model: nn.Module) -> int:
        """Group the siblings NAMES names wherever all are block layers of one format and width."""
        groups = 0
        for parent in model.modules():
            for names in cls.NAMES:
                members = [getattr(parent, n, None) for n in names]
                if all(isinstance(m, BlockLinear) and m.group is None for m in members):
                    kinds = {(type(m), m.in_features) for m in members}
                    if len(kinds) == 1:
                        cls(members)
                        groups += 1
        return groups


class Q8Linear(BlockLinear):
    format = "q8"


class Q4Linear(BlockLinear):
    format = "q4"


KINDS: dict[str, type[WeightOnlyLinear]] = {
    "bf16": BF16Linear,
    "int8": Int8Linear,
    "int4": Int4Linear,
    "q8": Q8Linear,
    "q4": Q4Linear,
}
FORMATS = ("fp32", *KINDS)


def fits(kind: type[WeightOnlyLinear], linear: nn.Linear) -> bool:
    """Can `linear` take this format (shape, and the compiled kernels for q8 and q4)?"""
    if issubclass(kind, BlockLinear):
        return kind.fits(linear) and native.kernels() is not None
    return kind is not Int4Linear or Int4Linear.fits(linear)


def available(formats: Sequence[str]) -> list[str]:
    """The formats of `formats` this machine can run (q8 and q4 need the compiled kernels)."""
    return [f for f in formats if f == "fp32" or not issubclass(KINDS[f], BlockLinear) or native.kernels() is not None]


HALF = (torch.bfloat16, torch.float16)


def eligible(module: nn.Module) -> bool:
    """A plain linear layer on the CPU in float32, or in the half precision of a checkpoint loaded
    as stored (loading.py loads large models so, halving the load's peak memory)."""
    return (
        type(module) in (nn.Linear, NarrowLinear)
        and "forward" not in module.__dict__  # no hook wrapped its forward (accelerate offload)
        and module.weight.dtype in (torch.float32, *HALF)
        and module.weight.device.type == "cpu"
    )


class WideEmbedding(nn.Embedding):
    """An embedding kept in the checkpoint's half precision (one row is read per token, so its
    format costs no speed) that hands float32 vectors on, as the rest of the model computes."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - nn.Embedding's name
        return super().forward(input).float()


def computes_in_float32(model: nn.Module) -> bool:
    """Are the model's activations float32: every parameter float32, but for the weights of the
    converted layers and of half-precision embeddings that widen what they hand on?"""
    return all(
        p.dtype == torch.float32
        for m in model.modules()
        if not isinstance(m, WideEmbedding)
        for p in m.parameters(recurse=False)
    )


def widen(model: nn.Module) -> None:
    """Make everything but the converted layers float32 after a half-precision load, one module at
    a time (never the whole model at once: that doubled a 7B load's 14 GB). Embeddings keep their
    storage and widen what they hand on; a linear layer no format took becomes float32 alone."""
    for module in model.modules():
        if type(module) is nn.Embedding and module.weight.dtype in HALF:
            module.__class__ = WideEmbedding
            # its own memory: a view into the checkpoint's memory map kept the whole file resident
            # (RSS 4.9 GB at 1.7B where the model holds 1.3 GB)
            module.weight.data = module.weight.data.clone()
            continue
        if isinstance(module, WeightOnlyLinear):
            continue
        for param in module.parameters(recurse=False):
            if param.dtype in HALF:
                param.data = param.data.float()
        for name, buffer in module.named_buffers(recurse=False):
            if buffer.dtype in HALF:
                setattr(module, name, buffer.float())


def convert(model: nn.Module, fmt: str) -> int:
    """Swap every eligible linear layer of `model` to `fmt` in place (layer by layer, so the float32
    copy of one layer at a time is the extra memory); returns how many layers changed. A layer that
    shares its weight with another module (a tied output layer) gets its own copy in `fmt`."""
    if fmt == "fp32":
        return 0
    kind = KINDS[fmt]
    changed, scratch = 0, Scratch()
    get_output = getattr(model, "get_output_embeddings", None)
    output = get_output() if callable(get_output) else None
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            # the output layer takes q8 under q4, as llama.cpp's Q4_K_M keeps it at 6 bits: it
            # alone made the bundled model's perplexity 1.085x fp32 in q4, against 1.004x with it in q8
            own = Q8Linear if kind is Q4Linear and child is output else kind
            if own is Q4Linear and eligible(child) and not fits(own, child):
                own = Q8Linear  # rows of 32 but not 64 weights: q4's blocks come in pairs
            if not eligible(child) or not fits(own, child):
                continue
            setattr(parent, name, own(child, scratch))
            changed += 1
    if issubclass(kind, BlockLinear):
        SharedInput.join(model)
    return changed


@dataclass(frozen=True)
class Choice:
    format: str  # one of FORMATS
    seconds: dict[str, float]  # per format: one decode step's products over the sample, one row

    def note(self) -> str:
        base = self.seconds["fp32"]
        ratios = ", ".join(f"{fmt} {base / s:.2f}x" for fmt, s in self.seconds.items() if fmt != "fp32")
        return f"CPU weight format {self.format}: measured at load against fp32 ({ratios})"


def _time(fns: Sequence[Callable[[], object]], tries: int) -> list[float]:
    """Best seconds of each function, taken in turns so a burst of other work slows them all."""
    best = [float("inf")] * len(fns)
    with torch.inference_mode():
        for fn in fns:
            fn()  # warm-up
        for _ in range(tries):
            for i, fn in enumerate(fns):
                start = time.perf_counter()
                fn()
                best[i] = min(best[i], time.perf_counter() - start)
    return best


def measure(weights: list[torch.Tensor], formats: Sequence[str], tries: int = 5) -> dict[str, float]:
    """Seconds for one row times each sampled weight, per format (fp32: the better of nn.Linear
    and the narrow product, as engine.kernels would choose)."""
    layers = {fmt: [] for fmt in formats if fmt != "fp32"}
    for w in weights:
        linear = nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta")  # no random init to replace
        linear.weight = nn.Parameter(w, requires_grad=False)
        for fmt in layers:
            if fits(KINDS[fmt], linear):
                layers[fmt].append(KINDS[fmt](linear))
    inputs = {w.shape[1]: torch.randn(1, w.shape[1]) for w in weights}
    fns: dict[str, Callable[[], object]] = {
        "fp32 stock": lambda: [F.linear(inputs[w.shape[1]], w) for w in weights],
        "fp32 narrow": lambda: [narrow_product(inputs[w.shape[1]], w) for w in weights],
    }
    for fmt, mods in layers.items():
        fns[fmt] = lambda mods=mods: [m(inputs[m.in_features]) for m in mods]
    timed = dict(zip(fns, _time(list(fns.values()), tries), strict=True))
    out = {"fp32": min(timed.pop("fp32 stock"), timed.pop("fp32 narrow"))}
    out.update(timed)
    return out


def choose(model: nn.Module, allowed: Sequence[str] = EQUAL_QUALITY) -> Choice | None:
    """Measure `allowed` formats on a sample of the model's float32 CPU weights and pick the one
    that decodes fastest (float32 unless another is MIN_GAIN faster); None when nothing is eligible."""
    layers = [m for m in model.modules() if eligible(m)]
    if not layers:
        return None
    # the largest is often the output layer: at 1.7B 400 MB as float32, that each format converted
    # whole (4 x 1.6 s at load); its first rows, up to SAMPLE_BYTES, have its shape and speed per byte
    weights = [w[: max(1, SAMPLE_BYTES // (4 * w.shape[1]))].float() for w in sample(layers)]
    seconds = measure(weights, [f for f in FORMATS if f in available(allowed)])
    # float32 is always timed (the note's baseline), but is a candidate only where allowed
    candidates = {f: s for f, s in seconds.items() if f in allowed} or seconds
    fastest = min(candidates.values())
    best = min((f for f, s in candidates.items() if s <= TIE * fastest), key=BYTES_PER_WEIGHT.__getitem__)
    keep_fp32 = "fp32" in candidates and seconds["fp32"] < MIN_GAIN * seconds[best]
    return Choice("fp32" if keep_fp32 else best, seconds)


def auto_formats(model: nn.Module) -> tuple[str, ...]:
    """What `auto` may choose among for this model: formats of equal quality, and q4 from
    FOUR_BIT_FROM; empty below MEASURED_FROM (float32 with narrow products measured fastest)."""
    size = sum(m.weight.numel() * 4 for m in model.modules() if eligible(m))  # as float32
    if size < MEASURED_FROM:
        return ()
    return EQUAL_QUALITY + (("q4",) if size >= FOUR_BIT_FROM else ())


def use_fastest_format(
    model: nn.Module, allowed: Sequence[str] | None = None, build_dir: Path | None = None
) -> str | None:
    """Convert the model to the fastest allowed format measured here (by default what `auto` may
    choose for its size), leave the rest float32; a line for its details, or None. `build_dir`:
    where the compiled kernels are kept (the data dir's cache), built only when formats are measured."""
    allowed = auto_formats(model) if allowed is None else allowed
    if allowed:
        native.kernels(build_dir)
    if any(eligible(m) and m.weight.dtype in HALF for m in model.modules()):
        # loaded as stored in 16 bits: float32 weights would double the memory for no accuracy
        allowed = [f for f in allowed if f != "fp32"] or ["bf16"]
    choice = choose(model, allowed) if allowed else None
    changed = convert(model, choice.format) if choice else 0
    widen(model)
    release_freed_memory()
    if choice is None:
        return None
    log.info("%s (%d layers)", choice.note(), changed)
    return choice.note()


def release_freed_memory() -> None:
    """Hand the float32 weights just replaced back to the system: glibc keeps large freed blocks
    in the process (at 1.7B, RSS stayed at 7.2 GB after int8 had replaced 6.8 GB of float32)."""
    import gc

    gc.collect()
    trim_heap()


def trim_heap() -> None:
    """Return the C heap's free pages to the system (glibc's malloc_trim; elsewhere nothing). The
    engine calls it whenever its worker runs out of work: the activations of a long prompt and the
    KV caches' growth left ~1 GB free but resident at 1.7B."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, looked up once (the engine trims after every burst of replies)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # another C library (musl): nothing to trim
        return None
