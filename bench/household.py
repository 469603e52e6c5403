"""Benchmark: one model, many people. Measured in one run on the bundled SmolLM2-135M-Instruct
(fp32, CPU, greedy) through the real app's OpenAI API on loopback:
  (b) time to first token on turn 1 vs turn 10 of a chat (the history grows each turn), median of
      3 chats, each with its own system prompt (so turn 1 reads its whole prompt);
  (c) aggregate tok/s with 1, 2, 4 and 8 concurrent clients vs 1 client, and each client's time
      to first token; every client asks for a story, so every reply runs to --tokens and the
      aggregates compare like with like; each reply is checked against the same request alone;
  (d) peak memory (RSS of the app) per added client.
Prints medians and ratios against the same-run baseline. Run: python bench/household.py [--tokens 64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import httpx  # noqa: E402

QUESTIONS = [
    "What is the capital of France?",
    "Name three fruits that are red.",
    "How many legs does a spider have?",
    "What colour is the sky on a clear day?",
    "Give me a word that rhymes with cat.",
    "What is two plus three?",
    "Which planet is closest to the sun?",
    "What do bees make?",
    "Name a large animal with a trunk.",
    "What is frozen water called?",
]


def stream(url: str, messages: list[dict], tokens: int) -> dict:
    body = {"messages": messages, "temperature": 0, "max_tokens": tokens, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    start = time.perf_counter()
    first = None
    text, usage = [], None
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            usage = event.get("usage") or usage
            for choice in event.get("choices", []):
                if choice["delta"].get("content"):
                    first = first or time.perf_counter()
                    text.append(choice["delta"]["content"])
    end = time.perf_counter()
    return {"ttft": (first or end) - start, "seconds": end - start, "tokens": usage["completion_tokens"],
            "text": "".join(text)}  # fmt: skip


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


STORIES = ["a lighthouse keeper", "a lost kitten", "a dragon who cannot fly", "a robot gardener",
           "a brave little boat", "a snowman in summer", "a clockmaker", "a fox and a crow"]  # fmt: skip


def story(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Write a long story about {STORIES[i % len(STORIES)]}."}]


def turns(url: str, tokens: int, chat: int) -> list[float]:
    """Time to first token of each of 10 turns of one growing chat."""
    messages: list[dict] = [{"role": "system", "content": f"You are assistant number {chat + 1}. Be brief."}]
    ttfts = []
    for q in QUESTIONS:
        messages.append({"role": "user", "content": q})
        r = stream(url, messages, tokens)
        ttfts.append(r["ttft"])
        messages.append({"role": "assistant", "content": r["text"]})
    return ttfts


def concurrent(url: str, clients: int, tokens: int, pid: int) -> dict:
    results: list[dict] = [{} for _ in range(clients)]
    barrier = threading.Barrier(clients)
    peak = [rss(pid)]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss(pid))
            time.sleep(0.05)

    def client(i: int) -> None:
        barrier.wait()  # all at once
        results[i] = stream(url, story(i), tokens)

    watcher = threading.Thread(target=watch)
    watcher.start()
    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    done.set()
    watcher.join()
    return {
        "aggregate": sum(r["tokens"] for r in results) / wall,
        "ttfts": sorted(r["ttft"] for r in results),
        "peak": peak[0],
        "texts": [r["text"] for r in results],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    from conftest import start_app

    data = Path(tempfile.mkdtemp(prefix="localchat-bench-"))
    app = start_app(data, "--quantization", "none", "--idle-unload", "0")
    try:
        stream(app.url, [{"role": "user", "content": "Hi"}], 4)  # warm-up
        chats = [turns(app.url, args.tokens, chat) for chat in range(3)]
        first, tenth = statistics.median(c[0] for c in chats), statistics.median(c[9] for c in chats)
        print(f"\nSmolLM2-135M-Instruct, fp32, CPU, {args.tokens} new tokens, greedy, through /v1 on loopback\n")
        print("(b) time to first token, a chat growing turn by turn (median of 3 chats)")
        print("    turn " + " ".join(f"{t + 1:>6}" for t in range(10)))
        print("    s    " + " ".join(f"{statistics.median(c[t] for c in chats):>6.3f}" for t in range(10)))
        print(f"    turn 10 / turn 1: {tenth:.3f} / {first:.3f} s = {tenth / first:.2f} (target <= 1.2)")
        alone = [stream(app.url, story(i), args.tokens)["text"] for i in range(8)]
        print("\n(c, d) concurrent clients, each asking one question")
        print(
            f"    {'clients':>7} {'agg tok/s':>10} {'vs 1':>6} {'first token min/median/max (s)':>32} "
            f"{'max vs 1':>8} {'RSS MiB':>7} {'vs 1':>8} {'= solo':>6}"
        )
        base = None
        for n in (1, 2, 4, 8):
            r = concurrent(app.url, n, args.tokens, app.process.pid)
            base = base or r
            t = r["ttfts"]
            same = "yes" if r["texts"] == alone[:n] else "NO"
            print(f"    {n:>7} {r['aggregate']:>10.1f} {r['aggregate'] / base['aggregate']:>6.2f} "
                  f"{t[0]:>10.2f} / {statistics.median(t):.2f} / {t[-1]:.2f} {t[-1] / base['ttfts'][0]:>8.2f}"
                  f" {r['peak'] / 2**20:>7.0f} {(r['peak'] - base['peak']) / 2**20:>+8.0f} {same:>6}")  # fmt: skip
        print("    (targets: 4 clients >= 3x the aggregate of 1; no first token later than 2x one client's)")
    finally:
        app.process.kill()
        app.process.wait()


if __name__ == "__main__":
    main()
