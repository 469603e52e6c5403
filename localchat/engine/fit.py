"""Will this model fit? Parameter counts from the model's config alone, turned into memory
estimates per load option (weights/sizes.py does the arithmetic).

Owns: counting parameters by building the model on the `meta` device (exact for every
architecture transformers knows, and nothing is allocated), and the report for one model.
Invariant: runs where transformers is (the engine process, the CLI); estimates are checked against
real loads in the tests (the error is stated there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from localchat.weights.sizes import (
    HEADROOM,
    OPTIONS,
    PRACTICAL_CONTEXT,
    QUANT_OF,
    Counts,
    Estimate,
    FitReport,
    estimate,
)

__all__ = ["HEADROOM", "OPTIONS", "PRACTICAL_CONTEXT", "QUANT_OF", "Counts", "Estimate", "FitReport", "estimate"]


def count(config: Any) -> Counts:
    import torch  # imported when counting: `localchat doctor` reads this module's report too
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    skip = {"lm_head"}  # transformers never quantizes the output layer
    quantizable = rows = 0
    seen: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.split(".")[-1] not in skip:
            quantizable += module.weight.numel()
            rows += module.out_features
            seen.add(id(module.weight))
    other = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values() if id(p) not in seen)
    text = getattr(config, "get_text_config", lambda: config)()
    heads = getattr(text, "num_attention_heads", 1) or 1
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    context = 0
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(getattr(text, name, None), int):
            context = getattr(text, name)
            break
    return Counts(
        quantizable=quantizable,
        quantizable_rows=rows,
        other=other,
        layers=getattr(text, "num_hidden_layers", 0),
        kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        context=context,
    )


def load_config(source: str, gguf_file: str | None) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(source, gguf_file=gguf_file, local_files_only=True)


def report(  # noqa: PLR0913
    name: str,
    config: Any,
    device: str,
    free_bytes: int,
    context: int | None = None,
    float32: bool | None = None,
    bitsandbytes: bool = True,
    four_bit_rest: int | None = None,
) -> FitReport:
    """`float32`: the load dtype is fp32 (default: on a CPU); `bitsandbytes`: it runs on `device`;
    `four_bit_rest`: bytes per value of what a 4-bit load leaves unquantized (default: as the rest)."""
    counts = count(config)
    window = counts.context or context or 2048
    ctx = min(context or PRACTICAL_CONTEXT, window)
    wide = device == "cpu" if float32 is None else float32
    rest = 4 if wide else 2
    rests = {"4bit": four_bit_rest or rest}
    return FitReport(
        name,
        device,
        free_bytes,
        ctx,
        tuple(estimate(counts, o, ctx, rests.get(o, rest)) for o in OPTIONS),
        "float32" if wide else "bfloat16",
        bitsandbytes,
    )


def folder_for(path: Path) -> Path:
    return path if path.is_dir() else path.parent
