"""Frozen values read from the store, and the JSON form of a reply's sources."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Member:
    id: int
    name: str
    role: str  # "admin" or "member"
    allowed_models: tuple[str, ...] | None = None  # None: every model
    locked_preset: str | None = None
    builtin: bool = False  # the owner of a single-user install (no password, cannot log in)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def may_use(self, model: str) -> bool:
        return self.allowed_models is None or model in self.allowed_models


@dataclass(frozen=True)
class Source:
    """A passage a reply was given, as saved with the reply: enough to show and reopen the citation."""

    chunk_id: int
    document: str
    where: str = ""

    def citation(self) -> str:
        return f"{self.document}, {self.where}" if self.where else self.document


def sources_json(sources: Sequence[Source]) -> str:
    """messages.sources: a JSON list of {chunk_id, document, where}, "" for a reply without sources."""
    if not sources:
        return ""
    return json.dumps([{"chunk_id": s.chunk_id, "document": s.document, "where": s.where} for s in sources])


def sources_from(text: str) -> tuple[Source, ...]:
    """The saved sources; a damaged value reads as none (the reply itself is intact)."""
    try:
        items = json.loads(text) if text else []
        return tuple(Source(int(i["chunk_id"]), str(i["document"]), str(i.get("where", ""))) for i in items)
    except (ValueError, TypeError, KeyError):
        return ()


@dataclass(frozen=True)
class StoredMessage:
    role: str
    content: str
    stats: str = ""
    sources: tuple[Source, ...] = ()  # a reply's numbered sources, [1] first


@dataclass(frozen=True)
class ConversationInfo:
    id: str
    title: str
    updated_at: float


@dataclass(frozen=True)
class Conversation:
    id: str
    title: str
    created_at: float
    updated_at: float
    messages: tuple[StoredMessage, ...] = field(default_factory=tuple)
    libraries: str = ""  # the documents its replies use: "" none, "all", or a JSON list of library ids


@dataclass(frozen=True)
class ApiKeyInfo:
    id: int
    name: str
    prefix: str
    created_at: float
    last_used_at: float | None
