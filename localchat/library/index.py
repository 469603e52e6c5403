"""Chunks, their vectors and hybrid search over them, in the SQLite file.

Owns the chunks table and chunks_fts. Invariants: user text reaches FTS5 only as quoted terms joined
by OR (never as query syntax); a document's chunks are replaced in one transaction; each library's
vectors are one float32 matrix in memory, loaded on first search and dropped whenever that library's
chunks change, and dropped when that library is gone; search and passages answer only from the library
ids they are given (access is the caller's job).
Exact cosine search: 100k chunks x 384 dims is one matrix-vector product (~25 ms on 2 cores).
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from localchat.library.chunk import Chunk, where
from localchat.library.types import Passage
from localchat.store.db import Database

RRF_K = 60
CANDIDATES = 50  # from each list, before fusion
MAX_TERMS = 64
_TERM = re.compile(r"\w+", re.UNICODE)


def fts_query(text: str) -> str:
    """A safe MATCH expression from free text: each word quoted, OR'ed ("" when there are none)."""
    terms = list(dict.fromkeys(t.lower() for t in _TERM.findall(text)))[:MAX_TERMS]
    return " OR ".join(f'"{t}"' for t in terms)


def fuse(*rankings: Sequence[int], k: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: each id scores sum(1 / (k + rank)); best first, ties by first seen."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda pair: -pair[1])


def to_blob(vector: Sequence[float]) -> bytes:
    array = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(array))
    return (array / norm if norm > 0 else array).tobytes()


@dataclass(frozen=True)
class _Matrix:
    ids: np.ndarray  # chunk ids, int64
    vectors: np.ndarray  # float32, one unit row per chunk


class Index:
    def __init__(self, db: Database):
        self.db = db
        self._lock = threading.Lock()
        self._matrices: dict[int, _Matrix] = {}
        self._changes = 0  # bumped by every invalidate: a matrix read across a change is not kept

    # -- writing ----------------------------------------------------------------------------------
    def replace(self, conn: sqlite3.Connection, library_id: int, document_id: int, chunks, vectors) -> None:
        """Inside the caller's transaction: the document's chunks become `chunks` (with `vectors`)."""
        conn.execute("DELETE FROM chunks WHERE document_id = ?", (document_id,))
        conn.executemany(
            "INSERT INTO chunks (document_id, library_id, ordinal, heading, page, text, vector) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (document_id, library_id, c.ordinal, c.heading, c.page, c.text, to_blob(v))
                for c, v in zip(chunks, vectors, strict=True)
            ],
        )
        self.invalidate(library_id)

    def invalidate(self, library_id: int) -> None:
        with self._lock:
            self._matrices.pop(library_id, None)
            self._changes += 1

    def retain(self, library_ids: Sequence[int]) -> None:
        """Drop the cached vectors of every library not in `library_ids` (those that still exist)."""
        keep = set(library_ids)
        with self._lock:
            for library_id in [i for i in self._matrices if i not in keep]:
                del self._matrices[library_id]  # ids are never reused: a late-cached one is only memory

    # -- searching --------------------------------------------------------------------------------
    def bm25(self, library_ids: Sequence[int], query: str, n: int = CANDIDATES) -> list[int]:
        match = fts_query(query)
        if not match or not library_ids:
            return []
        marks = ",".join("?" * len(library_ids))
        rows = self.db.query(
            "SELECT c.id FROM chunks_fts JOIN chunks c ON c.id = chunks_fts.rowid "
            f"WHERE chunks_fts MATCH ? AND c.library_id IN ({marks}) ORDER BY bm25(chunks_fts) LIMIT ?",
            (match, *library_ids, n),
        )
        return [r[0] for r in rows]

    def _matrix(self, library_id: int) -> _Matrix:
        with self._lock:
            if (found := self._matrices.get(library_id)) is not None:
                return found
            changes = self._changes
        rows = self.db.query(
            "SELECT id, vector FROM chunks WHERE library_id = ? AND vector IS NOT NULL ORDER BY id", (library_id,)
        )
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32)
        matrix = _Matrix(ids, vectors.reshape(len(rows), -1) if len(rows) else np.zeros((0, 1), np.float32))
        with self._lock:
            if self._changes == changes:
                self._matrices[library_id] = matrix
        return matrix

    def nearest(self, library_ids: Sequence[int], vector: Sequence[float], n: int = CANDIDATES) -> list[int]:
        query = np.frombuffer(to_blob(vector), dtype=np.float32)
        ids, scores = [], []
        for library_id in library_ids:
            matrix = self._matrix(library_id)
            if not len(matrix.ids) or matrix.vectors.shape[1] != len(query):
                continue  # empty, or vectors of another embedding model: BM25 still answers
            sims = matrix.vectors @ query
            top = np.argpartition(-sims, n)[:n] if len(sims) > n else np.arange(len(sims))
            ids.append(matrix.ids[top])
            scores.append(sims[top])
        if not ids:
            return []
        all_ids, all_scores = np.concatenate(ids), np.concatenate(scores)
        order = np.argsort(-all_scores, kind="stable")[:n]
        return [int(i) for i in all_ids[order]]

    def passages(self, ranked: Sequence[tuple[int, float]], library_ids: Sequence[int]) -> list[Passage]:
        """The ranked chunks that are (still) in one of `library_ids`, in rank order."""
        if not ranked or not library_ids:
            return []
        marks = ",".join("?" * len(ranked))
        libraries = ",".join("?" * len(library_ids))
        rows = self.db.query(
            "SELECT c.id, c.library_id, c.document_id, d.name, c.heading, c.page, c.text FROM chunks c "
            f"JOIN documents d ON d.id = c.document_id WHERE c.id IN ({marks}) AND c.library_id IN ({libraries})",
            [*(i for i, _ in ranked), *library_ids],
        )
        by_id = {r[0]: r for r in rows}
        return [
            Passage(r[0], r[1], r[2], r[3], where(r[4], r[5]), r[6], score)
            for chunk_id, score in ranked
            if (r := by_id.get(chunk_id)) is not None
        ]


def embedding_text(chunk: Chunk) -> str:
    """What the embedder reads for a chunk: its heading path too, so "Wi-Fi" under "Setup" is found."""
    return f"{chunk.heading}\n{chunk.text}" if chunk.heading else chunk.text
