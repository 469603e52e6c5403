"""Benchmark: decode speed, first-token time, load time and memory at the sizes households run.

On one model (a folder, or a shape name from bench/shapes.py: real configs, random weights, built
once into a cache), in one run, each measurement in a fresh process (no OpenMP team or allocator
state carried over): plain transformers `generate` in fp32, bf16, bitsandbytes 8-bit and 4-bit
(where they load), localchat's engine with everything `auto`, and the decode ceiling of each:
bytes of weights read per token / memory bandwidth, measured in the same run by a large copy.
Greedy, fixed length; time to first token for a 50- and a 1,000-token prompt; decode tok/s after
the first token; median of --runs after a warm-up. Ratios are against plain fp32 of the same run.
Run: python bench/realsize.py --model smollm2-360m [--device cpu|cuda] [--tokens 64] [--runs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import localchat  # noqa: E402,F401 - offline/privacy switches first

# isort: split
from llamacpp import SOURCE_ENV, available  # noqa: E402
from shapes import DEFAULT_CACHE, resolve  # noqa: E402
from streaming import CONFIGS, median, plain_load  # noqa: E402

TEXT = (
    "The lighthouse keeper kept a log of every ship, every storm and every visit of the grey cat "
    "that lived among the rocks below the tower. In winter the lamp burned from four in the "
    "afternoon until eight in the morning, and the keeper climbed the spiral stairs nine times a "
    "night to trim the wick, wind the clockwork and wipe the salt from the great glass lens. "
)
PROMPTS = (50, 1000)  # tokens: a short question, and a long paste or conversation
COPY_BYTES = 1 << 30
ALIASES = {"4-bit": "4-bit nf4", "4bit": "4-bit nf4", "8bit": "8-bit"}
LLAMA = {"llama.cpp q8_0": "q8_0", "llama.cpp q4_k_m": "q4_k_m"}  # bench/llamacpp.py: the reference
# localchat's CPU weight formats (engine/formats.py) on a plain fp32 load: generate is unchanged
WEIGHT_FORMATS = {"w-bf16": "bf16", "w-int8": "int8", "w-int4": "int4", "w-q8": "q8", "w-q4": "q4"}


def prompt_text(tokenizer: Any, tokens: int) -> str:
    ids = tokenizer(TEXT * (tokens // 40 + 2), add_special_tokens=False)["input_ids"][:tokens]
    return tokenizer.decode(ids)


def weight_bytes(model: Any) -> int:
    """Bytes of weights one decoded token reads: every parameter once (parameters() counts a tied
    matrix once) and the buffers of localchat's weight formats, less an untied input embedding (a
    lookup reads one row). The KV cache is left out."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    total += sum(b.nbytes for m in model.modules() if type(m).__name__.endswith("Linear") for b in m.buffers(False))
    embed, out = model.get_input_embeddings().weight, getattr(model.get_output_embeddings(), "weight", None)
    return total - (0 if embed is out else embed.numel() * embed.element_size())


def memory(device: str) -> dict[str, float]:
    import psutil
    import torch

    found = {"rss": psutil.Process().memory_info().rss}
    if device == "cuda":
        found["gpu"] = torch.cuda.max_memory_allocated()
    return found


def synced(device: str):
    import torch

    def clock() -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    return clock


