"""A small curated catalog of good instruct models in several sizes (all with .safetensors, none
gated), with their shapes, so the memory per load option can be estimated before downloading."""

from __future__ import annotations

from dataclasses import dataclass

from localchat.weights.sizes import OPTIONS, PRACTICAL_CONTEXT, Counts, Estimate, FitReport, estimate


@dataclass(frozen=True)
class CatalogModel:
    repo_id: str
    about: str
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    tied: bool
    context: int

    def counts(self) -> Counts:
        """Parameters of a Llama-shaped decoder (attention, gated MLP, embeddings, norms)."""
        head_dim = self.hidden // self.heads
        attention = self.hidden * (self.heads * head_dim) * 2 + self.hidden * (self.kv_heads * head_dim) * 2
        mlp = 3 * self.hidden * self.intermediate
        rows = (self.heads + 2 * self.kv_heads) * head_dim + self.hidden + 2 * self.intermediate + self.hidden
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return Counts(
            quantizable=self.layers * (attention + mlp),
            quantizable_rows=self.layers * rows,
            other=embeddings + self.layers * 2 * self.hidden + self.hidden,
            layers=self.layers,
            kv_heads=self.kv_heads,
            head_dim=head_dim,
            context=self.context,
        )

    def report(self, device: str, free_bytes: int) -> FitReport:
        counts = self.counts()
        ctx = min(PRACTICAL_CONTEXT, self.context)
        rest = 4 if device == "cpu" else 2
        estimates: tuple[Estimate, ...] = tuple(estimate(counts, o, ctx, rest) for o in OPTIONS)
        unquantized = "float32" if device == "cpu" else "bfloat16"
        return FitReport(self.repo_id, device, free_bytes, ctx, estimates, unquantized)


CATALOG: tuple[CatalogModel, ...] = (
    CatalogModel("HuggingFaceTB/SmolLM2-360M-Instruct", "tiny, quick on any CPU", 49152, 960, 32, 15, 5, 2560, True, 8192),
    CatalogModel("Qwen/Qwen2.5-0.5B-Instruct", "small, many languages", 151936, 896, 24, 14, 2, 4864, True, 32768),
    CatalogModel("Qwen/Qwen2.5-1.5B-Instruct", "good all-rounder for a laptop", 151936, 1536, 28, 12, 2, 8960, True, 32768),
    CatalogModel("HuggingFaceTB/SmolLM2-1.7B-Instruct", "English, good for its size", 49152, 2048, 24, 32, 32, 8192, True, 8192),
    CatalogModel("Qwen/Qwen2.5-3B-Instruct", "noticeably smarter; wants 8 GB", 151936, 2048, 36, 16, 2, 11008, True, 32768),
    CatalogModel("Qwen/Qwen2.5-7B-Instruct", "strong; a GPU or 4-bit recommended", 152064, 3584, 28, 28, 4, 18944, False, 32768),
)  # fmt: skip
