"""Libraries: the LibraryService the core, the UI and the API call: who may use which library, the
files in the data dir, quotas, and search over what a member may use.

Invariants: every method taking a Member first resolves the libraries that member may use (their own
private one; household ones listing them or everyone; every household one for an admin, who manages
them) and answers NotFound for anything else, exactly as for an id that does not exist; uploaded files
are copied to data_dir/libraries/<library id>/ (folders 0700, files 0600, names made from the content
hash, so nothing a user types becomes a path); a quota is checked before anything is written; a
household folder is never the data dir, inside it or around it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from localchat.library.index import Index, fuse
from localchat.library.indexer import SCAN_EVERY, Indexer
from localchat.library.parse import formats_line, supported
from localchat.library.types import (
    DocumentInfo,
    Embedder,
    IndexProgress,
    LibraryError,
    LibraryInfo,
    Passage,
    QuotaExceeded,
)
from localchat.store import Member
from localchat.store.db import PRIVATE_FILE, Database, NotFound, make_private

log = logging.getLogger(__name__)
PRIVATE_NAME = "My documents"
GONE = "That library does not exist (or is not yours to use)"
_USABLE = (
    "(l.owner_id = :member OR (l.owner_id IS NULL AND (:admin OR l.everyone = 1 OR EXISTS "
    "(SELECT 1 FROM library_access a WHERE a.library_id = l.id AND a.member_id = :member))))"
)


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"


def _display_name(name: str) -> str:
    """The name shown for a file: its last path part, without control characters, at most 200 characters."""
    base = Path(name.replace("\\", "/")).name
    base = "".join(ch for ch in base if ch.isprintable()).strip()
    return base[:200] or "file"


class Libraries:
    def __init__(
        self,
        db: Database,
        data_dir: Path,
        embedder: Embedder,
        busy: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.time,
        scan_every: float = SCAN_EVERY,
    ):
        self.db, self.embedder, self.clock = db, embedder, clock
        self.root = Path(data_dir) / "libraries"
        self.uploads = Path(data_dir) / "tmp" / "uploads"  # the upload route's temp files (web/documents.py)
        self.index = Index(db)
        self.indexer = Indexer(db, self.index, embedder, busy, scan_every, sweep=self.sweep)
        self._adding = threading.Lock()  # the quota check, the copy and the insert (or a delete) as one step

    def start(self) -> None:
        """Start the indexer (and folder scans); first drop what a crash left: half-copied files."""
        for leftover in [*self.root.glob("*/.*.part"), *self.uploads.glob("*.part")]:
            leftover.unlink(missing_ok=True)
        self.sweep()
        self.indexer.start()

    def sweep(self) -> None:
        """Forget libraries that are gone (a removed member's cascades in the store): their cached
        vectors and their files. Runs at start and with every folder scan of the indexer."""
        with self._adding:  # a library made meanwhile gets its folder only under this lock: never swept
            known = [r[0] for r in self.db.query("SELECT id FROM libraries")]
            self.index.retain(known)
            names = {str(i) for i in known}
            for folder in self.root.iterdir() if self.root.is_dir() else ():
                if folder.is_dir() and folder.name.isdigit() and folder.name not in names:
                    shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        self.indexer.close()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        return self.indexer.wait_idle(timeout)

    def rescan(self, library_id: int) -> None:
        self.indexer.scan(library_id)

    # -- access -------------------------------------------------------------------------------------
    def _args(self, member: Member, **more) -> dict:
        return {"member": member.id, "admin": int(member.is_admin), **more}

    def _library(self, member: Member, library_id: int):
        row = self.db.query_one(
            f"SELECT l.* FROM libraries l WHERE l.id = :id AND {_USABLE}", self._args(member, id=library_id)
        )
        if row is None:
            raise NotFound(GONE)
        return row

    def _household(self, admin: Member, library_id: int):
        if not admin.is_admin:
            raise NotFound(GONE)
        row = self.db.query_one("SELECT * FROM libraries WHERE id = ? AND owner_id IS NULL", (library_id,))
        if row is None:
            raise NotFound(GONE)
        return row

    def _private_id(self, member: Member) -> int:
        row = self.db.query_one("SELECT id FROM libraries WHERE owner_id = ? ORDER BY id LIMIT 1", (member.id,))
        if row is not None:
            return row[0]
        with self.db.transaction() as conn:  # two first requests may race: check again inside
            row = conn.execute("SELECT id FROM libraries WHERE owner_id = ? LIMIT 1", (member.id,)).fetchone()
            if row is not None:
                return row[0]
            return conn.execute(
                "INSERT INTO libraries (name, owner_id, created_at) VALUES (?, ?, ?)",
                (PRIVATE_NAME, member.id, self.clock()),
            ).lastrowid

    def _info(self, row) -> LibraryInfo:
        members = None
        if row["owner_id"] is None and not row["everyone"]:
            members = tuple(
                r[0] for r in self.db.query("SELECT member_id FROM library_access WHERE library_id = ?", (row["id"],))
            )
        count, size = self.db.query_one(
            "SELECT count(*), coalesce(sum(size_bytes), 0) FROM documents WHERE library_id = ?", (row["id"],)
        )
        return LibraryInfo(row["id"], row["name"], row["owner_id"], row["folder"], members, count, size)

    def visible(self, member: Member) -> list[LibraryInfo]:
        self._private_id(member)
        rows = self.db.query(
            f"SELECT l.* FROM libraries l WHERE {_USABLE} ORDER BY l.owner_id IS NULL, l.name COLLATE NOCASE, l.id",
            self._args(member),
        )
        return [self._info(r) for r in rows]

    # -- household libraries (admins) ---------------------------------------------------------------
    def _check_folder(self, folder: str) -> str:
        if not folder:
            return ""
        path = Path(folder).expanduser()
        if not path.is_absolute() or not path.is_dir():
            raise LibraryError(f"{folder} is not a folder on this computer (give its full path)")
        path, data = path.resolve(), self.root.parent.resolve()
        if path == data or data in path.parents or path in data.parents:  # members' private files live there
            raise LibraryError(f"{folder} holds localchat's own data; choose a folder of documents outside it")
        return str(path)

    def _set_members(self, conn, library_id: int, members: Sequence[int] | None) -> None:
        conn.execute("DELETE FROM library_access WHERE library_id = ?", (library_id,))
        conn.execute("UPDATE libraries SET everyone = ? WHERE id = ?", (int(members is None), library_id))
        for member_id in dict.fromkeys(members or ()):
            if conn.execute("SELECT 1 FROM members WHERE id = ?", (member_id,)).fetchone():
                conn.execute(
                    "INSERT INTO library_access (library_id, member_id) VALUES (?, ?)", (library_id, member_id)
                )

    def create_household(
        self, admin: Member, name: str, members: Sequence[int] | None = None, folder: str = ""
    ) -> LibraryInfo:
        if not admin.is_admin:
            raise LibraryError("Only an admin can make a household library")
        if not (name := " ".join(name.split())):
            raise LibraryError("A household library needs a name")
        folder = self._check_folder(folder)
        with self.db.transaction() as conn:
            library_id = conn.execute(
                "INSERT INTO libraries (name, owner_id, folder, created_at) VALUES (?, NULL, ?, ?)",
                (name[:100], folder, self.clock()),
            ).lastrowid
            self._set_members(conn, library_id, members)
        if folder:
            self.indexer.scan(library_id)
        return self._info(self._household(admin, library_id))

    def update_household(
        self,
        admin: Member,
        library_id: int,
        *,
        name: str | None = None,
        members: Sequence[int] | None | Literal["keep"] = "keep",
        folder: str | None = None,
    ) -> LibraryInfo:
        row = self._household(admin, library_id)
        if name is not None and not (name := " ".join(name.split())):
            raise LibraryError("A household library needs a name")
        new_folder = row["folder"] if folder is None else self._check_folder(folder)
        with self.db.transaction() as conn:
            if name is not None:
                conn.execute("UPDATE libraries SET name = ? WHERE id = ?", (name[:100], library_id))
            if members != "keep":
                self._set_members(conn, library_id, members)
            if new_folder != row["folder"]:  # the old folder's files leave with it
                conn.execute("UPDATE libraries SET folder = ? WHERE id = ?", (new_folder, library_id))
                conn.execute(
                    "DELETE FROM chunks WHERE document_id IN "
                    "(SELECT id FROM documents WHERE library_id = ? AND in_place = 1)",
                    (library_id,),
                )
                conn.execute("DELETE FROM documents WHERE library_id = ? AND in_place = 1", (library_id,))
        if new_folder != row["folder"]:
            self.index.invalidate(library_id)
            self.indexer.scan(library_id)
        return self._info(self._household(admin, library_id))

    def delete_library(self, admin: Member, library_id: int) -> None:
        self._household(admin, library_id)
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM chunks WHERE library_id = ?", (library_id,))
            conn.execute("DELETE FROM libraries WHERE id = ?", (library_id,))  # documents, access: cascade
        self.index.invalidate(library_id)
        shutil.rmtree(self.root / str(library_id), ignore_errors=True)

    # -- documents ----------------------------------------------------------------------------------
    def documents(self, member: Member, library_id: int) -> list[DocumentInfo]:
        self._library(member, library_id)
        rows = self.db.query(
            "SELECT d.*, (SELECT count(*) FROM chunks c WHERE c.document_id = d.id) AS n FROM documents d "
            "WHERE d.library_id = ? ORDER BY d.name COLLATE NOCASE, d.id",
            (library_id,),
        )
        return [self._document(r) for r in rows]

    @staticmethod
    def _document(row) -> DocumentInfo:
        n = row["n"] if "n" in row.keys() else 0
        return DocumentInfo(
            row["id"],
            row["library_id"],
            row["name"],
            row["size_bytes"],
            row["status"],
            row["error"],
            n,
            row["added_at"],
        )

    def add_file(self, member: Member, library_id: int, name: str, source: Path) -> DocumentInfo:
        library = self._library(member, library_id)
        if library["owner_id"] is None and not member.is_admin:
            raise LibraryError("Only an admin can add files to a household library")
        name = _display_name(name)
        if not supported(name):
            raise LibraryError(f"{name}: a library reads {formats_line()} files")
        source = Path(source)
        try:
            size, digest = source.stat().st_size, _sha256(source)
        except OSError as exc:
            raise LibraryError(f"{name} could not be read: {exc.strerror or exc}") from exc
        with self._adding:
            same = self.db.query_one(
                "SELECT *, 0 AS n FROM documents WHERE library_id = ? AND sha256 = ? AND in_place = 0",
                (library_id, digest),
            )
            if same is not None:
                return self._document(same)
            if library["owner_id"] is not None:
                used, limit = self._usage(library["owner_id"])
                if limit is not None and used + size > limit:
                    raise QuotaExceeded(
                        f"{name} ({_size(size)}) would take your documents past the {_size(limit)} the admin "
                        f"allows ({_size(used)} used); delete some files first"
                    )
            target = self.root / str(library_id) / (digest[:32] + Path(name).suffix.lower())
            _copy_private(source, target)
            try:
                with self.db.transaction() as conn:
                    doc = conn.execute(
                        "INSERT INTO documents (library_id, name, path, size_bytes, sha256, status, added_at) "
                        "VALUES (?, ?, ?, ?, ?, 'queued', ?)",
                        (library_id, name, str(target), size, digest, self.clock()),
                    ).lastrowid
                    row = conn.execute("SELECT *, 0 AS n FROM documents WHERE id = ?", (doc,)).fetchone()
            except BaseException:
                target.unlink(missing_ok=True)
                raise
        self.indexer.rounds.queued(library_id)
        self.indexer.wake()
        return self._document(row)

    def delete_document(self, member: Member, library_id: int, document_id: int) -> None:
        library = self._library(member, library_id)
        if library["owner_id"] is None and not member.is_admin:
            raise LibraryError("Only an admin can remove files from a household library")
        with self._adding:  # else an add of the same content could dedupe onto this row, or copy under it
            row = self.db.query_one(
                "SELECT * FROM documents WHERE id = ? AND library_id = ?", (document_id, library_id)
            )
            if row is None:
                raise NotFound("That file is not in this library (it may have been deleted already)")
            if row["in_place"]:
                raise LibraryError(f"{row['name']} comes from the library's folder: remove it there")
            with self.db.transaction() as conn:
                conn.execute("DELETE FROM chunks WHERE document_id = ?", (document_id,))
                conn.execute("DELETE FROM documents WHERE id = ?", (document_id,))
            self.index.invalidate(library_id)
            if row["status"] == "queued":
                self.indexer.rounds.dropped(library_id)
            path = Path(row["path"])
            if path.parent == self.root / str(library_id):  # only ever a file this service wrote
                path.unlink(missing_ok=True)

    def progress(self, member: Member, library_id: int) -> IndexProgress | None:
        self._library(member, library_id)
        return self.indexer.rounds.get(library_id)

    # -- search -------------------------------------------------------------------------------------
    def search(self, member: Member, library_ids: Sequence[int] | None, query: str, k: int = 5) -> list[Passage]:
        usable = [info.id for info in self.visible(member)]
        ids = usable if library_ids is None else [i for i in dict.fromkeys(library_ids) if i in usable]
        self.index.retain([r[0] for r in self.db.query("SELECT id FROM libraries")])  # a removed member's cache
        if not ids or not query.strip() or k <= 0:
            return []
        return self.index.passages(self.ranked(ids, query, k), ids)

    def ranked(self, library_ids: Sequence[int], query: str, k: int, mode: str = "hybrid") -> list[tuple[int, float]]:
        """(chunk id, score) best first; mode "bm25" or "vector" ranks by one list only (the benchmark)."""
        lexical = self.index.bm25(library_ids, query) if mode != "vector" else []
        semantic: list[int] = []
        if mode != "bm25":
            try:
                semantic = self.index.nearest(library_ids, self.embedder.embed([query])[0])
            except Exception:  # noqa: BLE001  (no embedding model now: keyword search still answers)
                log.exception("embedding the query failed; searching by keywords only")
        return fuse(lexical, semantic)[:k]

    def passage(self, member: Member, chunk_id: int) -> Passage:
        row = self.db.query_one("SELECT library_id FROM chunks WHERE id = ?", (chunk_id,))
        if row is None:
            raise NotFound("That passage is gone (its file was deleted or indexed again)")
        try:
            self._library(member, row[0])
        except NotFound:
            raise NotFound("That passage is gone (its file was deleted or indexed again)") from None
        found = self.index.passages([(chunk_id, 0.0)], [row[0]])
        if not found:  # deleted since the first look
            raise NotFound("That passage is gone (its file was deleted or indexed again)")
        return found[0]

    # -- quotas -------------------------------------------------------------------------------------
    def _usage(self, member_id: int) -> tuple[int, int | None]:
        used = self.db.query_one(
            "SELECT coalesce(sum(d.size_bytes), 0) FROM documents d JOIN libraries l ON l.id = d.library_id "
            "WHERE l.owner_id = ?",
            (member_id,),
        )[0]
        row = self.db.query_one("SELECT limit_bytes FROM library_quotas WHERE member_id = ?", (member_id,))
        return used, (row[0] if row else None)

    def quota(self, member: Member) -> tuple[int, int | None]:
        return self._usage(member.id)

    def set_quota(self, admin: Member, member_id: int, limit_bytes: int | None) -> None:
        if not admin.is_admin:
            raise LibraryError("Only an admin can set disk quotas")
        if limit_bytes is not None and limit_bytes < 0:
            raise LibraryError("A quota cannot be negative")
        if limit_bytes is None:
            self.db.execute("DELETE FROM library_quotas WHERE member_id = ?", (member_id,))
        else:
            self.db.execute(
                "INSERT OR REPLACE INTO library_quotas (member_id, limit_bytes) VALUES (?, ?)", (member_id, limit_bytes)
            )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _copy_private(source: Path, target: Path) -> None:
    """Copy through a temp file made 0600 from the start, then rename: no half file, never readable by others."""
    make_private(target.parent.parent)
    make_private(target.parent)
    temp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.part")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), PRIVATE_FILE)
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
        os.chmod(temp, PRIVATE_FILE)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
