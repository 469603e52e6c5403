"""Store: every read and write of members, sessions, conversations and messages.

Invariant: every conversation or message operation takes the member it acts for and filters by
that member in the same statement (`... AND member_id = ?`), so an id alone never reaches another
member's data; a conversation that is not the member's reads exactly like one that does not exist.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from localchat.store.db import Database, NotFound, StoreError
from localchat.store.records import (
    ApiKeyInfo,
    Conversation,
    ConversationInfo,
    Member,
    Source,
    StoredMessage,
    sources_from,
    sources_json,
)
from localchat.text import clean_text

BUILTIN_NAME = "(this computer)"
TITLE_LENGTH = 60
ROLES = ("admin", "member")
MESSAGE_ROLES = ("user", "assistant", "system")
KEY_GONE = "That key does not exist (it may have been revoked already)"


def title_from(text: str) -> str:
    """A conversation title made from its first message: the first line, cut at a word."""
    line = " ".join((text or "").split())
    if len(line) <= TITLE_LENGTH:
        return line or "New chat"
    cut = line[:TITLE_LENGTH].rsplit(" ", 1)[0]
    return (cut if len(cut) > TITLE_LENGTH // 2 else line[:TITLE_LENGTH]) + "…"


def _member(row) -> Member:
    allowed = row["allowed_models"]
    return Member(
        id=row["id"],
        name=row["name"],
        role=row["role"],
        allowed_models=None if allowed is None else tuple(json.loads(allowed)),
        locked_preset=row["locked_preset"],
        builtin=bool(row["builtin"]),
    )


class Store:
    def __init__(self, path: Path, clock: Callable[[], float] = time.time):
        self.db = Database(path)
        self.clock = clock

    def close(self) -> None:
        self.db.close()

    # -- members ------------------------------------------------------------------------------
    def add_member(self, name: str, password_hash: str | None, role: str = "member") -> Member:
        if role not in ROLES:
            raise StoreError(f"role must be admin or member, not {role!r}")
        with self.db.transaction() as conn:  # the check and the insert in one transaction: no race
            if conn.execute("SELECT 1 FROM members WHERE name = ?", (name,)).fetchone():
                raise StoreError(f"There is already a household member called {name}")
            row = self._insert_member(conn, name, password_hash, role, builtin=False)
        return _member(row)

    def _insert_member(
        self, conn: sqlite3.Connection, name: str, password_hash: str | None, role: str, builtin: bool
    ) -> sqlite3.Row:
        cur = conn.execute(
            "INSERT INTO members (name, password_hash, role, created_at, builtin) VALUES (?, ?, ?, ?, ?)",
            (name, password_hash, role, self.clock(), int(builtin)),
        )
        return conn.execute("SELECT * FROM members WHERE id = ?", (cur.lastrowid,)).fetchone()

    def member(self, member_id: int) -> Member | None:
        row = self.db.query_one("SELECT * FROM members WHERE id = ?", (member_id,))
        return _member(row) if row else None

    def member_by_name(self, name: str) -> Member | None:
        row = self.db.query_one("SELECT * FROM members WHERE name = ? AND builtin = 0", (name,))
        return _member(row) if row else None

    def members(self) -> list[Member]:
        return [_member(r) for r in self.db.query("SELECT * FROM members WHERE builtin = 0 ORDER BY name")]

    def count_accounts(self) -> int:
        return self.db.query_one("SELECT count(*) FROM members WHERE builtin = 0")[0]

    def builtin_member(self) -> Member:
        """The owner of chats made while the app is single-user (no accounts, no login)."""
        row = self.db.query_one("SELECT * FROM members WHERE builtin = 1")
        if row is None:  # two first requests may arrive together: check again inside the transaction
            with self.db.transaction() as conn:
                row = conn.execute("SELECT * FROM members WHERE builtin = 1").fetchone()
                if row is None:
                    row = self._insert_member(conn, BUILTIN_NAME, None, "admin", builtin=True)
        return _member(row)

    def password_hash(self, member_id: int) -> str | None:
        row = self.db.query_one("SELECT password_hash FROM members WHERE id = ?", (member_id,))
        return row[0] if row else None

    def set_password_hash(
        self, member_id: int, password_hash: str, keep_session: str | None = None, revoke_keys: bool = False
    ) -> None:
        """A new password also ends every session of that member but `keep_session` (a token hash),
        and with `revoke_keys` deletes their API keys, in the same transaction."""
        with self.db.transaction() as conn:
            conn.execute("UPDATE members SET password_hash = ? WHERE id = ?", (password_hash, member_id))
            conn.execute("DELETE FROM sessions WHERE member_id = ? AND token_hash IS NOT ?", (member_id, keep_session))
            if revoke_keys:
                conn.execute("DELETE FROM api_keys WHERE member_id = ?", (member_id,))

    def set_role(self, member_id: int, role: str) -> None:
        if role not in ROLES:
            raise StoreError(f"role must be admin or member, not {role!r}")
        self.db.execute("UPDATE members SET role = ? WHERE id = ? AND builtin = 0", (role, member_id))

    def set_policy(self, member_id: int, allowed_models: Sequence[str] | None, locked_preset: str | None) -> None:
        allowed = None if allowed_models is None else json.dumps(list(allowed_models))
        self.db.execute(
            "UPDATE members SET allowed_models = ?, locked_preset = ? WHERE id = ?",
            (allowed, locked_preset or None, member_id),
        )

    def remove_member(self, member_id: int) -> None:
        """Removes the member with their sessions, conversations and messages."""
        self.db.execute("DELETE FROM members WHERE id = ? AND builtin = 0", (member_id,))

    def preferences(self, member_id: int) -> dict[str, Any]:
        row = self.db.query_one("SELECT preferences FROM members WHERE id = ?", (member_id,))
        try:
            return json.loads(row[0]) if row else {}
        except ValueError:
            return {}

    def set_preferences(self, member_id: int, preferences: dict[str, Any]) -> None:
        self.db.execute("UPDATE members SET preferences = ? WHERE id = ?", (json.dumps(preferences), member_id))

    def adopt(self, from_member: int, to_member: int) -> int:
        """Move one member's conversations to another (the first admin takes over single-user chats)."""
        with self.db.transaction() as conn:
            moved = conn.execute(
                "UPDATE conversations SET member_id = ? WHERE member_id = ?", (to_member, from_member)
            ).rowcount
            conn.execute(
                "UPDATE members SET preferences = (SELECT preferences FROM members WHERE id = ?) WHERE id = ?",
                (from_member, to_member),
            )
        return moved

    # -- sessions -----------------------------------------------------------------------------
    def add_session(self, token_hash: str, member_id: int, lifetime: float) -> None:
        now = self.clock()
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,))
            conn.execute(
                "INSERT INTO sessions (token_hash, member_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
                (token_hash, member_id, now, now + lifetime),
            )

    def session_member(self, token_hash: str) -> Member | None:
        row = self.db.query_one(
            "SELECT m.* FROM sessions s JOIN members m ON m.id = s.member_id "
            "WHERE s.token_hash = ? AND s.expires_at > ? AND m.builtin = 0",
            (token_hash, self.clock()),
        )
        return _member(row) if row else None

    def delete_session(self, token_hash: str) -> None:
        self.db.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))

    def delete_sessions(self, member_id: int, keep: str | None = None) -> int:
        """End every session of the member but `keep` (a token hash); returns how many ended."""
        return self.db.execute("DELETE FROM sessions WHERE member_id = ? AND token_hash IS NOT ?", (member_id, keep))

    def count_sessions(self, member_id: int) -> int:
        return self.db.query_one(
            "SELECT count(*) FROM sessions WHERE member_id = ? AND expires_at > ?", (member_id, self.clock())
        )[0]

    # -- known devices (browsers a member signed in from) ---------------------------------------
    def remember_device(self, token_hash: str, member_id: int, lifetime: float, most: int = 32) -> None:
        """Note a sign-in from this device; forget devices unused for `lifetime` and all but the
        member's `most` most recent ones (a browser that drops its cookies adds one per sign-in)."""
        now = self.clock()
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM known_devices WHERE last_used_at <= ?", (now - lifetime,))
            conn.execute("INSERT OR REPLACE INTO known_devices VALUES (?, ?, ?)", (token_hash, member_id, now))
            conn.execute(
                "DELETE FROM known_devices WHERE member_id = ? AND token_hash NOT IN (SELECT token_hash "
                "FROM known_devices WHERE member_id = ? ORDER BY last_used_at DESC LIMIT ?)",
                (member_id, member_id, most),
            )

    def known_device(self, token_hash: str, lifetime: float, name: str | None = None) -> bool:
        """Whether a member (the one called `name`, or any) signed in from this device within `lifetime`."""
        sql = "SELECT 1 FROM known_devices d JOIN members m ON m.id = d.member_id WHERE d.token_hash = ? "
        sql += "AND d.last_used_at > ?" + (" AND m.name = ?" if name is not None else "")
        args = (token_hash, self.clock() - lifetime) + ((name,) if name is not None else ())
        return self.db.query_one(sql, args) is not None

    # -- household settings -------------------------------------------------------------------
    def setting(self, name: str, default: str = "") -> str:
        row = self.db.query_one("SELECT value FROM household_settings WHERE name = ?", (name,))
        return row[0] if row else default

    def set_setting(self, name: str, value: str) -> None:
        self.db.execute(
            "INSERT INTO household_settings (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    # -- conversations (always scoped to a member) --------------------------------------------
    def create_conversation(self, member_id: int, title: str, created_at: float | None = None) -> str:
        conversation_id = secrets.token_urlsafe(12)
        now = self.clock() if created_at is None else created_at
        self.db.execute(
            "INSERT INTO conversations (id, member_id, title, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
            (conversation_id, member_id, title_from(clean_text(title)), now, now),
        )
        return conversation_id

    def conversations(self, member_id: int, search: str = "") -> list[ConversationInfo]:
        """The member's conversations, newest first; `search` matches titles and message text."""
        sql = "SELECT id, title, updated_at FROM conversations c WHERE member_id = ?"
        args: list[Any] = [member_id]
        search = clean_text(search)  # text from a form: a lone surrogate cannot be bound to SQL
        if search.strip():
            pattern = "%" + search.strip().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            sql += (
                " AND (title LIKE ? ESCAPE '\\' OR EXISTS (SELECT 1 FROM messages m WHERE "
                "m.conversation_id = c.id AND m.content LIKE ? ESCAPE '\\'))"
            )
            args += [pattern, pattern]
        rows = self.db.query(sql + " ORDER BY updated_at DESC, rowid DESC", args)
        return [ConversationInfo(r["id"], r["title"], r["updated_at"]) for r in rows]

    def conversation(self, member_id: int, conversation_id: str) -> Conversation:
        row = self.db.query_one(
            "SELECT * FROM conversations WHERE id = ? AND member_id = ?", (conversation_id, member_id)
        )
        if row is None:
            raise NotFound("That conversation does not exist (it may have been deleted)")
        messages = self.db.query(
            "SELECT role, content, stats, sources FROM messages WHERE conversation_id = ? ORDER BY position",
            (conversation_id,),
        )
        return Conversation(
            id=row["id"],
            title=row["title"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            messages=tuple(
                StoredMessage(m["role"], m["content"], m["stats"], sources_from(m["sources"])) for m in messages
            ),
            libraries=row["libraries"],
        )

    def set_libraries(self, member_id: int, conversation_id: str, libraries: str) -> None:
        """Which documents the conversation's replies use ("", "all" or a JSON list of ids)."""
        with self.db.transaction() as conn:
            cur = conn.execute(
                "UPDATE conversations SET libraries = ? WHERE id = ? AND member_id = ?",
                (libraries, conversation_id, member_id),
            )
            if cur.rowcount != 1:
                raise NotFound("That conversation does not exist (it may have been deleted)")

    def _touch(self, conn, member_id: int, conversation_id: str, **columns: Any) -> None:
        """Update the conversation's own row; raises NotFound unless it is this member's."""
        sets = ", ".join(f"{k} = ?" for k in ("updated_at", *columns))
        cur = conn.execute(
            f"UPDATE conversations SET {sets} WHERE id = ? AND member_id = ?",
            (self.clock(), *columns.values(), conversation_id, member_id),
        )
        if cur.rowcount != 1:
            raise NotFound("That conversation does not exist (it may have been deleted)")

    def rename(self, member_id: int, conversation_id: str, title: str) -> None:
        title = " ".join(clean_text(title).split())[:200]
        if not title:
            raise StoreError("A title cannot be empty")
        with self.db.transaction() as conn:
            self._touch(conn, member_id, conversation_id, title=title)

    def delete(self, member_id: int, conversation_id: str) -> None:
        if (
            self.db.execute("DELETE FROM conversations WHERE id = ? AND member_id = ?", (conversation_id, member_id))
            != 1
        ):
            raise NotFound("That conversation does not exist (it may have been deleted)")

    @staticmethod
    def _drop_from(conn, conversation_id: str, index: int) -> None:
        """Delete the conversation's messages from the `index`-th on (by order, not stored number)."""
        conn.execute(
            "DELETE FROM messages WHERE conversation_id = ? AND position >= (SELECT position FROM messages "
            "WHERE conversation_id = ? ORDER BY position LIMIT 1 OFFSET ?)",
            (conversation_id, conversation_id, index),
        )

    def put_message(  # noqa: PLR0913 - the message's place and its parts
        self,
        member_id: int,
        conversation_id: str,
        index: int,
        role: str,
        content: str,
        stats: str = "",
        sources: Sequence[Source] = (),
    ) -> None:
        """Make the message the conversation's `index`-th, dropping any at or after it (a retry or an
        edit), in one transaction: once this returns, the message survives a crash."""
        if role not in MESSAGE_ROLES:
            raise StoreError(f"unknown message role {role!r}")
        with self.db.transaction() as conn:
            self._touch(conn, member_id, conversation_id)
            self._drop_from(conn, conversation_id, index)
            conn.execute(
                "INSERT INTO messages (conversation_id, position, role, content, stats, created_at, sources) VALUES "
                "(?, (SELECT coalesce(max(position), -1) + 1 FROM messages WHERE conversation_id = ?), ?, ?, ?, ?, ?)",
                (
                    conversation_id,
                    conversation_id,
                    role,
                    clean_text(content),
                    clean_text(stats),
                    self.clock(),
                    clean_text(sources_json(sources)),
                ),
            )

    def truncate(self, member_id: int, conversation_id: str, keep: int) -> None:
        """Keep only the first `keep` messages (undo, retry)."""
        with self.db.transaction() as conn:
            self._touch(conn, member_id, conversation_id)
            self._drop_from(conn, conversation_id, keep)

    def import_conversation(  # noqa: PLR0913
        self,
        member_id: int,
        title: str,
        messages: Iterable[StoredMessage],
        created_at: float | None = None,
        libraries: str = "",
    ) -> str:
        """One imported conversation, written in a single transaction (all of it or nothing)."""
        conversation_id = secrets.token_urlsafe(12)
        now = self.clock()
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO conversations (id, member_id, title, created_at, updated_at, libraries) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (conversation_id, member_id, title_from(clean_text(title)), created_at or now, now, libraries),
            )
            for position, m in enumerate(messages):
                conn.execute(
                    "INSERT INTO messages (conversation_id, position, role, content, stats, created_at, sources) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        conversation_id,
                        position,
                        m.role,
                        clean_text(m.content),
                        clean_text(m.stats),
                        now,
                        clean_text(sources_json(m.sources)),
                    ),
                )
        return conversation_id

    # -- API keys (always scoped to a member) -------------------------------------------------
    def add_api_key(self, member_id: int, name: str, prefix: str, key_hash: str) -> None:
        self.db.execute(
            "INSERT INTO api_keys (member_id, name, prefix, key_hash, created_at) VALUES (?, ?, ?, ?, ?)",
            (member_id, name, prefix, key_hash, self.clock()),
        )

    def api_keys(self, member_id: int) -> list[ApiKeyInfo]:
        rows = self.db.query(
            "SELECT id, name, prefix, created_at, last_used_at FROM api_keys WHERE member_id = ? ORDER BY id",
            (member_id,),
        )
        return [ApiKeyInfo(r["id"], r["name"], r["prefix"], r["created_at"], r["last_used_at"]) for r in rows]

    def api_key_by_prefix(self, prefix: str) -> tuple[str, Member] | None:
        """(stored hash, its member) for the key with this public prefix."""
        row = self.db.query_one(
            "SELECT k.key_hash, m.* FROM api_keys k JOIN members m ON m.id = k.member_id WHERE k.prefix = ?",
            (prefix,),
        )
        return (row["key_hash"], _member(row)) if row else None

    def touch_api_key(self, prefix: str) -> None:
        self.db.execute("UPDATE api_keys SET last_used_at = ? WHERE prefix = ?", (self.clock(), prefix))

    def revoke_api_key(self, member_id: int, key_id: int) -> None:
        if self.db.execute("DELETE FROM api_keys WHERE id = ? AND member_id = ?", (key_id, member_id)) != 1:
            raise NotFound(KEY_GONE)

    # -- every member's API keys (the household panel; the caller checks that an admin asks) ------
    def all_api_keys(self) -> list[tuple[str, ApiKeyInfo]]:
        """(member name, key) for every key, by member name then age."""
        rows = self.db.query(
            "SELECT m.name AS member, k.id, k.name, k.prefix, k.created_at, k.last_used_at "
            "FROM api_keys k JOIN members m ON m.id = k.member_id ORDER BY m.name, k.id"
        )
        return [
            (r["member"], ApiKeyInfo(r["id"], r["name"], r["prefix"], r["created_at"], r["last_used_at"])) for r in rows
        ]

    def revoke_any_api_key(self, key_id: int) -> None:
        if self.db.execute("DELETE FROM api_keys WHERE id = ?", (key_id,)) != 1:
            raise NotFound(KEY_GONE)
