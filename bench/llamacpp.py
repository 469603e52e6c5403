"""llama.cpp as the reference: the same random-weight model as GGUF, timed like localchat's rows.

A bench-only extra, never a runtime or CI dependency: llama-cpp-python built from PyPI's source
(`pip install llama-cpp-python`, ~15-25 minutes on 2 cores) and llama.cpp's own converter, which
ships in that source package (`pip download --no-deps --no-binary :all: llama-cpp-python`, unpack,
pass `--llama-src <unpacked>/vendor/llama.cpp`). The model folder is converted once to F16 GGUF with
convert_hf_to_gguf.py, then quantized with llama.cpp's own quantizer (llama_model_quantize) to
Q8_0 and Q4_K_M, all cached beside the folder. Timing: llama.cpp's threads = the cores, greedy,
the KV cache cleared before every prompt (llama-cpp-python otherwise reuses a matching prefix).
Used by bench/realsize.py (rows "llama.cpp q8_0" and "llama.cpp q4_k_m"); runs alone as
  python bench/llamacpp.py --model smollm2-1.7b --llama-src DIR [--type q4_k_m]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TYPES = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}
SOURCE_ENV = "LOCALCHAT_LLAMA_SRC"  # where realsize.py finds the converter when --llama-src is not given


def available() -> str | None:
    """Why llama.cpp rows cannot run here, or None when they can."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return "llama-cpp-python is not installed (pip install llama-cpp-python: a bench-only extra)"
    return None


def f16_gguf(folder: Path, source: Path) -> Path:
    out = folder.parent / f"{folder.name}.f16.gguf"
    if out.exists():
        return out
    script = source / "convert_hf_to_gguf.py"
    if not script.exists():
        raise SystemExit(f"llama.cpp's converter is not at {script}: pass --llama-src <llama.cpp source>")
    part = out.with_suffix(".part")
    env = {**os.environ, "PYTHONPATH": str(source / "gguf-py")}  # the converter's own gguf package
    cmd = [sys.executable, str(script), str(folder), "--outtype", "f16", "--outfile", str(part)]
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    part.rename(out)
    return out


def quantized(folder: Path, source: Path, kind: str) -> Path:
    """The folder's model as a GGUF of `kind` (q8_0, q4_k_m), made once."""
    import llama_cpp

    out = folder.parent / f"{folder.name}.{kind}.gguf"
    if out.exists():
        return out
    f16 = f16_gguf(folder, source)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, TYPES[kind])
    params.nthread = os.cpu_count() or 1
    part = out.with_suffix(".part")
    if llama_cpp.llama_model_quantize(str(f16).encode(), str(part).encode(), params) != 0:
        raise SystemExit(f"llama.cpp could not quantize {f16} to {kind}")
    part.rename(out)
    return out


def measure(gguf: Path, prompts: list[str], tokens: int, runs: int) -> dict[str, Any]:
    """load s, time to first token per prompt, decode tok/s after the first token, bytes."""
    import statistics

    import llama_cpp

    started = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=str(gguf), n_ctx=2048, n_threads=os.cpu_count(), n_batch=512, verbose=False, seed=0
    )
    load_s = time.perf_counter() - started

    def run(text: str, new: int) -> tuple[float, float, int]:
        llm.reset()  # no prefix reuse: every prompt is read whole, as localchat's rows read theirs
        ids = llm.tokenize(text.encode(), add_bos=True)
        start = time.perf_counter()
        llm.eval(ids)
        made, first = 0, 0.0
        while made < new:
            token = llm.sample(temp=0.0)
            if made == 0:
                first = time.perf_counter() - start
            made += 1
            if made < new:
                llm.eval([token])
        return first, time.perf_counter() - start, made

    short, long = prompts
    run(short, 4)  # warm-up
    first = statistics.median(run(short, 1)[0] for _ in range(runs))
    longs = [run(long, tokens) for _ in range(runs)]  # its first token, then decoding after it
    first_long = statistics.median(ttft for ttft, _, _ in longs)
    totals = [run(short, tokens) for _ in range(runs)]

    def decode(timed: list[tuple[float, float, int]]) -> float:
        return statistics.median((made - 1) / (total - ttft) for ttft, total, made in timed)

    return {"load_s": load_s, "ttft": [first, first_long], "tok_s": decode(totals), "tok_s_long": decode(longs),
            "weight_bytes": gguf.stat().st_size}  # fmt: skip


def main() -> None:
    import argparse

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from realsize import PROMPTS, TEXT  # noqa: F401 - the same prompts as the other rows
    from shapes import DEFAULT_CACHE, resolve

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--llama-src", type=Path, default=Path(os.environ.get(SOURCE_ENV, ".")))
    ap.add_argument("--type", choices=list(TYPES), default="q4_k_m")
    args = ap.parse_args()
    if why := available():
        raise SystemExit(why)
    folder = resolve(args.model, DEFAULT_CACHE)
    print(quantized(folder, args.llama_src, args.type))


if __name__ == "__main__":
    main()
