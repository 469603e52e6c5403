"""Benchmark: how much does localchat's streaming cost compared with raw `model.generate`?

Measured in one run on the bundled SmolLM2-135M-Instruct, greedy, fixed length (no early EOS):
  0. baseline   plain transformers: from_pretrained on the same weights, model.generate, no localchat code
  1. loaded     model.generate on the model as localchat loads it (narrow products on CPU), no streamer
  2. engine     TransformersBackend.stream (worker thread, streamer, queue) in-process
  3. ui         the real app in a subprocess, streamed through its Gradio endpoint (gradio_client)
  4. api        the same app's OpenAI-compatible /v1/chat/completions, streamed as server-sent events
and, per quantization (fp32, bf16, 8-bit, 4-bit), load time and raw decode speed.
Prints medians and ratios against the baseline. Run: python bench/streaming.py [--runs 5] [--tokens 128]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import localchat  # noqa: E402,F401 - offline/privacy switches first

PROMPT = "Write a long story about a lighthouse keeper and a cat, with many details."


def raw_generate(model, tokenizer, tokens: int) -> float:
    import torch

    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    n = out.shape[1] - ids["input_ids"].shape[1]
    return n / (time.perf_counter() - start)


def engine_stream(backend, tokens: int) -> float:
    from localchat.types import GenerationRequest, Message, SamplingParams

    params = SamplingParams(temperature=0, repetition_penalty=1.0, max_new_tokens=tokens)
    start = time.perf_counter()
    chunks = list(backend.stream(GenerationRequest((Message("user", PROMPT),), params), threading.Event()))
    return chunks[-1].usage.completion_tokens / (time.perf_counter() - start)


def ui_stream(url: str, tokens: int) -> tuple[float, int]:
    from gradio_client import Client

    client = Client(url, verbose=False)
    client.predict(PROMPT, api_name="/add_user")
    start = time.perf_counter()
    job = client.submit("", 0, 1.0, 0, 0.0, 1.0, tokens, -1, "", api_name="/respond")
    updates = sum(1 for _ in job)
    elapsed = time.perf_counter() - start
    from conftest import message_text, output_chat

    stats = message_text(output_chat(job.outputs()[-1])[-1]).rsplit("<sub>", 1)[-1]
    completion = int(stats.split(" tokens")[0])
    return completion / elapsed, updates


def api_stream(url: str, tokens: int) -> float:
    import httpx

    body = {"messages": [{"role": "user", "content": PROMPT}], "temperature": 0, "max_tokens": tokens,
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    start = time.perf_counter()
    usage = None
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=300) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                usage = json.loads(line[6:]).get("usage") or usage
    return usage["completion_tokens"] / (time.perf_counter() - start)


def plain_load(folder: Path | str, dtype: str, quant: str, device: str = "cpu") -> tuple[Any, Any, float]:
    """What a plain transformers script does: from_pretrained, no localchat code in the model's
    forward pass. Returns (model, tokenizer, load seconds)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    kwargs: dict = {"dtype": torch.float32 if dtype in ("auto", "float32") else getattr(torch, dtype)}
    if quant != "none":
        kwargs["dtype"] = torch.bfloat16 if quant == "4bit" else torch.float32
        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_8bit=True) if quant == "8bit"
            else BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16)
        )  # fmt: skip
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(folder, device_map=device, **kwargs).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model, tokenizer, time.perf_counter() - start


def plain_generate(data: Path, dtype: str, quant: str, runs: int, tokens: int) -> dict[str, float]:
    """plain_load on the bundled model's weights, then generate() on the main thread."""
    from localchat.engine.loading import dequantized_gguf_folder, resolve_model
    from localchat.weights.models import SMOLLM2, materialize

    folder = dequantized_gguf_folder(resolve_model(materialize(SMOLLM2, data)), data / "cache" / "gguf-dequantized")
    model, tokenizer, load_s = plain_load(folder, dtype, quant)
    raw_generate(model, tokenizer, 8)  # warm-up
    return {"load_s": load_s, "tok_s": median([raw_generate(model, tokenizer, tokens) for _ in range(runs)])}


def median(xs: list[float]) -> float:
    return statistics.median(xs)


