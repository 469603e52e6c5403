"""A small stand-in for the Hugging Face Hub on loopback (HF_ENDPOINT), serving model repos the way
the Hub does: /api/models/{id}/revision/{rev}, /api/models/{id}/tree/{rev}, and
/{id}/resolve/{rev}/{file} (HEAD with X-Repo-Commit and ETag, GET with Range for resuming).

It can refuse a gated repo without a token, and cut a file's downloads halfway, to test that a
second pull resumes it.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class Repo:
    files: dict[str, bytes]
    sha: str = "a" * 40
    gated: bool = False


@dataclass
class HubServer:
    repos: dict[str, Repo]
    token: str = "hf_test_token"
    cuts: dict[str, int] = field(default_factory=dict)  # "repo/file": how many GETs stop halfway
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # method, path, Range

    def start(self) -> str:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                if "Content-Length" not in (headers or {}):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _json(self, data, status: int = 200) -> None:
                self._send(status, json.dumps(data).encode(), {"Content-Type": "application/json"})

            def _repo(self, repo_id: str) -> Repo | None:
                repo = hub.repos.get(repo_id)
                if repo is None:
                    self._send(404, b'{"error":"Repository not found"}', {"X-Error-Code": "RepoNotFound"})
                    return None
                if repo.gated and self.headers.get("Authorization") != f"Bearer {hub.token}":
                    self._send(
                        401,
                        b'{"error":"Access to this model is restricted"}',
                        {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access to model is restricted"},
                    )
                    return None
                return repo

            def do_HEAD(self) -> None:
                self._handle(head=True)

            def do_GET(self) -> None:
                self._handle(head=False)

            def _handle(self, head: bool) -> None:
                path = unquote(urlsplit(self.path).path)
                hub.requests.append((self.command, path, self.headers.get("Range")))
                parts = path.strip("/").split("/")
                if parts[:2] == ["api", "models"] and len(parts) == 4:
                    parts.append("revision")  # the model's own page: its main revision
                if parts[:2] == ["api", "models"] and len(parts) >= 5 and parts[4] in ("revision", "tree"):
                    repo_id = "/".join(parts[2:4])
                    repo = self._repo(repo_id)
                    if repo is None:
                        return
                    if parts[4] == "revision":
                        self._json({
                            "id": repo_id, "modelId": repo_id, "sha": repo.sha, "private": False,
                            "gated": "auto" if repo.gated else False,
                            "siblings": [{"rfilename": name} for name in repo.files],
                        })  # fmt: skip
                    else:
                        self._json([
                            {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                            for name, data in repo.files.items()
                        ])  # fmt: skip
                    return
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo_id, name = "/".join(parts[:2]), "/".join(parts[4:])
                    repo = self._repo(repo_id)
                    if repo is None:
                        return
                    if name not in repo.files:
                        self._send(404, b"", {"X-Error-Code": "EntryNotFound"})
                        return
                    data = repo.files[name]
                    etag = hashlib.sha1(data).hexdigest()
                    headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
                    start = 0
                    rng = self.headers.get("Range")
                    if rng and rng.startswith("bytes="):
                        start = int(rng[6:].split("-")[0] or 0)
                    body = data[start:]
                    status = 206 if start else 200
                    if start:
                        headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                    key = f"{repo_id}/{name}"
                    if not head and hub.cuts.get(key, 0) > 0:
                        hub.cuts[key] -= 1
                        half = body[: len(body) // 2]
                        self.send_response(status)
                        for k, v in {**headers, "Content-Length": str(len(body))}.items():
                            self.send_header(k, v)
                        self.end_headers()
                        self.wfile.write(half)
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                    self._send(status, body, {**headers, "Content-Length": str(len(body))}, head=head)
                    return
                self._send(404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()


def tiny_repo_files(model_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(model_dir.iterdir()) if p.is_file()}
