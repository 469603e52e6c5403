"""FakeLibraries: the LibraryService protocol in memory, for core, API and UI tests before the real one.

Honours the same access rules as the real service: a private library is its owner's alone; a household
library is usable by the members it lists (or everyone when `members` is None); anything a member may not
use is NotFound, never "forbidden". Search is plain word overlap (no embeddings), best first. Files are
"indexed" at once: each blank-line-separated paragraph of a text file becomes one chunk; `add_text` adds a
document from a string with explicit (where, text) chunks. Not thread-safe beyond one lock around state.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

from localchat.library.types import (
    DocumentInfo,
    IndexProgress,
    LibraryError,
    LibraryInfo,
    Passage,
    QuotaExceeded,
    UnreadableFile,
)
from localchat.store import Member, NotFound

_WORD = re.compile(r"\w+", re.UNICODE)


def _words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text) if len(w) > 1}


class FakeLibraries:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._libraries: dict[int, LibraryInfo] = {}
        self._documents: dict[int, DocumentInfo] = {}
        self._chunks: dict[int, Passage] = {}
        self._quotas: dict[int, int | None] = {}
        self._progress: dict[int, IndexProgress] = {}
        self._next = {"library": 1, "document": 1, "chunk": 1}
        self.searches: list[tuple[int, tuple[int, ...] | None, str, int]] = []  # (member id, ids, query, k)

    def _id(self, kind: str) -> int:
        value = self._next[kind]
        self._next[kind] = value + 1
        return value

    # -- access -------------------------------------------------------------------------------
    @staticmethod
    def _may_use(member: Member, library: LibraryInfo) -> bool:
        if library.owner_id is not None:
            return library.owner_id == member.id
        return library.members is None or member.id in library.members

    def _usable(self, member: Member, library_id: int) -> LibraryInfo:
        library = self._libraries.get(library_id)
        if library is None or not self._may_use(member, library):
            raise NotFound("That library does not exist.")
        return library

    def _private(self, member: Member) -> LibraryInfo:
        for library in self._libraries.values():
            if library.owner_id == member.id:
                return library
        library = LibraryInfo(id=self._id("library"), name="My documents", owner_id=member.id)
        self._libraries[library.id] = library
        return library

    @staticmethod
    def _admin(member: Member) -> None:
        if not member.is_admin:
            raise LibraryError("Only an admin can manage household libraries.")

    def _counted(self, library: LibraryInfo) -> LibraryInfo:
        docs = [d for d in self._documents.values() if d.library_id == library.id]
        return replace(library, documents=len(docs), size_bytes=sum(d.size_bytes for d in docs))

    # -- libraries ----------------------------------------------------------------------------
    def visible(self, member: Member) -> list[LibraryInfo]:
        with self._lock:
            mine = self._private(member)
            shared = [lib for lib in self._libraries.values() if lib.household and self._may_use(member, lib)]
            return [self._counted(mine), *(self._counted(lib) for lib in sorted(shared, key=lambda x: x.id))]

    def create_household(
        self, admin: Member, name: str, members: Sequence[int] | None = None, folder: str = ""
    ) -> LibraryInfo:
        self._admin(admin)
        if not name.strip():
            raise LibraryError("Give the library a name.")
        with self._lock:
            library = LibraryInfo(
                id=self._id("library"),
                name=name.strip(),
                owner_id=None,
                folder=folder,
                members=None if members is None else tuple(members),
            )
            self._libraries[library.id] = library
            return library

    def update_household(
        self,
        admin: Member,
        library_id: int,
        *,
        name: str | None = None,
        members: Sequence[int] | None | Literal["keep"] = "keep",
        folder: str | None = None,
    ) -> LibraryInfo:
        self._admin(admin)
        with self._lock:
            library = self._libraries.get(library_id)
            if library is None or not library.household:
                raise NotFound("That library does not exist.")
            if name is not None:
                library = replace(library, name=name.strip() or library.name)
            if members != "keep":
                library = replace(library, members=None if members is None else tuple(members))
            if folder is not None:
                library = replace(library, folder=folder)
            self._libraries[library_id] = library
            return self._counted(library)

    def delete_library(self, admin: Member, library_id: int) -> None:
        self._admin(admin)
        with self._lock:
            library = self._libraries.get(library_id)
            if library is None or not library.household:
                raise NotFound("That library does not exist.")
            del self._libraries[library_id]
            for doc in [d for d in self._documents.values() if d.library_id == library_id]:
                self._drop_document(doc.id)

    # -- documents ----------------------------------------------------------------------------
    def documents(self, member: Member, library_id: int) -> list[DocumentInfo]:
        with self._lock:
            self._usable(member, library_id)
            return [d for d in self._documents.values() if d.library_id == library_id]

    def add_text(
        self, member: Member, library_id: int, name: str, chunks: Sequence[tuple[str, str]], *, check: bool = True
    ) -> DocumentInfo:
        """Add a document from (where, text) chunks, ready at once (a test helper, not in the protocol).
        `check=False` skips the access check, to seed a household library without an admin."""
        with self._lock:
            library = self._usable(member, library_id) if check else self._libraries[library_id]
            size = sum(len(text.encode()) for _, text in chunks)
            self._check_quota(library, size)
            doc = DocumentInfo(
                id=self._id("document"),
                library_id=library_id,
                name=name,
                size_bytes=size,
                status="ready",
                chunks=len(chunks),
                added_at=time.time(),
            )
            self._documents[doc.id] = doc
            for where, text in chunks:
                cid = self._id("chunk")
                self._chunks[cid] = Passage(cid, library_id, doc.id, name, where, text)
            self._progress[library_id] = IndexProgress(library_id, done=1, total=1)
            return doc

    def add_file(self, member: Member, library_id: int, name: str, source: Path) -> DocumentInfo:
        with self._lock:
            library = self._usable(member, library_id)
            if library.household and not member.is_admin:
                raise LibraryError("Only an admin can add files to a household library.")
        try:
            text = Path(source).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            with self._lock:
                doc = DocumentInfo(
                    id=self._id("document"),
                    library_id=library_id,
                    name=name,
                    size_bytes=Path(source).stat().st_size if Path(source).exists() else 0,
                    status="failed",
                    error=str(UnreadableFile(f"{name} could not be read: {exc.__class__.__name__}")),
                    added_at=time.time(),
                )
                self._documents[doc.id] = doc
                self._progress[library_id] = IndexProgress(library_id, 1, 1, errors=(f"{name}: {doc.error}",))
                return doc
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
        return self.add_text(member, library_id, name, [("", p) for p in paragraphs])

    def _check_quota(self, library: LibraryInfo, size: int) -> None:
        if library.owner_id is None:
            return
        limit = self._quotas.get(library.owner_id)
        used = sum(d.size_bytes for d in self._documents.values() if d.library_id == library.id)
        if limit is not None and used + size > limit:
            raise QuotaExceeded("This file would go past your disk allowance; delete some files or ask an admin.")

    def _drop_document(self, document_id: int) -> None:
        self._documents.pop(document_id, None)
        for cid in [c for c, p in self._chunks.items() if p.document_id == document_id]:
            del self._chunks[cid]

    def delete_document(self, member: Member, library_id: int, document_id: int) -> None:
        with self._lock:
            library = self._usable(member, library_id)
            doc = self._documents.get(document_id)
            if doc is None or doc.library_id != library_id:
                raise NotFound("That file does not exist.")
            if library.household and not member.is_admin:
                raise LibraryError("Only an admin can remove files from a household library.")
            self._drop_document(document_id)

    def progress(self, member: Member, library_id: int) -> IndexProgress | None:
        with self._lock:
            self._usable(member, library_id)
            return self._progress.get(library_id)

    # -- retrieval ----------------------------------------------------------------------------
    def search(self, member: Member, library_ids: Sequence[int] | None, query: str, k: int = 5) -> list[Passage]:
        with self._lock:
            self.searches.append((member.id, None if library_ids is None else tuple(library_ids), query, k))
            self._private(member)
            usable = {lib.id for lib in self._libraries.values() if self._may_use(member, lib)}
            wanted = usable if library_ids is None else usable & set(library_ids)
            asked = _words(query)
            scored = []
            for passage in self._chunks.values():
                if passage.library_id not in wanted:
                    continue
                overlap = len(asked & _words(passage.text + " " + passage.where + " " + passage.document))
                if overlap:
                    scored.append(replace(passage, score=float(overlap)))
            scored.sort(key=lambda p: (-p.score, p.chunk_id))
            return scored[:k]

    def passage(self, member: Member, chunk_id: int) -> Passage:
        with self._lock:
            passage = self._chunks.get(chunk_id)
            if passage is None:
                raise NotFound("That passage does not exist.")
            self._usable(member, passage.library_id)
            return passage

    # -- quotas -------------------------------------------------------------------------------
    def quota(self, member: Member) -> tuple[int, int | None]:
        with self._lock:
            mine = self._private(member)
            used = sum(d.size_bytes for d in self._documents.values() if d.library_id == mine.id)
            return used, self._quotas.get(member.id)

    def set_quota(self, admin: Member, member_id: int, limit_bytes: int | None) -> None:
        self._admin(admin)
        if limit_bytes is not None and limit_bytes < 0:
            raise LibraryError("A quota cannot be negative.")
        with self._lock:
            self._quotas[member_id] = limit_bytes

    # Lifecycle, as the real service has them.
    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def wait_idle(self, timeout: float = 10.0) -> bool:
        return True
