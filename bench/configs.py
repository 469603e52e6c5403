"""Benchmark: which configuration of the bundled model decodes fastest on this device?

The loader's `auto` choices (dtype, quantization, attention, cache) should be the ones measured
fastest for the kind of device, so this measures each alternative in one run, on the bundled
SmolLM2-135M-Instruct, greedy, fixed length, median of --runs, against the `auto` configuration:
  - load options: fp32 (auto on CPU), bf16, fp16 (CUDA), bitsandbytes 8-bit and 4-bit;
  - attention: sdpa (auto) vs eager;
  - cache: transformers' generate with its dynamic cache (auto) vs a static cache, and a static
    cache with torch.compile (--compile; compiling takes minutes on a small CPU);
  - one reply vs four at once through localchat's batch (4-bit and 8-bit decode one at a time).
Run: python bench/configs.py [--runs 3] [--tokens 64] [--device cpu|cuda] [--compile]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import localchat  # noqa: E402,F401 - offline/privacy switches first

PROMPT = "Write a long story about a lighthouse keeper and a cat, with many details."


def generate_speed(model, ids, tokens: int, runs: int, **kw) -> float:
    import torch

    def once() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                                 min_new_tokens=tokens, do_sample=False, **kw)  # fmt: skip
        return (out.shape[1] - ids.shape[1]) / (time.perf_counter() - start)

    once()  # warm-up (and compilation)
    return statistics.median(once() for _ in range(runs))


def batch_speed(loaded, ids: list[int], tokens: int, runs: int, replies: int) -> float:
    """Aggregate tok/s of `replies` identical requests decoding together in localchat's batch."""
    from localchat.engine.batch import Batch, Reply
    from localchat.types import SamplingParams

    params = SamplingParams(temperature=0, repetition_penalty=1.0, max_new_tokens=tokens)

    def once() -> float:
        batch = Batch(loaded.model, loaded.tokenizer, 2048, max_size=replies)
        batch.eos = set()  # fixed length
        made: list[int] = []
        waiting = replies
        start = time.perf_counter()
        while waiting or len(batch):  # as the worker does: join while there is room, else step
            while waiting and batch.room():
                batch.add(Reply(ids, params, threading.Event(), lambda _: None,
                                lambda d, e: made.append(d.completion_tokens)))  # fmt: skip
                waiting -= 1
            batch.step()
        return sum(made) / (time.perf_counter() - start)

    once()
    return statistics.median(once() for _ in range(runs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", action="store_true", help="also measure a static cache with torch.compile")
    args = ap.parse_args()
    import torch

    from localchat.engine.generate import prompt_ids
    from localchat.engine.loading import load_model
    from localchat.types import LoadOptions, Message
    from localchat.weights.models import SMOLLM2, materialize

    data = Path(tempfile.mkdtemp(prefix="localchat-bench-"))
    path = materialize(SMOLLM2, data)
    cuda = args.device == "cuda"
    options = [("auto", "auto")]  # dtype, quantization
    options += [("bfloat16", "none"), ("float16", "none")] if cuda else [("bfloat16", "none")]
    options += [("auto", "8bit"), ("auto", "4bit")]
    rows: list[tuple[str, float, float]] = []
    auto_loaded = None
    for dtype, quant in options:
        loaded = load_model(
            LoadOptions(model=path, device=args.device, dtype=dtype, quantization=quant), data / "cache"
        )
        info = loaded.info
        label = f"{info.dtype}{'' if info.quantization == 'none' else ' ' + info.quantization}"
        if (dtype, quant) == ("auto", "auto"):
            label += " (auto)"
        ids_list = prompt_ids(loaded.tokenizer, [Message("user", PROMPT)])
        ids = torch.tensor([ids_list], device=next(loaded.model.parameters()).device)
        one = generate_speed(loaded.model, ids, args.tokens, args.runs)
        four = batch_speed(loaded, ids_list, args.tokens, args.runs, 4)
        rows.append((label, one, four))
        if (dtype, quant) == ("auto", "auto"):
            auto_loaded, auto_ids = loaded, ids
        else:
            del loaded
    assert auto_loaded is not None
    base = rows[0][1]
    print(f"\nSmolLM2-135M-Instruct on {args.device}, {args.tokens} new tokens, greedy, median of {args.runs}\n")
    print(f"{'load option':<22}{'1 reply tok/s':>14}{'vs auto':>9}{'4 replies tok/s':>17}{'vs auto':>9}")
    for label, one, four in rows:
        print(f"{label:<22}{one:>14.1f}{one / base:>9.2f}{four:>17.1f}{four / rows[0][2]:>9.2f}")

    model = auto_loaded.model
    print(f"\n{'attention / cache (auto dtype)':<36}{'tok/s':>8}{'vs auto':>9}")
    print(f"{'sdpa, dynamic cache (auto)':<36}{base:>8.1f}{1.0:>9.2f}")
    model.set_attn_implementation("eager")
    eager = generate_speed(model, auto_ids, args.tokens, args.runs)
    print(f"{'eager attention':<36}{eager:>8.1f}{eager / base:>9.2f}")
    model.set_attn_implementation("sdpa")
    static = generate_speed(model, auto_ids, args.tokens, args.runs, cache_implementation="static")
    print(f"{'static cache':<36}{static:>8.1f}{static / base:>9.2f}")
    if args.compile:
        start = time.perf_counter()
        model.forward = torch.compile(model.forward, dynamic=False)
        compiled = generate_speed(model, auto_ids, args.tokens, args.runs, cache_implementation="static")
        print(f"{'static cache + torch.compile':<36}{compiled:>8.1f}{compiled / base:>9.2f}"
              f"   (first call with compiling: {time.perf_counter() - start:.0f} s in all)")  # fmt: skip


if __name__ == "__main__":
    main()
