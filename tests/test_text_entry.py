"""Text from outside that Python holds but UTF-8 cannot (lone surrogates, e.g. `"\\ud800"` in
JSON) is stored as U+FFFD, never a 500: titles, messages, search and import (a real Store on a
tmp SQLite file, and the real /import route on loopback)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from conftest import sign_in

from localchat.household import SESSION_COOKIE
from localchat.store import Store, StoredMessage
from localchat.text import clean_text
from localchat.transfer import ImportProblem, parse_import

HALF = "\ud800"


@pytest.fixture()
def store(tmp_path: Path):
    store = Store(tmp_path / "localchat.db")
    yield store
    store.close()


def test_clean_text_replaces_only_lone_surrogates() -> None:
    assert clean_text("plain é 日本 \U0001f600") == "plain é 日本 \U0001f600"
    assert clean_text(f"a{HALF}b\udfff") == "a\ufffdb\ufffd"


def test_titles_messages_search_and_import_take_lone_surrogates(store: Store) -> None:
    member = store.builtin_member().id
    cid = store.create_conversation(member, f"title {HALF}")
    store.put_message(member, cid, 0, "user", f"question {HALF}", stats=HALF)
    store.rename(member, cid, f"renamed {HALF}")
    chat = store.conversation(member, cid)
    assert chat.title == "renamed \ufffd" and chat.messages[0] == StoredMessage("user", "question \ufffd", "\ufffd")
    assert [c.id for c in store.conversations(member, search=f"question {HALF}")] == [cid]
    assert store.conversations(member, search=HALF) and not store.conversations(member, search=f"x{HALF}")
    other = store.import_conversation(member, HALF, [StoredMessage("user", f"{HALF}!")])
    assert store.conversation(member, other).messages[0].content == "\ufffd!"


def test_import_parsing_cleans_text_and_refuses_odd_values() -> None:
    doc = {
        "format": "localchat.conversations",
        "version": 1,
        "conversations": [
            {"title": HALF, "created_at": 1e300, "messages": [{"role": "user", "content": HALF, "stats": HALF}]},
            {"title": "t", "created_at": 10**400, "messages": []},
            {"title": "t", "created_at": "9999-12-31T23:59:59", "messages": []},
        ],
    }
    chats = parse_import(json.dumps(doc).encode())
    assert chats[0].title == "\ufffd" and chats[0].messages[0] == StoredMessage("user", "\ufffd", "\ufffd")
    assert [c.created_at for c in chats] == [None, None, None]  # no real date: becomes 'now'
    with pytest.raises(ImportProblem, match="role"):
        parse_import(b'[{"role": ["user"], "content": "x"}]')
    with pytest.raises(ImportProblem, match="deeply"):
        parse_import(b"[" * 100_000 + b"]" * 100_000)


def test_the_import_route_takes_lone_surrogates_and_exports_them_back(household_app) -> None:
    cookie = sign_in(household_app.url, "Ann")
    body = (
        b'{"format": "localchat.conversations", "version": 1, "conversations": [{"title": "half \\ud800",'
        b' "created_at": 1e300, "messages": [{"role": "user", "content": "\\udfff there"}]}]}'
    )
    r = httpx.post(
        household_app.url + "/import",
        content=body,
        headers={"Content-Type": "application/json"},
        cookies={SESSION_COOKIE: cookie},
    )
    assert r.status_code == 200, r.text
    exported = httpx.get(household_app.url + "/export/all.json", cookies={SESSION_COOKIE: cookie})
    assert exported.status_code == 200
    chat = exported.json()["conversations"][0]
    assert chat["title"] == "half \ufffd" and chat["messages"][0]["content"] == "\ufffd there"
    bad = httpx.post(
        household_app.url + "/import",
        content=b'[{"role": {}, "content": "x"}]',
        headers={"Content-Type": "application/json"},
        cookies={SESSION_COOKIE: cookie},
    )
    assert bad.status_code == 400 and "role" in bad.json()["error"]["message"]
