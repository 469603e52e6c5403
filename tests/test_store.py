"""The store on real SQLite files: migrations, scoping, crash safety, a full disk."""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from localchat.store import Database, NotFound, Store, StoredMessage, StoreError, StoreFull
from localchat.store.schema import MIGRATIONS
from localchat.store.store import title_from


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "localchat.db")


def test_a_new_file_gets_the_whole_schema_in_wal_mode(tmp_path: Path) -> None:
    db = Database(tmp_path / "new.db")
    assert db.version == len(MIGRATIONS)
    assert db.query_one("PRAGMA journal_mode")[0] == "wal"
    assert db.query_one("PRAGMA foreign_keys")[0] == 1
    tables = {r[0] for r in db.query("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"members", "sessions", "conversations", "messages", "household_settings"} <= tables


def test_a_file_of_the_previous_schema_is_migrated_and_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = Database(path, migrations=MIGRATIONS[:-1])
    assert old.version == len(MIGRATIONS) - 1
    with old.transaction() as conn:
        conn.execute("INSERT INTO members (name, password_hash, role, created_at) VALUES ('Ann', 'x', 'admin', 1)")
        conn.execute("INSERT INTO conversations VALUES ('c1', 1, 'Old chat', 1, 1)")
        conn.execute("INSERT INTO messages VALUES ('c1', 0, 'user', 'hello from before', '', 1)")
    old.close()
    store = Store(path)
    assert store.db.version == len(MIGRATIONS)
    ann = store.member_by_name("ann")  # names match without regard to case
    assert ann is not None and ann.is_admin and ann.allowed_models is None
    assert store.conversation(ann.id, "c1").messages == (StoredMessage("user", "hello from before"),)
    store.set_preferences(ann.id, {"preset": "Precise"})  # the new columns work
    assert store.preferences(ann.id) == {"preset": "Precise"}


def test_a_failing_migration_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    Database(path).close()
    broken = [*MIGRATIONS, "CREATE TABLE extra (x INTEGER); INSERT INTO no_such_table VALUES (1)"]
    with pytest.raises(StoreError):
        Database(path, migrations=broken)
    db = Database(path)
    assert db.version == len(MIGRATIONS)
    assert db.query_one("SELECT name FROM sqlite_master WHERE name = 'extra'") is None


def test_a_file_from_a_newer_localchat_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    Database(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 5}")
    with pytest.raises(StoreError, match="newer localchat"):
        Database(path)


def test_a_file_that_is_not_a_database_gets_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="damaged"):
        Store(path)


def test_conversations_are_scoped_to_their_member(store: Store) -> None:
    ann, bob = store.add_member("Ann", "h"), store.add_member("Bob", "h")
    chat = store.create_conversation(ann.id, "Ann's secret plans")
    store.put_message(ann.id, chat, 0, "user", "the surprise party is on Friday")
    assert [c.id for c in store.conversations(ann.id)] == [chat]
    assert store.conversations(bob.id) == [] and store.conversations(bob.id, "surprise") == []
    for attempt in (
        lambda: store.conversation(bob.id, chat),
        lambda: store.rename(bob.id, chat, "mine now"),
        lambda: store.delete(bob.id, chat),
        lambda: store.put_message(bob.id, chat, 1, "user", "injected"),
        lambda: store.truncate(bob.id, chat, 0),
    ):
        with pytest.raises(NotFound):
            attempt()
    assert store.conversation(ann.id, chat).title == "Ann's secret plans"
    assert [m.content for m in store.conversation(ann.id, chat).messages] == ["the surprise party is on Friday"]


def test_messages_are_kept_in_order_and_rewritten_from_an_index(store: Store) -> None:
    ann = store.add_member("Ann", "h")
    chat = store.create_conversation(ann.id, "x")
    for i, text in enumerate(["q1", "a1", "q2", "a2"]):
        store.put_message(ann.id, chat, i, "user" if i % 2 == 0 else "assistant", text)
    store.put_message(ann.id, chat, 2, "user", "q2 edited")  # an edit drops what followed
    assert [m.content for m in store.conversation(ann.id, chat).messages] == ["q1", "a1", "q2 edited"]
    store.truncate(ann.id, chat, 1)  # undo
    assert [m.content for m in store.conversation(ann.id, chat).messages] == ["q1"]


def test_search_finds_titles_and_message_text_without_wildcards(store: Store) -> None:
    ann = store.add_member("Ann", "h")
    a = store.create_conversation(ann.id, "Pasta recipe")
    b = store.create_conversation(ann.id, "Maths")
    store.put_message(ann.id, b, 0, "user", "what is 50% of 10_000?")
    assert [c.id for c in store.conversations(ann.id, "pasta")] == [a]
    assert [c.id for c in store.conversations(ann.id, "50%")] == [b]
    assert store.conversations(ann.id, "5_%") == []  # % and _ are literal


def test_titles_come_from_the_first_message() -> None:
    assert title_from("  What is\n the capital of France? ") == "What is the capital of France?"
    long = title_from("word " * 40)
    assert long.endswith("…") and len(long) <= 61
    assert title_from("") == "New chat"


def test_removing_a_member_removes_their_sessions_and_chats(store: Store) -> None:
    ann = store.add_member("Ann", "h")
    chat = store.create_conversation(ann.id, "x")
    store.put_message(ann.id, chat, 0, "user", "hi")
    store.add_session("token-hash", ann.id, 3600)
    store.remove_member(ann.id)
    assert store.db.query_one("SELECT count(*) FROM messages")[0] == 0
    assert store.session_member("token-hash") is None


def _all_read_first(store: Store, monkeypatch: pytest.MonkeyPatch, callers: int) -> None:
    """Every caller's first read finishes before any of them writes: the race, made certain."""
    met = threading.Barrier(callers, timeout=5)
    read = store.db.query_one

    def query_one(sql: str, args=()):  # type: ignore[no-untyped-def]
        row = read(sql, args)
        if threading.current_thread() is not threading.main_thread():
            try:
                met.wait()
            except threading.BrokenBarrierError:
                pass
        return row

    monkeypatch.setattr(store.db, "query_one", query_one)


def _together(callers: int, call):  # type: ignore[no-untyped-def]
    results: list = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(call())
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return results, errors


def test_first_requests_arriving_together_share_one_builtin_member(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    _all_read_first(store, monkeypatch, 4)
    results, errors = _together(4, store.builtin_member)
    assert errors == []
    assert len({m.id for m in results}) == 1 and len(results) == 4
    assert store.db.query_one("SELECT count(*) FROM members WHERE builtin = 1")[0] == 1


def test_two_admins_adding_the_same_name_together_get_a_clear_error(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    _all_read_first(store, monkeypatch, 2)
    results, errors = _together(2, lambda: store.add_member("Ann", "h"))
    assert len(results) == 1
    assert [str(e) for e in errors] == ["There is already a household member called Ann"]


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from localchat.store import Store
    store = Store(Path(sys.argv[1]))
    member = store.member_by_name("Ann") or store.add_member("Ann", "h")
    chat = store.create_conversation(member.id, "crash test")
    print("chat", chat, flush=True)
    for i in range(100000):
        store.put_message(member.id, chat, i, "user", f"message {i} " + "x" * (i % 300))
        print("ack", i, flush=True)
    """
)


def test_a_writer_killed_at_random_moments_loses_no_acknowledged_message(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    rng = random.Random(7)
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True, bufsize=1)
        assert proc.stdout is not None
        chat = proc.stdout.readline().split()[1]
        time.sleep(rng.uniform(0.2, 1.0))
        proc.kill()  # SIGKILL: no cleanup, no atexit
        complete = proc.stdout.read().split("\n")[:-1]  # a line cut off by the kill was never acknowledged
        acked = [int(line.split()[1]) for line in complete if line.startswith("ack ")]
        proc.wait()
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        store = Store(path)
        ann = store.member_by_name("Ann")
        stored = [m.content for m in store.conversation(ann.id, chat).messages]
        store.close()
        assert acked, "the writer was killed before writing anything; the test proves nothing"
        assert len(stored) >= len(acked)
        assert all(stored[i].startswith(f"message {i} ") for i in acked)


def test_a_full_disk_gives_a_clear_error_and_keeps_earlier_history(store: Store) -> None:
    ann = store.add_member("Ann", "h")
    chat = store.create_conversation(ann.id, "before the disk filled")
    store.put_message(ann.id, chat, 0, "user", "kept")
    pages = store.db.query_one("PRAGMA page_count")[0]
    store.db.query(f"PRAGMA max_page_count = {pages}")  # as if the disk had no room left
    with pytest.raises(StoreFull, match="full"):
        for i in range(1, 200):
            store.put_message(ann.id, chat, i, "user", "y" * 4000)
    store.db.query("PRAGMA max_page_count = 1073741823")
    messages = store.conversation(ann.id, chat).messages
    assert messages[0].content == "kept"
    assert store.db.query_one("PRAGMA integrity_check")[0] == "ok"


def test_a_new_password_can_keep_one_session_and_revoke_the_keys(store: Store) -> None:
    bob = store.add_member("Bob", "hash", "member")
    for token in ("laptop", "phone"):
        store.add_session(token, bob.id, 60)
    store.add_api_key(bob.id, "editor", "abc", "key-hash")
    store.set_password_hash(bob.id, "hash 2", keep_session="phone")
    assert store.session_member("phone") == bob and store.session_member("laptop") is None
    assert [k.prefix for k in store.api_keys(bob.id)] == ["abc"]  # the member's own change keeps keys
    store.set_password_hash(bob.id, "hash 3", revoke_keys=True)
    assert store.session_member("phone") is None and store.api_keys(bob.id) == [] and store.all_api_keys() == []
