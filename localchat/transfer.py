"""Export conversations as Markdown or JSON, and read that JSON back for import.

Invariant: import validates everything before anything is written; a bad file changes nothing and
says which conversation and message is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from localchat.store import Conversation, StoredMessage
from localchat.text import clean_text

FORMAT = "localchat.conversations"
VERSION = 1
MAX_IMPORT_BYTES = 32 * 2**20
LATEST = datetime(9999, 1, 1, tzinfo=UTC).timestamp()  # later times cannot be written back as dates
SPEAKERS = {"user": "You", "assistant": "Assistant", "system": "Instructions"}


class ImportProblem(ValueError):
    pass


@dataclass(frozen=True)
class ImportedConversation:
    title: str
    messages: tuple[StoredMessage, ...]
    created_at: float | None = None


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _message(m: StoredMessage) -> dict[str, Any]:
    """A message in the JSON export; a reply's sources as citation text (chunk ids mean nothing
    outside this install, and an import does not bring them back)."""
    out: dict[str, Any] = {"role": m.role, "content": m.content, "stats": m.stats}
    if m.sources:
        out["sources"] = [f"[{n}] {s.citation()}" for n, s in enumerate(m.sources, 1)]
    return out


def to_json(conversations: Sequence[Conversation]) -> str:
    return json.dumps(
        {
            "format": FORMAT,
            "version": VERSION,
            "exported_at": _iso(datetime.now(UTC).timestamp()),
            "conversations": [
                {
                    "title": c.title,
                    "created_at": _iso(c.created_at),
                    "updated_at": _iso(c.updated_at),
                    "messages": [_message(m) for m in c.messages],
                }
                for c in conversations
            ],
        },
        ensure_ascii=False,
        indent=1,
    )


def to_markdown(conversations: Sequence[Conversation]) -> str:
    parts = []
    for c in conversations:
        lines = [f"# {c.title}", "", f"*{_iso(c.created_at).replace('T', ' ')} UTC*", ""]
        for m in c.messages:
            lines += [f"**{SPEAKERS.get(m.role, m.role)}:**", "", m.content, ""]
            if m.sources:
                lines += ["Sources: " + " · ".join(f"[{n}] {s.citation()}" for n, s in enumerate(m.sources, 1)), ""]
            if m.stats:
                lines += [f"<sub>{m.stats}</sub>", ""]
        parts.append("\n".join(lines))
    return "\n---\n\n".join(parts)


def _timestamp(value: Any) -> float | None:
    """A time the file gives, or None for one that is missing or no real date (it becomes 'now')."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value).timestamp()
        except (ValueError, OverflowError, OSError):
            return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if 0 <= value < LATEST else None


def _messages(raw: Any, where: str) -> tuple[StoredMessage, ...]:
    if not isinstance(raw, list):
        raise ImportProblem(f"{where}: 'messages' must be a list")
    out = []
    for i, m in enumerate(raw, start=1):
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("role"), str)
            or m["role"] not in SPEAKERS
            or not isinstance(m.get("content"), str)
        ):
            raise ImportProblem(f"{where}, message {i}: needs a role (user, assistant or system) and text content")
        out.append(StoredMessage(m["role"], clean_text(m["content"]), clean_text(str(m.get("stats") or ""))))
    return tuple(out)


def parse_import(data: bytes) -> list[ImportedConversation]:
    """Our export (one or all conversations), or a bare list of {role, content} messages."""
    if len(data) > MAX_IMPORT_BYTES:
        raise ImportProblem(f"The file is larger than {MAX_IMPORT_BYTES // 2**20} MB")
    try:
        doc = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ImportProblem(f"This is not a JSON file ({str(exc).splitlines()[0]})") from None
    except RecursionError:
        raise ImportProblem("This file nests its data too deeply to be an export") from None
    if isinstance(doc, list):  # a plain message list
        messages = _messages(doc, "The file")
        first = next((m.content for m in messages if m.role == "user"), "Imported chat")
        return [ImportedConversation(first, messages)]
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ImportProblem('This is not a localchat export (no "format": "localchat.conversations")')
    if not isinstance(doc.get("version"), int) or doc["version"] > VERSION:
        raise ImportProblem("This export was made by a newer localchat; update localchat to import it")
    items = doc.get("conversations")
    if not isinstance(items, list):
        raise ImportProblem("'conversations' must be a list")
    result = []
    for n, item in enumerate(items, start=1):
        where = f"Conversation {n}"
        if not isinstance(item, dict):
            raise ImportProblem(f"{where} is not an object")
        title = item.get("title")
        messages = _messages(item.get("messages"), where)
        result.append(
            ImportedConversation(
                clean_text(title) if isinstance(title, str) and title.strip() else "Imported chat",
                messages,
                _timestamp(item.get("created_at")),
            )
        )
    return result
