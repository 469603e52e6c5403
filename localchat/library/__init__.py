"""Document libraries: private per member and household-shared, searched to ground replies."""

from localchat.library.types import (
    DocumentInfo,
    Embedder,
    IndexProgress,
    LibraryError,
    LibraryInfo,
    LibraryService,
    Passage,
    QuotaExceeded,
    UnreadableFile,
)

__all__ = [
    "DocumentInfo",
    "Embedder",
    "IndexProgress",
    "LibraryError",
    "LibraryInfo",
    "LibraryService",
    "Passage",
    "QuotaExceeded",
    "UnreadableFile",
]