def bandwidth(device: str, runs: int = 5) -> dict[str, float]:
    """Bytes per second of a large copy (read + write), the best of `runs`: what decode can reach."""
    import torch

    clock = synced(device)
    src = torch.ones(COPY_BYTES // 4, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(runs):
        start = clock()
        dst.copy_(src)
        best = min(best, clock() - start)
    # AVX2 alone: no native bf16 products (slow bf16 prefill) and no fast bitsandbytes 4-bit kernel
    return {"bytes_per_s": 2 * COPY_BYTES / best, "cpu": torch.backends.cpu.get_cpu_capability()}


def plain(folder: Path, label: str, device: str, tokens: int, runs: int) -> dict[str, Any]:
    import torch

    if label in WEIGHT_FORMATS:
        from localchat.engine.formats import convert

        model, tokenizer, load_s = plain_load(folder, *CONFIGS["fp32"], device)
        started = time.perf_counter()
        convert(model, WEIGHT_FORMATS[label])
        load_s += time.perf_counter() - started
    else:
        model, tokenizer, load_s = plain_load(folder, *CONFIGS[label], device)
    clock = synced(device)

    def seconds(text: str, new: int) -> float:
        ids = tokenizer(text, return_tensors="pt").to(model.device)
        start = clock()
        with torch.inference_mode():
            model.generate(**ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)
        return clock() - start

    short, long = (prompt_text(tokenizer, n) for n in PROMPTS)
    seconds(short, 4)  # warm-up
    first = median([seconds(short, 1) for _ in range(runs)])
    first_long = median([seconds(long, 1) for _ in range(runs)])
    total = median([seconds(short, tokens) for _ in range(runs)])
    total_long = seconds(long, tokens)  # once: a 1,000-token prompt takes 30 s in plain fp32 at 1.7B
    return {"load_s": load_s, "ttft": [first, first_long], "tok_s": (tokens - 1) / (total - first),
            "tok_s_long": (tokens - 1) / max(total_long - first_long, 1e-9),
            "weight_bytes": weight_bytes(model), **memory(device)}  # fmt: skip


def engine(folder: Path, device: str, tokens: int, runs: int) -> dict[str, Any]:
    """localchat's engine in-process (its worker, batch and streamer), every load option `auto`."""
    from localchat.engine.backend import TransformersBackend
    from localchat.types import GenerationRequest, LoadOptions, SamplingParams

    backend = TransformersBackend(Path(tempfile.mkdtemp(prefix="localchat-bench-")))
    asked = iter(range(1 << 30))
    try:
        info = backend.load(LoadOptions(model=str(folder), device=device, dtype="auto", quantization="auto"))
        tokenizer = backend._current.tokenizer

        def ask(text: str, new: int):
            params = SamplingParams(temperature=0, repetition_penalty=1.0, max_new_tokens=new)
            # a new owner each time: the prefix cache never serves one member's prompt to another
            request = GenerationRequest(prompt=text, params=params, owner=f"bench-{next(asked)}")
            return list(backend.stream(request))[-1].usage

        short, long = (prompt_text(tokenizer, n) for n in PROMPTS)
        ask(short, 4)
        first = median([ask(short, 1).time_to_first_token for _ in range(runs)])
        long_replies = [ask(long, tokens) for _ in range(runs)]  # its first token, then decoding after it
        first_long = median([u.time_to_first_token for u in long_replies])
        replies = [ask(short, tokens) for _ in range(runs)]
        quant = "" if info.quantization == "none" else f" {info.quantization}"
        fmt = info.extra.get("format", "")
        quant += f" {fmt.split(':')[0].rsplit(' ', 1)[-1]} weights" if fmt else ""
        time.sleep(1)  # idle: the engine hands a long prompt's freed activations back (trim_heap)
        return {"load_s": info.load_seconds, "ttft": [first, first_long],
                "tok_s": median([u.tokens_per_second for u in replies]), "made": replies[0].completion_tokens,
                "tok_s_long": median([u.tokens_per_second for u in long_replies]),
                "what": f"{info.dtype}{quant}", "weight_bytes": weight_bytes(backend._current.model),
                **memory(device)}  # fmt: skip
    finally:
        backend.close()


def llama(kind: str, folder: Path, source: Path, tokens: int, runs: int) -> dict[str, Any]:
    """llama.cpp on the same model, converted and quantized once (bench/llamacpp.py)."""
    from llamacpp import measure as time_llama
    from llamacpp import quantized
    from transformers import AutoTokenizer

    gguf = quantized(folder, source, LLAMA[kind])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    row = time_llama(gguf, [prompt_text(tokenizer, n) for n in PROMPTS], tokens, runs)
    import psutil

    return {**row, "rss": psutil.Process().memory_info().rss}


def measure(kind: str, folder: Path, device: str, tokens: int, runs: int, source: Path) -> dict[str, Any]:
    if kind == "bandwidth":
        return bandwidth(device)
    if kind in LLAMA:
        return llama(kind, folder, source, tokens, runs)
    if kind == "engine":
        return engine(folder, device, tokens, runs)
    return plain(folder, kind, device, tokens, runs)


def in_fresh_process(kind: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--measure", kind, "--model", str(folder), "--device", args.device,
           "--tokens", str(args.tokens), "--runs", str(args.runs), "--llama-src", str(args.llama_src)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        return {"error": lines[-1][:100] if lines else f"exit status {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def describe(folder: Path) -> str:
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(folder)
    shape = json.loads((folder / "shape.json").read_text()) if (folder / "shape.json").exists() else None
    what = f"shape {shape['name']} (random weights, seed {shape['seed']})" if shape else folder.name
    return (f"{what}: {c.model_type}, {c.num_hidden_layers} layers, hidden {c.hidden_size}, "
            f"{c.num_attention_heads}/{c.num_key_value_heads} heads, vocab {c.vocab_size}")  # fmt: skip


def report(rows: dict[str, dict[str, Any]], speed: float, cpu: str, args: argparse.Namespace, folder: Path) -> None:
    gb = 1e9
    print(f"\n{describe(folder)}")
    where = f"cpu ({cpu})" if args.device == "cpu" else args.device
    print(f"{where}, {args.tokens} new tokens, greedy, median of {args.runs}; memory bandwidth "
          f"{speed / gb:.1f} GB/s (1 GiB copy, read + write)\n")  # fmt: skip
    mem = "GPU GB" if args.device == "cuda" else "RSS GB"
    head = ("path", "load s", mem, "ttft 50", "ttft 1000", "tok/s", "tok/s 1k", "vs fp32", "ttft1k vs", "GB/token",
            "ceiling", "of ceil")  # fmt: skip
    print(f"{head[0]:<26}" + "".join(f"{h:>10}" for h in head[1:]))
    base = rows.get("generate fp32", {})
    for label, row in rows.items():
        if "error" in row:
            print(f"{label:<26}  did not run: {row['error']}")
            continue
        ceiling = speed / row["weight_bytes"]
        held = row["gpu"] if args.device == "cuda" else row["rss"]
        long = f"{row['tok_s_long']:.2f}" if "tok_s_long" in row else "-"
        cells = [f"{row['load_s']:.1f}", f"{held / gb:.2f}", f"{row['ttft'][0]:.2f}", f"{row['ttft'][1]:.2f}",
                 f"{row['tok_s']:.2f}", long]  # fmt: skip
        if "tok_s" in base:
            cells += [f"{row['tok_s'] / base['tok_s']:.2f}", f"{row['ttft'][1] / base['ttft'][1]:.2f}"]
        else:
            cells += ["-", "-"]
        cells += [f"{row['weight_bytes'] / gb:.2f}", f"{ceiling:.1f}", f"{row['tok_s'] / ceiling:.2f}"]
        print(f"{label:<26}" + "".join(f"{c:>10}" for c in cells))
    engine_row = next((row for label, row in rows.items() if label.startswith("engine") and "error" not in row), None)
    for kind in LLAMA:
        ref = rows.get(kind)
        if engine_row is None or ref is None or "error" in ref:
            continue
        print(f"localchat engine / {kind}: decode {engine_row['tok_s'] / ref['tok_s']:.2f}x "
              f"(after the 1,000-token prompt {engine_row['tok_s_long'] / ref['tok_s_long']:.2f}x), "
              f"ttft 50 {engine_row['ttft'][0] / ref['ttft'][0]:.2f}x, ttft 1000 {engine_row['ttft'][1] / ref['ttft'][1]:.2f}x "
              f"(time: lower is better), RSS {engine_row['rss'] / ref['weight_bytes']:.2f}x the {kind} file")  # fmt: skip
    print("(ttft: seconds to the first token of a 50- / 1,000-token prompt; tok/s: decode after the first token")
    print(" of the 50-token prompt, tok/s 1k: of the 1,000-token one, where the KV cache is read at every token;")
    print(
        " ceiling: bandwidth / bytes of weights read per token, KV cache not counted; RSS after the runs, the engine's"
    )
    print(" once idle, with the prefix cache's KV)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a model folder, or a shape name: smollm2-360m, smollm2-1.7b, ...")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where shapes are built (once)")
    ap.add_argument("--only", nargs="+", choices=[*CONFIGS, *WEIGHT_FORMATS, "engine", *LLAMA], type=lambda s: ALIASES.get(s, s),
                    help="measure only these paths (4-bit: 4-bit nf4)")  # fmt: skip
    ap.add_argument(
        "--llama-src",
        type=Path,
        default=Path(os.environ.get(SOURCE_ENV, ".")),
        help="llama.cpp's source (for its converter), for the llama.cpp rows; see bench/llamacpp.py",
    )
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, Path(args.model), args.device, args.tokens, args.runs, args.llama_src)))
        return
    folder = resolve(args.model, args.cache)
    for f in folder.glob("*.safetensors"):  # every load reads from the page cache, the first one too
        with f.open("rb") as fh:
            while fh.read(1 << 26):
                pass
    measured = in_fresh_process("bandwidth", args, folder)
    if "error" in measured:
        raise SystemExit(f"Measuring the memory bandwidth failed: {measured['error']}")
    speed = measured["bytes_per_s"]
    rows: dict[str, dict[str, Any]] = {}
    reference = [] if available() else list(LLAMA)  # llama.cpp rows when the bench extra is installed
    for kind in args.only or [*CONFIGS, *WEIGHT_FORMATS, "engine", *reference]:
        started = time.perf_counter()
        row = in_fresh_process(kind, args, folder)
        label = f"engine auto ({row['what']})" if kind == "engine" and "what" in row else kind
        rows[label if kind == "engine" or kind in LLAMA else f"generate {kind}"] = row
        print(f"  {label}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    report(rows, speed, measured["cpu"], args, folder)


if __name__ == "__main__":
    main()