CONFIGS = {
    "fp32": ("float32", "none"),
    "bf16": ("bfloat16", "none"),
    "8-bit": ("auto", "8bit"),
    "4-bit nf4": ("auto", "4bit"),
}


def measure(kind: str, label: str, data: Path, runs: int, tokens: int) -> dict[str, float]:
    """One measurement in this (fresh) process, so no other thread has started an OpenMP team."""
    from localchat.engine.backend import TransformersBackend
    from localchat.types import LoadOptions
    from localchat.weights.models import SMOLLM2

    dtype, quant = CONFIGS[label]
    if kind == "plain":
        return plain_generate(data, dtype, quant, runs, tokens)
    backend = TransformersBackend(data)
    try:
        info = backend.load(LoadOptions(model=SMOLLM2, device="cpu", dtype=dtype, quantization=quant))
        current = backend._current
        if kind == "raw":  # what a plain script does: generate on its own (worker) thread, no streamer
            run = lambda: backend.worker.call(lambda: raw_generate(current.model, current.tokenizer, tokens))  # noqa: E731
        else:
            run = lambda: engine_stream(backend, tokens)  # noqa: E731
        run()  # warm-up
        return {"load_s": info.load_seconds, "tok_s": median([run() for _ in range(runs)])}
    finally:
        backend.close()


def in_subprocess(kind: str, label: str, data: Path, runs: int, tokens: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--measure", kind, label, "--data", str(data), "--runs", str(runs)]
    out = subprocess.run([*cmd, "--tokens", str(tokens)], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--skip-quant", action="store_true", help="only the streaming comparison, fp32")
    ap.add_argument("--measure", nargs=2, metavar=("KIND", "CONFIG"), help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure, args.data, args.runs, args.tokens)))
        return

    from conftest import start_app

    data = Path(tempfile.mkdtemp(prefix="localchat-bench-"))
    labels = ["fp32"] if args.skip_quant else list(CONFIGS)
    rows = {label: in_subprocess("raw", label, data, args.runs, args.tokens) for label in labels}  # dequantizes once
    plain = {label: in_subprocess("plain", label, data, args.runs, args.tokens) for label in labels}
    baseline, loaded = plain["fp32"]["tok_s"], rows["fp32"]["tok_s"]
    engine = in_subprocess("engine", "fp32", data, args.runs, args.tokens)["tok_s"]
    app = start_app(data)
    try:
        ui_stream(app.url, 8)
        ui_runs = [ui_stream(app.url, args.tokens) for _ in range(args.runs)]
        api_stream(app.url, 8)
        api = median([api_stream(app.url, args.tokens) for _ in range(args.runs)])
    finally:
        app.process.terminate()
        try:
            app.process.wait(15)
        except subprocess.TimeoutExpired:
            app.process.kill()
    ui = median([r[0] for r in ui_runs])
    updates = median([r[1] for r in ui_runs])

    print(f"\nSmolLM2-135M-Instruct on CPU, {args.tokens} new tokens, greedy, median of {args.runs}\n")
    print(f"{'path':<44}{'tok/s':>8}{'vs plain':>10}{'vs load':>9}")
    table = [
        ("plain transformers: model.generate (baseline)", baseline),
        ("localchat's load: model.generate", loaded),
        ("engine: backend.stream", engine),
        ("ui: app + Gradio stream (client)", ui),
        ("api: /v1 chat completions (SSE)", api),
    ]
    for name, tok_s in table:
        more = f"   ({updates:.0f} updates)" if name.startswith("ui") else ""
        print(f"{name:<44}{tok_s:>8.1f}{tok_s / baseline:>10.2f}{tok_s / loaded:>9.2f}{more}")
    print("(vs plain: against what a plain transformers script gets; vs load: against generate() on the model as")
    print(" localchat loads it, i.e. what the engine, the page and the API cost on top of the model)")
    print(f"\n{'load option':<14}{'load s':>8}{'tok/s':>8}{'plain':>8}{'vs plain':>10}")
    for label, row in rows.items():
        p = plain[label]["tok_s"]
        print(f"{label:<14}{row['load_s']:>8.1f}{row['tok_s']:>8.1f}{p:>8.1f}{row['tok_s'] / p:>10.2f}")
    print("(load s: the first fp32 load includes dequantizing the GGUF into the cache; later loads read the cache)")


if __name__ == "__main__":
    main()
