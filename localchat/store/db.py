"""One SQLite file in WAL mode, its schema migrations, and serialized access.

Owns: the connection and the schema version. Invariants: migrations run on open, each inside one
transaction (a failed one leaves the file as it was); every statement runs under one lock, so writes
are serialized; `synchronous=FULL` so an acknowledged write survives a crash or a power cut; a full
disk or a broken file surfaces as a StoreError with a sentence a person can act on; the folder
holding the file is 0700 and the file (and its -wal/-shm) 0600, also when they already existed.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from localchat.store.schema import MIGRATIONS


class StoreError(RuntimeError):
    """The history could not be read or written; the message says why in plain words."""


class StoreFull(StoreError):
    pass


class NotFound(StoreError):
    pass


PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600


def make_private(folder: Path) -> None:
    """Create `folder` if needed and make it this OS account's alone: other accounts on a family
    PC can then open nothing inside it. Files in it are left as they are (it may be a home dir)."""
    folder = Path(folder)
    folder.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    os.chmod(folder, PRIVATE_DIR)


def _explain(exc: sqlite3.Error, path: Path) -> StoreError:
    text = str(exc)
    if "full" in text or isinstance(exc, sqlite3.OperationalError) and "disk I/O" in text:
        return StoreFull(
            f"The disk holding {path.parent} is full, so this could not be saved. "
            "Free some space; everything saved before is intact."
        )
    if "not a database" in text or "malformed" in text:
        return StoreError(f"The history file {path} is damaged ({text}). Restore it from a backup or move it away.")
    if "locked" in text:
        return StoreError(f"The history file {path} is busy in another program; try again in a moment.")
    return StoreError(f"Could not use the history file {path}: {text}")


class Database:
    def __init__(self, path: Path, migrations: Sequence[str] = MIGRATIONS):
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            make_private(self.path.parent)
            self.path.touch(mode=PRIVATE_FILE)  # SQLite gives its -wal and -shm the file's mode
            for suffix in ("", "-wal", "-shm", "-journal"):  # also files of an older, laxer version
                if (file := self.path.with_name(self.path.name + suffix)).exists():
                    os.chmod(file, PRIVATE_FILE)
            self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
            self._conn.row_factory = sqlite3.Row
            for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "busy_timeout=10000"):
                self._conn.execute(f"PRAGMA {pragma}")
            self._migrate(migrations)
        except sqlite3.Error as exc:
            raise _explain(exc, self.path) from exc
        except OSError as exc:
            raise StoreError(f"Could not use the folder {self.path.parent}: {exc}") from exc

    @property
    def version(self) -> int:
        return self.query_one("PRAGMA user_version")[0]

    def _migrate(self, migrations: Sequence[str]) -> None:
        current = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if current > len(migrations):
            raise StoreError(
                f"The history file {self.path} was written by a newer localchat (schema {current}); "
                "update localchat to open it."
            )
        for version, script in enumerate(migrations[current:], start=current + 1):
            with self.transaction() as conn:
                for statement in _statements(script):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {version}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT under the lock; any error rolls the whole thing back."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                    self._conn.execute("COMMIT")
                except BaseException:
                    if self._conn.in_transaction:  # SQLite may already have rolled back (disk full)
                        self._conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise _explain(exc, self.path) from exc

    def query(self, sql: str, args: Sequence = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._conn.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise _explain(exc, self.path) from exc

    def query_one(self, sql: str, args: Sequence = ()) -> sqlite3.Row | None:
        rows = self.query(sql, args)
        return rows[0] if rows else None

    def execute(self, sql: str, args: Sequence = ()) -> int:
        """One write in its own transaction; returns the number of changed rows."""
        with self.transaction() as conn:
            return conn.execute(sql, args).rowcount

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _statements(script: str) -> list[str]:
    """Split a migration into whole statements: a trigger's body holds semicolons of its own, so a
    piece is joined to the next until SQLite calls it complete."""
    statements, pending = [], ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                statements.append(pending.strip().rstrip(";").strip())
            pending = ""
    if pending.strip(" \n;"):
        statements.append(pending.strip().rstrip(";").strip())
    return statements
