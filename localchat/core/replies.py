"""The replies being written right now, one per browser tab of a member, so Stop, a new chat or a
rewrite (retry, edit, undo, delete) reach exactly that tab's reply.

Invariant: a reply is keyed by (member id, tab key); stopping one never touches another member's
reply or another tab's, even when two requests claim the same tab key.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

Key = tuple[int, str]  # (member id, tab key: Gradio's session hash)


@dataclass(eq=False)
class Reply:
    """`discarded`: the tab shows something else now, so the reply must not write into the page;
    `rewritten`: its conversation changed, so it must not be saved either."""

    cancel: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    discarded: bool = False
    rewritten: bool = False
    signed_in: Callable[[], bool] = lambda: True  # is the session that asked still valid?
    save_error: str | None = None  # why the reply could not be saved, for the page to say

    def stop(self, discard: bool = False, rewritten: bool = False) -> None:
        self.discarded = self.discarded or discard
        self.rewritten = self.rewritten or rewritten
        self.cancel.set()


class Replies:
    def __init__(self) -> None:
        self._running: dict[Key, Reply] = {}
        self._lock = threading.Lock()

    def get(self, key: Key) -> Reply | None:
        with self._lock:
            return self._running.get(key)

    def busy(self, key: Key) -> bool:
        """Is this tab receiving a reply it still shows?"""
        reply = self.get(key)
        return reply is not None and not reply.discarded

    def begin(self, key: Key, signed_in: Callable[[], bool] = lambda: True) -> Reply | None:
        """A new reply for this tab, or None while the tab still shows one being written. A reply
        the tab no longer shows (retry, edit) is given time to wind down first (outside the lock),
        then the check is made again: checking and registering are one step, so two requests for one
        tab never both register (the first could then not be stopped)."""
        reply = Reply(signed_in=signed_in)
        waited: Reply | None = None
        while True:
            with self._lock:
                running = self._running.get(key)
                if running is None or running is waited:  # free, or a discarded reply that would not end
                    self._running[key] = reply
                    return reply
                if not running.discarded:
                    return None
            running.finished.wait(10)
            waited = running

    def stop(self, key: Key, discard: bool = False, rewritten: bool = False) -> None:
        reply = self.get(key)
        if reply is not None:
            reply.stop(discard, rewritten)

    def end(self, key: Key, reply: Reply) -> None:
        """The reply is over (its generation is cancelled if it still runs); the tab is free."""
        reply.cancel.set()
        with self._lock:
            if self._running.get(key) is reply:
                del self._running[key]

    def __len__(self) -> int:
        with self._lock:
            return len(self._running)
