"""An in-memory LibraryService for the Documents panel's UI tests (UI logic only: the real one is
localchat.library.service.Libraries). It keeps the protocol's access rules (a library the member
may not use is NotFound; household files are an admin's to add), copies added files into its data
dir like the real one, and indexes only when the test opens `gate`, so a progress bar can be seen.
"""

from __future__ import annotations

import shutil
import threading
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

FORMATS = (".pdf", ".docx", ".md", ".txt", ".html", ".htm", ".epub")


class FakeLibraries:
    def __init__(self, data_dir: Path, clock=lambda: 0.0):
        self.data = data_dir / "library"
        self.clock = clock
        self.gate = threading.Event()  # indexing advances only while set
        self.gate.set()
        self._lock = threading.RLock()
        self._libraries: dict[int, LibraryInfo] = {}
        self._documents: dict[int, DocumentInfo] = {}
        self._files: dict[int, Path] = {}
        self._quotas: dict[int, int | None] = {}
        self._rounds: dict[int, tuple[int, int, tuple[str, ...]]] = {}  # library -> (done, total, errors)
        self._next = 1

    def _id(self) -> int:
        self._next += 1
        return self._next

    # -- access ---------------------------------------------------------------------------------
    def _may_use(self, member: Member, library: LibraryInfo) -> bool:
        if library.household:  # admins manage (and may use) every household library, as the real service
            return member.is_admin or library.members is None or member.id in library.members
        return library.owner_id == member.id

    def _library(self, member: Member, library_id: int) -> LibraryInfo:
        library = self._libraries.get(int(library_id))
        if library is None or not self._may_use(member, library):
            raise NotFound("There is no such library")
        return library

    def _household(self, admin: Member, library_id: int) -> LibraryInfo:
        if not admin.is_admin:
            raise LibraryError("Only a household admin can do that")
        library = self._libraries.get(int(library_id))
        if library is None or not library.household:
            raise NotFound("There is no such library")
        return library

    def _sized(self, library: LibraryInfo) -> LibraryInfo:
        docs = [d for d in self._documents.values() if d.library_id == library.id]
        return replace(library, documents=len(docs), size_bytes=sum(d.size_bytes for d in docs))

    # -- libraries ------------------------------------------------------------------------------
    def visible(self, member: Member) -> list[LibraryInfo]:
        with self._lock:
            if not any(lib.owner_id == member.id for lib in self._libraries.values()):
                lib_id = self._id()
                self._libraries[lib_id] = LibraryInfo(lib_id, "My documents", member.id)
            mine = [lib for lib in self._libraries.values() if lib.owner_id == member.id]
            shared = [lib for lib in self._libraries.values() if lib.household and self._may_use(member, lib)]
            return [self._sized(lib) for lib in [*mine, *sorted(shared, key=lambda lib: lib.name)]]

    def create_household(
        self, admin: Member, name: str, members: Sequence[int] | None = None, folder: str = ""
    ) -> LibraryInfo:
        if not admin.is_admin:
            raise LibraryError("Only a household admin can do that")
        if not name.strip():
            raise LibraryError("Give the library a name")
        if folder and not Path(folder).is_dir():
            raise LibraryError(f"There is no folder {folder} on this machine")
        with self._lock:
            lib_id = self._id()
            shared = None if members is None else tuple(members)
            self._libraries[lib_id] = LibraryInfo(lib_id, name.strip(), None, folder, shared)
            return self._libraries[lib_id]

    def update_household(
        self,
        admin: Member,
        library_id: int,
        *,
        name: str | None = None,
        members: Sequence[int] | None | Literal["keep"] = "keep",
        folder: str | None = None,
    ) -> LibraryInfo:
        with self._lock:
            library = self._household(admin, library_id)
            if name is not None:
                library = replace(library, name=name.strip() or library.name)
            if members != "keep":
                library = replace(library, members=None if members is None else tuple(members))
            if folder is not None:
                if folder and not Path(folder).is_dir():
                    raise LibraryError(f"There is no folder {folder} on this machine")
                library = replace(library, folder=folder)
            self._libraries[library.id] = library
            return self._sized(library)

    def delete_library(self, admin: Member, library_id: int) -> None:
        with self._lock:
            library = self._household(admin, library_id)
            for doc in [d for d in self._documents.values() if d.library_id == library.id]:
                self._remove(doc.id)
            del self._libraries[library.id]

    # -- documents ------------------------------------------------------------------------------
    def _advance(self) -> None:
        if not self.gate.is_set():
            return
        for doc in list(self._documents.values()):
            if doc.status in ("queued", "indexing"):
                broken = self._files[doc.id].read_bytes().startswith(b"BROKEN")
                status = "failed" if broken else "ready"
                error = "the file is damaged and could not be read" if broken else ""
                self._documents[doc.id] = replace(doc, status=status, error=error, chunks=0 if broken else 3)
                done, total, errors = self._rounds[doc.library_id]
                self._rounds[doc.library_id] = (done + 1, total, errors + ((f"{doc.name}: {error}",) if broken else ()))

    def documents(self, member: Member, library_id: int) -> list[DocumentInfo]:
        with self._lock:
            library = self._library(member, library_id)
            self._advance()
            return sorted((d for d in self._documents.values() if d.library_id == library.id), key=lambda d: d.name)

    def add_file(self, member: Member, library_id: int, name: str, source: Path) -> DocumentInfo:
        with self._lock:
            library = self._library(member, library_id)
            if library.household and not member.is_admin:
                raise LibraryError("Only a household admin can add files to a household library")
            if not name.lower().endswith(FORMATS):
                raise UnreadableFile(f"{name}: this kind of file cannot be read (use PDF, DOCX, Markdown, text, HTML)")
            size = source.stat().st_size
            if not library.household:
                used, limit = self.quota(member)
                if limit is not None and used + size > limit:
                    raise QuotaExceeded(f"{name} would go past your {limit // 2**20} MB limit for documents")
            doc_id = self._id()
            target = self.data / str(library.id) / f"{doc_id}-{Path(name).name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            target.chmod(0o600)
            self._files[doc_id] = target
            doc = DocumentInfo(doc_id, library.id, name, size, "indexing", added_at=self.clock())
            self._documents[doc_id] = doc
            done, total, errors = self._rounds.get(library.id, (0, 0, ()))
            if done >= total:
                done, total, errors = 0, 0, ()  # a new round
            self._rounds[library.id] = (done, total + 1, errors)
            return doc

    def _remove(self, document_id: int) -> None:
        self._files.pop(document_id).unlink(missing_ok=True)
        del self._documents[document_id]

    def delete_document(self, member: Member, library_id: int, document_id: int) -> None:
        with self._lock:
            library = self._library(member, library_id)
            if library.household and not member.is_admin:
                raise LibraryError("Only a household admin can delete files of a household library")
            doc = self._documents.get(int(document_id))
            if doc is None or doc.library_id != library.id:
                raise NotFound("There is no such file")
            self._remove(doc.id)

    def progress(self, member: Member, library_id: int) -> IndexProgress | None:
        with self._lock:
            library = self._library(member, library_id)
            self._advance()
            if library.id not in self._rounds:
                return None
            done, total, errors = self._rounds[library.id]
            current = next(
                (d.name for d in self._documents.values() if d.library_id == library.id and d.status == "indexing"), ""
            )
            return IndexProgress(library.id, done, total, current, errors)

    def search(self, member: Member, library_ids: Sequence[int] | None, query: str, k: int = 5) -> list[Passage]:
        return []

    def passage(self, member: Member, chunk_id: int) -> Passage:
        raise NotFound("There is no such passage")

    # -- quotas ---------------------------------------------------------------------------------
    def quota(self, member: Member) -> tuple[int, int | None]:
        with self._lock:
            mine = [lib.id for lib in self._libraries.values() if lib.owner_id == member.id]
            used = sum(d.size_bytes for d in self._documents.values() if d.library_id in mine)
            return used, self._quotas.get(member.id)

    def set_quota(self, admin: Member, member_id: int, limit_bytes: int | None) -> None:
        if not admin.is_admin:
            raise LibraryError("Only a household admin can do that")
        with self._lock:
            self._quotas[member_id] = limit_bytes

    def start(self) -> None:  # indexing is simulated by _advance at each look
        pass

    def close(self) -> None:
        pass
