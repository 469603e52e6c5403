"""Retrieval quality with the real all-MiniLM-L6-v2 on the shipped SQuAD-shaped fixture: hybrid search
(BM25 + vectors, reciprocal rank fusion) finds the passage holding the answer at least as often in its
top 5 as BM25 alone and as vectors alone (bench/retrieval.py prints the numbers)."""

from __future__ import annotations

import importlib.util
import sys

from conftest import ROOT

from localchat.engine.embedding import SentenceEmbedder


def _bench():
    spec = importlib.util.spec_from_file_location("bench_retrieval", ROOT / "bench" / "retrieval.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_hybrid_recall_at_5_is_not_worse_than_either_alone() -> None:
    bench = _bench()
    assert len(bench.load_fixture()) >= 30
    scores = bench.quality(SentenceEmbedder(device="cpu"))  # the engine's own embedder
    hybrid = scores["hybrid"].recall_at_5
    assert hybrid >= scores["bm25"].recall_at_5 and hybrid >= scores["vector"].recall_at_5, scores
    assert hybrid >= 0.9, scores  # the passages are found at all (a broken embedder or FTS would sink this)
