"""Benchmark: replies batched at real size, in the format `auto` picks (engine/formats.py).

On one model (a folder or a shape name from bench/shapes.py), localchat's engine in-process with
every load option `auto`: one client alone, then --clients at once (each a different prompt,
greedy, --tokens each, run to the end). Prints the aggregate tok/s against one client, each
client's time to first token, and how many batched greedy replies equal their solo selves (float32
always does; a bf16/int8 product of several rows can round apart from one row's).
Run: python bench/batching.py --model smollm2-1.7b [--clients 4] [--tokens 32]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import localchat  # noqa: E402,F401 - offline/privacy switches first

# isort: split
from shapes import DEFAULT_CACHE, resolve  # noqa: E402

PROMPTS = [
    "The lighthouse keeper wrote in his log that",
    "In winter the lamp burned from four in the afternoon",
    "Every ship and every storm that passed the rocks",
    "The grey cat that lived below the tower",
    "Nine times a night the keeper climbed the stairs",
    "The great glass lens was wiped clean of salt",
    "A visitor came by boat one Sunday in spring",
    "The clockwork had to be wound before midnight",
]


def main() -> None:
    from localchat.engine.backend import TransformersBackend
    from localchat.types import GenerationRequest, LoadOptions, SamplingParams

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args()
    folder = resolve(args.model, DEFAULT_CACHE)
    backend = TransformersBackend(Path(tempfile.mkdtemp(prefix="localchat-bench-")))
    info = backend.load(LoadOptions(model=str(folder), device="cpu", dtype="auto", quantization="auto"))
    asked = iter(range(1 << 30))

    def ask(prompt: str):
        params = SamplingParams(temperature=0, repetition_penalty=1.0, max_new_tokens=args.tokens)
        # a new owner each time: the prefix cache never serves one member's prompt to another
        chunks = list(backend.stream(GenerationRequest(prompt=prompt, params=params, owner=f"b{next(asked)}")))
        return "".join(c.text for c in chunks), chunks[-1].usage

    prompts = PROMPTS[: args.clients]
    try:
        ask(prompts[0])  # warm-up
        solo, started = [], time.perf_counter()
        for p in prompts:
            solo.append(ask(p))
        solo_s = time.perf_counter() - started
        together: list = [None] * len(prompts)

        def client(i: int) -> None:
            backend.expect()  # as the API and the page do when a request arrives
            together[i] = ask(prompts[i])

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(prompts))]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        together_s = time.perf_counter() - started
    finally:
        backend.close()
    made = sum(u.completion_tokens for _, u in together)
    one = sum(u.completion_tokens for _, u in solo) / solo_s
    many = made / together_s
    same = sum(a[0] == b[0] for a, b in zip(solo, together, strict=True))
    fmt = info.extra.get("format", f"{info.dtype} (no format change)")
    print(f"\n{folder.name}: engine auto, {fmt}")
    print(f"one client at a time: {one:.2f} tok/s (whole replies, prompt included)")
    print(f"{len(prompts)} clients at once: {many:.2f} tok/s in all = {many / one:.2f}x one client")
    print("time to first token with all at once: " + ", ".join(f"{u.time_to_first_token:.2f} s" for _, u in together))
    print(f"greedy replies equal to their solo selves: {same} of {len(prompts)}")


if __name__ == "__main__":
    main()
