"""Faster matrix products for decoding on CPU, chosen by measuring them on the loaded model.

Owns: the one change localchat makes to a loaded model's arithmetic. Decoding multiplies every
weight matrix by a handful of rows (one per reply in the batch); for that shape MKL's default
float32 paths (gemv for one row, a short-and-wide gemm for a few) reach a fraction of the memory
bandwidth, while the same product written as `W @ xᵀ` (a tall-and-narrow gemm) reaches most of it.
Measured on SmolLM2-135M (fp32, 2-core AVX-512, MKL 2024.2), the 211 products of one decode step
took 34 ms for one row and 51-54 ms for 2-4 rows with nn.Linear, 16-18 ms with `W @ xᵀ` (one row
padded to two, which measured faster than gemv). Prompts (many rows) keep nn.Linear.
Invariants: only plain float32 nn.Linear layers on the CPU change, and only where a measurement
at load time (on 64 MB of the model's own weights, at 1, 4 and 8 rows) says the narrow product is
faster on this machine; a layer's weights are the same tensors, so nothing is copied and tied
weights stay tied.
"""

from __future__ import annotations

import logging
import time

import torch
from torch import nn

log = logging.getLogger(__name__)

NARROW_ROWS = 8  # the most rows measured at load (a full batch); above, nn.Linear's gemm (12+ rows: as fast)
MIN_GAIN = 1.2  # switch only when the narrow product is clearly faster, so noise never decides
SAMPLE_BYTES = 64 * 2**20  # weights measured at load: more than the caches hold, as in a decode step


class NarrowLinear(nn.Linear):
    """nn.Linear that multiplies a few rows as `W @ xᵀ`; many rows go through nn.Linear."""

    narrow_rows = NARROW_ROWS  # set per layer from the measurement at load

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
        if not 0 < rows <= self.narrow_rows:
            return super().forward(x)
        return narrow_product(x, self.weight, self.bias)


def narrow_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weightᵀ (+ bias) for a few rows of x, computed as weight @ xᵀ."""
    flat = x.reshape(-1, x.shape[-1])
    rows = flat.shape[0]
    if rows == 1:
        # two real columns take the gemm path, which beat gemv for one (a stride-0 view did not)
        flat = flat.repeat(2, 1)
    out = weight @ flat.t() if bias is None else torch.addmm(bias.unsqueeze(1), weight, flat.t())
    return out[:, :rows].t().contiguous().reshape(*x.shape[:-1], weight.shape[0])


def _eligible(module: nn.Module) -> bool:
    return (
        type(module) is nn.Linear  # not bitsandbytes, PEFT or other subclasses with their own forward
        and "forward" not in module.__dict__  # no hook wrapped its forward (accelerate offload)
        and module.weight.dtype == torch.float32
        and module.weight.device.type == "cpu"
    )


def measure(weights: list[torch.Tensor], rows: int, tries: int = 5) -> tuple[float, float]:
    """Seconds to multiply `rows` rows by each of `weights` in turn: nn.Linear's way, and the
    narrow way (the best of `tries`, taken in turns, so a burst of other work slows both)."""
    inputs = {w.shape[1]: torch.randn(rows, w.shape[1], dtype=w.dtype) for w in weights}

    def stock() -> None:
        for w in weights:
            nn.functional.linear(inputs[w.shape[1]], w)

    def narrow() -> None:
        for w in weights:
            narrow_product(inputs[w.shape[1]], w)

    best = [float("inf"), float("inf")]
    with torch.inference_mode():
        stock(), narrow()  # warm-up
        for _ in range(tries):
            for i, way in enumerate((stock, narrow)):
                start = time.perf_counter()
                way()
                best[i] = min(best[i], time.perf_counter() - start)
    return best[0], best[1]


def sample(layers: list[nn.Linear]) -> list[torch.Tensor]:
    """The weights to measure: the largest (often the output layer, tall and narrow) and, in model
    order, enough of the others (the layers' own shapes) to pass SAMPLE_BYTES, so that they come
    from memory as in a decode step."""
    largest = max(layers, key=lambda m: m.weight.numel())
    weights, size = [largest.weight.detach()], 0
    for layer in layers:
        if size >= SAMPLE_BYTES:
            break
        if layer is not largest:
            weights.append(layer.weight.detach())
            size += layer.weight.nbytes
    return weights


def use_narrow_products(model: nn.Module) -> str | None:
    """Swap the model's eligible linear layers to NarrowLinear if that measures faster here:
    clearly faster for 1 and 4 rows; up to 8 rows (a full batch) if not slower there, else up to 4.
    Returns a line for the model's details, or None when nothing changed."""
    layers = [m for m in model.modules() if _eligible(m)]
    if not layers:
        return None
    weights = sample(layers)
    timings = {rows: measure(weights, rows) for rows in (1, 4, NARROW_ROWS)}
    faster = all(stock >= MIN_GAIN * narrow for rows, (stock, narrow) in timings.items() if rows < NARROW_ROWS)
    stock8, narrow8 = timings[NARROW_ROWS]
    limit = NARROW_ROWS if narrow8 <= stock8 else 4
    summary = ", ".join(
        f"{rows} row{'s' * (rows > 1)} {s * 1e3:.1f} → {n * 1e3:.1f} ms" for rows, (s, n) in timings.items()
    )
    mib = sum(w.nbytes for w in weights) / 2**20
    log.info(
        "narrow products %s, up to %d rows (%.0f MiB of weights: %s)", "on" if faster else "off", limit, mib, summary
    )
    if not faster:
        return None
    for layer in layers:
        layer.__class__ = NarrowLinear  # same parameters and buffers; only forward differs
        layer.narrow_rows = limit
    one, four = (timings[r][0] / timings[r][1] for r in (1, 4))
    return f"faster CPU decoding on: narrow products, measured at load {one:.1f}x for one reply, {four:.1f}x for four"
