"""Which member owns each Gradio session hash and event id, and where a request names them.

Invariant: a session hash (a tab's server-side state and event stream) and an event id (one queued
call: its output stream and its cancel) belong to the member who first used or was issued them; a
request naming one of another member's is refused before Gradio sees it.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from urllib.parse import parse_qs

MAX_OWNED = 50_000  # remembered ids per kind; the oldest are forgotten first


class Owners:
    """A bounded id -> member id map; a forgotten id is bound again by its next user."""

    def __init__(self, limit: int = MAX_OWNED):
        self.limit = limit
        self._owner: OrderedDict[str, int] = OrderedDict()

    def foreign(self, ids: list[str], member_id: int) -> bool:
        return any(self._owner.get(i, member_id) != member_id for i in ids)

    def bind(self, ids: list[str], member_id: int) -> None:
        for i in ids:
            self._owner[i] = member_id
            self._owner.move_to_end(i)
        while len(self._owner) > self.limit:
            self._owner.popitem(last=False)


def gradio_post(scope: dict) -> bool:
    """A POST to Gradio's API, whose JSON body may name a session hash or an event id."""
    path = scope.get("path", "")
    return scope.get("method") == "POST" and ("/gradio_api/" in path or path.startswith("/api/"))


def issues_event_id(scope: dict) -> bool:
    """Responses that hand out a new event id: joining the queue and the two-step /call API."""
    path = scope.get("path", "")
    return scope.get("method") == "POST" and (path.endswith("/queue/join") or "/gradio_api/call/" in path)


def named_ids(scope: dict, body: bytes) -> tuple[list[str], list[str]]:
    """(session hashes, event ids) a request names: in every query value, path segment and JSON
    body field where Gradio reads them."""
    path = scope.get("path", "")
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    hashes = list(query.get("session_hash", []))
    events = list(query.get("event_id", []))
    parts = path.split("/")
    for marker in ("heartbeat", "stream"):  # /stream/<id> is a session hash or an event id
        if marker in parts and parts.index(marker) + 1 < len(parts):
            hashes.append(parts[parts.index(marker) + 1])
            events.append(parts[parts.index(marker) + 1])
    if scope.get("method") == "GET" and "call" in parts:  # GET /call[/v2]/<api>/<event id>: the output stream
        rest = parts[parts.index("call") + 1 :]
        if len(rest) >= (3 if rest[:1] == ["v2"] else 2):
            events.append(rest[-1])
    try:
        data = json.loads(body) if body else None
    except ValueError:
        data = None
    if isinstance(data, dict):
        if data.get("session_hash") is not None:
            hashes.append(str(data["session_hash"]))
        if data.get("event_id") is not None:
            events.append(str(data["event_id"]))
    return hashes, events


def issued_event_id(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    event_id = data.get("event_id") if isinstance(data, dict) else None
    return str(event_id) if event_id is not None else None
