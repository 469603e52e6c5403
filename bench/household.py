"""Benchmark: one model, many people. Measured in one run on the bundled SmolLM2-135M-Instruct
(fp32, CPU, greedy) through the real app's OpenAI API on loopback:
  (b) time to first token on turn 1 vs turn 10 of a chat (the history grows each turn), median of
      3 chats, each with its own system prompt (so turn 1 reads its whole prompt);
  (c) aggregate tok/s with 1, 2, 4 and 8 concurrent clients vs 1 client, and each client's time
      to first token; every client asks for a story, so every reply runs to --tokens and the
      aggregates compare like with like; each client count runs --rounds rounds, each with stories
      not asked before (no prompt is in the prefix cache but the shared system prompt), and the
      medians over the rounds are printed; each reply of the first round is checked against the
      same request alone, asked afterwards;
  (d) peak memory (RSS of the app's processes: the server and its engine) per added client.
Each client has its connection open before it asks (as a browser tab does), so a time to first
token runs from sending the request to its first token. Prints medians and ratios against the
same-run baseline. Run: python bench/household.py [--tokens 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from contextlib import closing
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


def stream(client: httpx.Client, url: str, messages: list[dict], tokens: int) -> dict:
    body = {"messages": messages, "temperature": 0, "max_tokens": tokens, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    start = time.perf_counter()
    first = None
    text, usage = [], None
    with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
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


def connected(url: str) -> httpx.Client:
    """A client with its connection already open, as a browser tab that has the page has."""
    client = httpx.Client(timeout=600)
    client.get(url + "/health")
    return client


def rss(pid: int) -> int:
    """Resident memory of a process and all its children (the engine runs in a child)."""
    total = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
        children = [c for task in Path(f"/proc/{pid}/task").iterdir() for c in _children(task)]
    except (FileNotFoundError, ProcessLookupError):
        return total  # the process ended meanwhile
    return total + sum(rss(int(child)) for child in children)


def _children(task: Path) -> list[str]:
    try:
        return (task / "children").read_text().split()
    except (FileNotFoundError, ProcessLookupError):
        return []  # a thread that ended while we looked


SUBJECTS = ["a lighthouse keeper", "a lost kitten", "a dragon who cannot fly", "a robot gardener",
            "a brave little boat", "a snowman in summer", "a clockmaker", "a fox and a crow",
            "a sleepy owl", "a pirate who is afraid of water", "a tiny elephant", "a singing whale",
            "a forgetful wizard", "a moon that lost its glow", "a train that wanted to fly", "a shy giraffe",
            "a baker and a mouse", "a kite in a storm", "a knight with no horse", "a garden of glass",
            "a penguin in the desert", "a painter who sees music", "a bridge that talks", "a cloud shepherd"]  # fmt: skip


def story(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Write a long story about {SUBJECTS[i % len(SUBJECTS)]}."}]


def turns(url: str, tokens: int, chat: int) -> list[float]:
    """Time to first token of each of 10 turns of one growing chat."""
    messages: list[dict] = [{"role": "system", "content": f"You are assistant number {chat + 1}. Be brief."}]
    ttfts = []
    with closing(connected(url)) as client:
        for q in QUESTIONS:
            messages.append({"role": "user", "content": q})
            r = stream(client, url, messages, tokens)
            ttfts.append(r["ttft"])
            messages.append({"role": "assistant", "content": r["text"]})
    return ttfts


def concurrent(url: str, clients: int, tokens: int, pid: int, first_story: int) -> dict:
    """`clients` clients ask for stories first_story, first_story + 1, ... all at once."""
    results: list[dict] = [{} for _ in range(clients)]
    connections = [connected(url) for _ in range(clients)]
    barrier = threading.Barrier(clients)
    peak = [rss(pid)]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss(pid))
            time.sleep(0.05)

    def client(i: int) -> None:
        barrier.wait()  # all at once
        results[i] = stream(connections[i], url, story(first_story + i), tokens)

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
    for c in connections:
        c.close()
    return {
        "aggregate": sum(r["tokens"] for r in results) / wall,
        "ttfts": sorted(r["ttft"] for r in results),
        "peak": peak[0],
        "texts": [r["text"] for r in results],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="rounds per client count (1..3)")
    args = ap.parse_args()
    rounds = max(1, min(3, args.rounds))  # 3 rounds of 8 clients use all 24 subjects once
    from conftest import start_app

    median = statistics.median
    data = Path(tempfile.mkdtemp(prefix="localchat-bench-"))
    app = start_app(data, "--quantization", "none", "--idle-unload", "0")
    try:
        with closing(connected(app.url)) as warm:
            stream(warm, app.url, [{"role": "user", "content": "Hi"}], 4)
        chats = [turns(app.url, args.tokens, chat) for chat in range(3)]
        first, tenth = median(c[0] for c in chats), median(c[9] for c in chats)
        print(f"\nSmolLM2-135M-Instruct, fp32, CPU, {args.tokens} new tokens, greedy, through /v1 on loopback\n")
        print("(b) time to first token, a chat growing turn by turn (median of 3 chats)")
        print("    turn " + " ".join(f"{t + 1:>6}" for t in range(10)))
        print("    s    " + " ".join(f"{median(c[t] for c in chats):>6.3f}" for t in range(10)))
        print(f"    turn 10 / turn 1: {tenth:.3f} / {first:.3f} s = {tenth / first:.2f} (target <= 1.2)")
        runs = {n: [concurrent(app.url, n, args.tokens, app.process.pid, 8 * r) for r in range(rounds)]
                for n in (1, 2, 4, 8)}  # fmt: skip
        with closing(connected(app.url)) as solo:  # asked after the rounds, so no round found its prompt cached
            alone = [stream(solo, app.url, story(i), args.tokens)["text"] for i in range(8)]
        print(f"\n(c, d) concurrent clients, each asking for a new story; medians of {rounds} rounds")
        print(
            f"    {'clients':>7} {'agg tok/s':>10} {'vs 1':>6} {'first token min/median/max (s)':>32} "
            f"{'max vs 1':>8} {'RSS MiB':>7} {'vs 1':>8} {'= solo':>6}"
        )
        base_agg = median(r["aggregate"] for r in runs[1])
        base_ttft = median(r["ttfts"][0] for r in runs[1])
        base_peak = median(r["peak"] for r in runs[1])
        for n, rs in runs.items():
            agg = median(r["aggregate"] for r in rs)
            low, mid, high = (median(pick(r["ttfts"]) for r in rs) for pick in (min, median, max))
            peak = median(r["peak"] for r in rs)
            same = "yes" if rs[0]["texts"] == alone[:n] else "NO"
            print(f"    {n:>7} {agg:>10.1f} {agg / base_agg:>6.2f} "
                  f"{low:>10.2f} / {mid:.2f} / {high:.2f} {high / base_ttft:>8.2f}"
                  f" {peak / 2**20:>7.0f} {(peak - base_peak) / 2**20:>+8.0f} {same:>6}")  # fmt: skip
        print("    (targets: 4 clients >= 3x the aggregate of 1; no first token later than 2x one client's)")
    finally:
        app.process.kill()
        app.process.wait()


if __name__ == "__main__":
    main()
