"""The registry of running replies (core/replies.py): one reply per tab, even under races."""

from __future__ import annotations

import threading

import pytest

from localchat.core import replies
from localchat.core.replies import Replies, Reply

KEY = (1, "tab")


def test_two_replies_begun_together_for_one_tab_register_only_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both requests are let through to the point of registering at the same moment (a barrier in
    Reply's construction): exactly one gets the tab, and Stop reaches the one that runs."""
    together = threading.Barrier(2, timeout=10)

    class Meeting(Reply):
        def __init__(self, **kw: object) -> None:
            together.wait()
            super().__init__(**kw)

    monkeypatch.setattr(replies, "Reply", Meeting)
    registry = Replies()
    got: list[Reply | None] = []
    threads = [threading.Thread(target=lambda: got.append(registry.begin(KEY))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    [running] = [r for r in got if r is not None]
    assert got.count(None) == 1
    registry.stop(KEY)
    assert running.cancel.is_set()


def test_a_discarded_reply_is_waited_for_then_replaced() -> None:
    registry = Replies()
    old = registry.begin(KEY)
    assert old is not None and registry.begin(KEY) is None  # the tab still shows it
    old.stop(discard=True)

    def finish() -> None:
        registry.end(KEY, old)
        old.finished.set()

    threading.Timer(0.05, finish).start()
    new = registry.begin(KEY)  # waits for the old one to wind down
    assert new is not None and new is not old and registry.get(KEY) is new
