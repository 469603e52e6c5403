"""The background indexer: one thread turns queued documents into searchable chunks, and keeps
household folders in step with the files in them.

Invariants: the queue is the documents table itself (status 'queued'), so nothing queued is lost to a
crash and a document left 'indexing' is queued again at start; one document's chunks are written in
one transaction, and only if the document is still there and unchanged since it was picked; a file
that fails is marked failed with one line and the next one goes on; while `busy()` is true (a chat
reply is being written) no embedding batch is sent, so replies come first. Folder files are read in
place, never copied or written.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from localchat.library.chunk import chunk_sections
from localchat.library.index import Index, embedding_text
from localchat.library.parse import read, supported
from localchat.library.types import Embedder, IndexProgress, LibraryError, UnreadableFile
from localchat.store.db import Database

log = logging.getLogger(__name__)
BATCH = 16
SCAN_EVERY = 30.0
BACKOFF_MIN, BACKOFF_MAX = 1.0, 60.0  # seconds between tries after the loop itself failed


class Rounds:
    """IndexProgress per library: a round starts when a file is queued in a library with nothing pending."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rounds: dict[int, IndexProgress] = {}

    def queued(self, library_id: int, count: int = 1) -> None:
        with self._lock:
            now = self._rounds.get(library_id)
            if now is None or now.finished:
                now = IndexProgress(library_id, 0, 0)
            self._rounds[library_id] = replace(now, total=now.total + count)

    def reset(self, library_id: int, queued: int) -> None:
        """At start: a round of exactly what is queued (whatever was counted before)."""
        with self._lock:
            self._rounds[library_id] = IndexProgress(library_id, 0, queued)

    def started(self, library_id: int, name: str) -> None:
        with self._lock:
            if (now := self._rounds.get(library_id)) is not None:
                self._rounds[library_id] = replace(now, current=name, current_fraction=0.0)

    def step(self, library_id: int, fraction: float) -> None:
        with self._lock:
            if (now := self._rounds.get(library_id)) is not None:
                self._rounds[library_id] = replace(now, current_fraction=fraction)

    def finished(self, library_id: int, error: str = "") -> None:
        with self._lock:
            if (now := self._rounds.get(library_id)) is not None:
                errors = now.errors + ((f"{now.current}: {error}",) if error else ())
                self._rounds[library_id] = replace(
                    now, done=now.done + 1, current="", errors=errors, current_fraction=0.0
                )

    def problem(self, library_id: int, message: str) -> None:
        """Something the admin must see that is not one file's failure (an unreadable folder); said once."""
        with self._lock:
            now = self._rounds.get(library_id) or IndexProgress(library_id, 0, 0)
            if message not in now.errors:
                self._rounds[library_id] = replace(now, errors=now.errors + (message,))

    def dropped(self, library_id: int) -> None:
        """A queued file was deleted before it was indexed."""
        with self._lock:
            if (now := self._rounds.get(library_id)) is not None and now.total > now.done:
                self._rounds[library_id] = replace(now, total=now.total - 1)

    def get(self, library_id: int) -> IndexProgress | None:
        with self._lock:
            return self._rounds.get(library_id)


