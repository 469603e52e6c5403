"""Memory per load option, from a model's parameter counts: fp32, bf16/fp16, bitsandbytes 8-bit and
4-bit, plus the KV cache for a context length.

Owns: the arithmetic and the report the Model panel and the catalog show. Invariant: no torch (the
server sizes catalog entries with it); the counts come from engine/fit.py, which builds the model on
the `meta` device, and estimates are checked against real loads in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from localchat.hardware import gib

OPTIONS = ("float32", "bfloat16", "8bit", "4bit")  # most accurate first
QUANT_OF = {"float32": "none", "bfloat16": "none", "8bit": "8bit", "4bit": "4bit"}
HEADROOM = 0.85  # of the free memory: activations, the tokenizer and the rest of the process need some
# The KV cache grows with the conversation; without a cap, size it for a long chat, not for the
# model's whole window (131,072 tokens for some models would refuse models that run fine).
PRACTICAL_CONTEXT = 8192
OVERHEAD_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Counts:
    quantizable: int  # weights of nn.Linear layers that bitsandbytes replaces
    quantizable_rows: int  # their output features (8-bit keeps one scale per row)
    other: int  # embeddings, norms, biases, an untied lm_head: kept in the load dtype
    layers: int
    kv_heads: int
    head_dim: int
    context: int

    @property
    def total(self) -> int:
        return self.quantizable + self.other


@dataclass(frozen=True)
class Estimate:
    option: str
    weights_bytes: int
    cache_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.cache_bytes + OVERHEAD_BYTES


def estimate(
    counts: Counts, option: str, context: int, rest_dtype_bytes: int = 4, double_quant: bool = True
) -> Estimate:
    """Bytes for one option. `rest_dtype_bytes`: what the layers bitsandbytes leaves alone are
    stored in (the load dtype: 4 for fp32 on a CPU, 2 for bf16/fp16 on a GPU)."""
    if option == "float32":
        weights, kv = counts.total * 4, 4
    elif option == "bfloat16":
        weights, kv = counts.total * 2, 2
    elif option == "8bit":
        weights = counts.quantizable + counts.quantizable_rows * 4 + counts.other * rest_dtype_bytes
        kv = rest_dtype_bytes
    else:  # nf4/fp4: half a byte a weight, plus one scale per 64 (fp32, or 8-bit with double quantization)
        scales = counts.quantizable / 64 * (1 + 4 / 256 if double_quant else 4)
        weights = int(counts.quantizable / 2 + scales) + counts.other * rest_dtype_bytes
        kv = rest_dtype_bytes  # bitsandbytes hands its output back in the input's dtype
    cache = 2 * counts.layers * counts.kv_heads * counts.head_dim * context * kv
    return Estimate(option, int(weights), int(cache))


@dataclass(frozen=True)
class FitReport:
    name: str
    device: str
    free_bytes: int
    context: int
    estimates: tuple[Estimate, ...]
    unquantized: str = "float32"  # what `none` means here: float32 or bfloat16
    bitsandbytes: bool = True

    def fits(self, e: Estimate) -> bool:
        return e.total_bytes <= self.free_bytes * HEADROOM

    def best(self) -> Estimate | None:
        """The most accurate option that fits: unquantized in the load dtype (fp32 on a CPU, bf16
        on a GPU, unless asked otherwise), then 8-bit, then 4-bit (where bitsandbytes runs)."""
        order = (self.unquantized, "8bit", "4bit") if self.bitsandbytes else (self.unquantized,)
        for option in order:
            e = next(x for x in self.estimates if x.option == option)
            if self.fits(e):
                return e
        return None

    def describe(self) -> str:
        where = "on the GPU" if self.device == "cuda" else "in RAM"
        best = self.best()
        labels = {"float32": "fp32", "bfloat16": "bf16", "8bit": "8-bit", "4bit": "4-bit"}
        if best is None:
            smallest = min(self.estimates, key=lambda e: e.total_bytes)
            head = (
                f"**Does not fit** {where}: even {labels[smallest.option]} needs {gib(smallest.total_bytes)}, "
                f"and {gib(int(self.free_bytes * HEADROOM))} of the {gib(self.free_bytes)} free can be used."
            )
        else:
            head = (
                f"**Fits {where} in {labels[best.option]}** ({gib(best.total_bytes)} of {gib(self.free_bytes)} free)."
            )
        rows = [
            f"- {labels[e.option]}: {gib(e.total_bytes)} ({gib(e.weights_bytes)} weights + "
            f"{gib(e.cache_bytes)} for a {self.context:,}-token context) {'✓' if self.fits(e) else '✗ too big'}"
            for e in self.estimates
        ]
        return "\n".join([head, *rows])
