"""What the rest of localchat sees of document libraries: records, errors and the service protocol.

A library is a member's private one (owner_id set) or a household one an admin made (owner_id None),
usable by the members it names (or everyone). Files live in the data dir, are split into chunks,
and chunks are found by hybrid search (SQLite FTS5 BM25 + embedding vectors, fused by reciprocal
rank). Invariant: every method that takes a Member answers only with libraries, documents and
passages that member may use; anything else is NotFound, never "forbidden" (no existence leak).
Torch-, gradio- and fastapi-free: embeddings come through the Embedder protocol (the engine).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from localchat.store import Member


class LibraryError(RuntimeError):
    """A library request failed; str(error) is one line for the user."""


class QuotaExceeded(LibraryError):
    """Adding the file would take the member past the disk quota the admin set."""


class UnreadableFile(LibraryError):
    """A file could not be read (corrupt, encrypted, unsupported); the rest of the library is intact."""


@dataclass(frozen=True)
class LibraryInfo:
    id: int
    name: str
    owner_id: int | None  # the member of a private library; None for a household library
    folder: str = ""  # household: a folder on this machine that is indexed and re-indexed on change
    members: tuple[int, ...] | None = None  # household: who may use it; None means everyone
    documents: int = 0
    size_bytes: int = 0

    @property
    def household(self) -> bool:
        return self.owner_id is None


DocumentStatus = Literal["queued", "indexing", "ready", "failed"]


@dataclass(frozen=True)
class DocumentInfo:
    id: int
    library_id: int
    name: str  # the file name as the member gave it
    size_bytes: int
    status: DocumentStatus
    error: str = ""  # why a failed file failed, one line
    chunks: int = 0
    added_at: float = 0.0


@dataclass(frozen=True)
class Passage:
    """One retrieved chunk, with what a citation shows: the file and where in it."""

    chunk_id: int
    library_id: int
    document_id: int
    document: str  # file name
    where: str  # "page 3", "Setup › Wi-Fi", or "" when the file has no structure
    text: str
    score: float = 0.0  # fused rank score; higher is better

    def citation(self) -> str:
        return f"{self.document}, {self.where}" if self.where else self.document


@dataclass(frozen=True)
class IndexProgress:
    """Indexing of one library, for the progress bar."""

    library_id: int
    done: int  # files finished (ready or failed)
    total: int  # files queued or indexing or finished in this round
    current: str = ""  # the file being indexed now
    errors: tuple[str, ...] = field(default_factory=tuple)  # "name: why" for files that failed
    current_fraction: float = 0.0  # how far into the current file (its passages embedded), 0..1

    @property
    def fraction(self) -> float:
        """Overall, for the bar: finished files plus the part of the current one."""
        return 1.0 if self.total <= 0 else min(1.0, (self.done + self.current_fraction) / self.total)

    @property
    def finished(self) -> bool:
        return self.done >= self.total


class Embedder(Protocol):
    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Unit-length sentence vectors, one per text (the engine's embedding model)."""
        ...


class LibraryService(Protocol):
    """What the core, the UI and the API call (implemented by localchat.library.service.Libraries)."""

    def visible(self, member: Member) -> list[LibraryInfo]:
        """The member's private library (made on first use) first, then household ones they may use."""
        ...

    def create_household(
        self, admin: Member, name: str, members: Sequence[int] | None = None, folder: str = ""
    ) -> LibraryInfo: ...

    def update_household(
        self,
        admin: Member,
        library_id: int,
        *,
        name: str | None = None,
        members: Sequence[int] | None | Literal["keep"] = "keep",
        folder: str | None = None,
    ) -> LibraryInfo: ...

    def delete_library(self, admin: Member, library_id: int) -> None: ...

    def documents(self, member: Member, library_id: int) -> list[DocumentInfo]: ...

    def add_file(self, member: Member, library_id: int, name: str, source: Path) -> DocumentInfo:
        """Copy `source` into the data dir (0600) and queue it for indexing; returns at once.
        Raises QuotaExceeded, LibraryError (a household library needs an admin to add files)."""
        ...

    def delete_document(self, member: Member, library_id: int, document_id: int) -> None:
        """Remove the file, its chunks and its vectors."""
        ...

    def progress(self, member: Member, library_id: int) -> IndexProgress | None:
        """None when nothing was indexed since the server started."""
        ...

    def search(self, member: Member, library_ids: Sequence[int] | None, query: str, k: int = 5) -> list[Passage]:
        """Hybrid search over the given libraries (None: every library the member may use); ids the
        member may not use are ignored. Best first."""
        ...

    def passage(self, member: Member, chunk_id: int) -> Passage:
        """One chunk by id, to open a citation; NotFound unless the member may use its library."""
        ...

    def quota(self, member: Member) -> tuple[int, int | None]:
        """(bytes used by the member's private library, limit or None for no limit)."""
        ...

    def set_quota(self, admin: Member, member_id: int, limit_bytes: int | None) -> None: ...

    def start(self) -> None:
        """Start indexing in the background (and watching household folders)."""
        ...

    def close(self) -> None:
        """Stop indexing; what was queued is indexed at the next start."""
        ...