class Indexer:
    def __init__(
        self,
        db: Database,
        index: Index,
        embedder: Embedder,
        busy: Callable[[], bool] = lambda: False,
        scan_every: float = SCAN_EVERY,
        sweep: Callable[[], None] = lambda: None,
    ):
        self.db, self.index, self.embedder, self.busy = db, index, embedder, busy
        self.scan_every, self.sweep = scan_every, sweep
        self.rounds = Rounds()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._scan_lock = threading.Lock()
        self._working = False
        self._scanned = False
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self.db.execute("UPDATE documents SET status = 'queued' WHERE status = 'indexing'")  # a crash's leftovers
        for row in self.db.query("SELECT library_id, count(*) FROM documents WHERE status = 'queued' GROUP BY 1"):
            self.rounds.reset(row[0], row[1])
        self._thread = threading.Thread(target=self._run, name="library-indexer", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wake(self) -> None:
        self._wake.set()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until nothing is queued or being indexed (and the first folder scan ran); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pending = self.db.query_one("SELECT count(*) FROM documents WHERE status IN ('queued', 'indexing')")[0]
            if self._scanned and not self._working and not pending:
                return True
            self._stop.wait(0.02)
        return False

    def _run(self) -> None:
        next_scan, pause = 0.0, 0.0
        while not self._stop.is_set():
            try:
                next_scan = self._step(next_scan)
                pause = 0.0
            except Exception:  # noqa: BLE001  (a locked or full database, a bug: the thread must outlive it)
                pause = min(BACKOFF_MAX, max(BACKOFF_MIN, pause * 2))
                log.exception("the library indexer failed; trying again in %.0f s", pause)
                self._stop.wait(pause)

    def _step(self, next_scan: float) -> float:
        """One turn of the loop: a due folder scan, then one queued document (or a wait); the next scan time."""
        if time.monotonic() >= next_scan:
            next_scan = time.monotonic() + self.scan_every  # an error below waits for the next turn, not a spin
            self.sweep()
            self._scan_all()
        row = self.db.query_one(
            "SELECT id, library_id, name, path, size_bytes, mtime, in_place FROM documents "
            "WHERE status = 'queued' ORDER BY id LIMIT 1"
        )
        if row is None:
            self._wake.wait(max(0.0, next_scan - time.monotonic()))
            self._wake.clear()
            return next_scan
        self._working = True
        try:
            self._index_one(row)
        except Exception:  # noqa: BLE001  (the thread must outlive any one file)
            log.exception("indexing document %s failed", row["id"])
        finally:
            self._working = False
        return next_scan

    # -- one document -------------------------------------------------------------------------------
    def _index_one(self, row) -> None:
        doc, library = row["id"], row["library_id"]
        picked = self.db.execute(
            "UPDATE documents SET status = 'indexing', error = '' WHERE id = ? AND status = 'queued'", (doc,)
        )
        if not picked:
            return
        self.rounds.started(library, row["name"])
        try:
            if row["in_place"]:
                self._check_in_place(library, row["path"])
            chunks = chunk_sections(read(Path(row["path"]), row["name"]))
            vectors: list[list[float]] = []
            for start in range(0, len(chunks), BATCH):
                while self.busy() and not self._stop.is_set():
                    self._stop.wait(0.1)
                if self._stop.is_set():
                    return  # left 'indexing': queued again at the next start
                vectors += self.embedder.embed([embedding_text(c) for c in chunks[start : start + BATCH]])
                self.rounds.step(library, len(vectors) / len(chunks))
            if len(vectors) != len(chunks):
                raise LibraryError(f"the embedding model answered {len(vectors)} vectors for {len(chunks)} passages")
        except Exception as exc:  # noqa: BLE001  (a parser or the embedder: this file fails, the rest go on)
            error = " ".join(str(exc).split())[:200] or type(exc).__name__
            self.db.execute(
                "UPDATE documents SET status = 'failed', error = ? WHERE id = ? AND status = 'indexing'", (error, doc)
            )
            self.rounds.finished(library, error)
            return
        with self.db.transaction() as conn:
            still = conn.execute(
                "SELECT 1 FROM documents WHERE id = ? AND status = 'indexing' AND size_bytes = ? AND mtime = ?",
                (doc, row["size_bytes"], row["mtime"]),
            ).fetchone()
            if still:  # deleted, or changed and queued again, while it was read: drop this result
                self.index.replace(conn, library, doc, chunks, vectors)
                conn.execute("UPDATE documents SET status = 'ready' WHERE id = ?", (doc,))
        self.rounds.finished(library)

    def _check_in_place(self, library_id: int, path: str) -> None:
        """A folder file is read only while it really lies in the folder (not a link put there since the scan)."""
        row = self.db.query_one("SELECT folder FROM libraries WHERE id = ?", (library_id,))
        if row is None or not row[0] or os.path.islink(path) or not _inside(path, row[0]):
            raise UnreadableFile("it is a link to a file outside the library's folder")

    # -- folders ------------------------------------------------------------------------------------
    def _scan_all(self) -> None:
        for row in self.db.query("SELECT id FROM libraries WHERE owner_id IS NULL AND folder != ''"):
            try:
                self.scan(row[0])
            except Exception as exc:  # noqa: BLE001  (one folder's trouble must not stop the others)
                log.exception("scanning the folder of library %s failed", row[0])
                self.rounds.problem(row[0], f"the folder could not be read ({_one_line(exc)})")
        self._scanned = True

    def scan(self, library_id: int) -> None:
        """Bring a folder library's documents in step with its folder: new files queued, changed ones
        (size or mtime) queued again, removed ones dropped. A folder that is not there, or is empty
        while it had files (an unplugged drive, its mount point), changes nothing."""
        with self._scan_lock:
            row = self.db.query_one("SELECT folder FROM libraries WHERE id = ? AND owner_id IS NULL", (library_id,))
            if row is None or not row[0] or not Path(row[0]).is_dir():
                return
            folder = Path(row[0])
            unreadable: list[str] = []
            found = dict(_walk(folder, unreadable.append))
            for problem in unreadable:
                self.rounds.problem(library_id, problem)
            known = {
                r["path"]: r
                for r in self.db.query(
                    "SELECT id, path, size_bytes, mtime FROM documents WHERE library_id = ? AND in_place = 1",
                    (library_id,),
                )
            }
            if known and not found and not any(folder.iterdir()):
                self.rounds.problem(library_id, f"{folder} is empty (is its drive plugged in?): its files are kept")
                return  # an unplugged drive's empty mount point: not every file removed
            queued = 0
            with self.db.transaction() as conn:
                for path, (size, mtime) in found.items():
                    old = known.get(path)
                    if old is None:
                        conn.execute(
                            "INSERT INTO documents (library_id, name, path, size_bytes, sha256, mtime, in_place, "
                            "status, added_at) VALUES (?, ?, ?, ?, '', ?, 1, 'queued', ?)",
                            (library_id, Path(path).relative_to(folder).as_posix(), path, size, mtime, time.time()),
                        )
                        queued += 1
                    elif (old["size_bytes"], old["mtime"]) != (size, mtime):
                        conn.execute(
                            "UPDATE documents SET size_bytes = ?, mtime = ?, status = 'queued', error = '' "
                            "WHERE id = ?",
                            (size, mtime, old["id"]),
                        )
                        queued += 1
                gone = [r["id"] for p, r in known.items() if p not in found]
                for doc in gone:
                    conn.execute("DELETE FROM chunks WHERE document_id = ?", (doc,))
                    conn.execute("DELETE FROM documents WHERE id = ?", (doc,))
            if gone:
                self.index.invalidate(library_id)
            if queued:
                self.rounds.queued(library_id, queued)
                self._wake.set()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def _inside(path: str, folder: str) -> bool:
    real, top = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([real, top]) == top


def _walk(folder: Path, unreadable: Callable[[str], None] = lambda _: None):
    """(path, (size, mtime)) of every regular file under `folder`, skipping hidden files and folders and
    links (a link could lead out of the folder, to anything the server can read); a subfolder that
    cannot be read is reported to `unreadable`, one line each."""
    top = str(folder)

    def failed(exc: OSError) -> None:
        where = os.path.relpath(exc.filename, top) if exc.filename else "."
        unreadable(f"{top if where == '.' else where}: could not be read ({exc.strerror or exc})")

    for root, dirs, files in os.walk(folder, onerror=failed):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not os.path.islink(os.path.join(root, d)))
        for name in sorted(files):
            if name.startswith(".") or not supported(name):
                continue
            path = os.path.join(root, name)
            try:
                info = os.lstat(path)
            except OSError as exc:
                failed(exc)
                continue
            if stat.S_ISREG(info.st_mode):
                yield path, (info.st_size, info.st_mtime)
