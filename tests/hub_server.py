"""A small stand-in for the Hugging Face Hub on loopback (HF_ENDPOINT), serving model repos the way
the Hub does: /api/models/{id}/revision/{rev}, /api/models/{id}/tree/{rev} (with each file's git blob
id, and for LFS files their sha256), and /{id}/resolve/{rev}/{file} (HEAD with X-Repo-Commit and ETag,
GET with Range for resuming), for the main revision and the ones before it.

It can refuse a gated repo without a token, and misbehave on a file's downloads, to test how a pull
copes: cut a GET halfway, drop the connection before answering, answer 503 (`faults`, one per GET),
or serve bytes other than the listed ones (`corrupt`).
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS = (".safetensors", ".bin", ".pt", ".pth", ".gguf")  # stored in LFS on the Hub: listed with a sha256


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    files: dict[str, bytes]
    sha: str = "a" * 40
    gated: bool = False
    older: dict[str, dict[str, bytes]] = field(default_factory=dict)  # earlier revisions, by commit

    def new_revision(self, files: dict[str, bytes], sha: str) -> None:
        """A new commit becomes main; the old one stays reachable by its sha, as on the Hub."""
        self.older[self.sha] = self.files
        self.files, self.sha = files, sha

    def at(self, revision: str) -> tuple[str, dict[str, bytes]] | None:
        if revision in ("main", self.sha):
            return self.sha, self.files
        return (revision, self.older[revision]) if revision in self.older else None


def listing(name: str, data: bytes) -> dict:
    entry = {"type": "file", "path": name, "size": len(data), "oid": git_blob_id(data)}
    if name.endswith(LFS):
        sha256 = hashlib.sha256(data).hexdigest()
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n".encode()
        entry.update(oid=git_blob_id(pointer), lfs={"oid": sha256, "size": len(data), "pointerSize": len(pointer)})
    return entry


@dataclass
class HubServer:
    repos: dict[str, Repo]
    token: str = "hf_test_token"
    faults: dict[str, list[str]] = field(default_factory=dict)  # "repo/file": "cut"|"drop"|"503"|"404", one a GET
    corrupt: set[str] = field(default_factory=set)  # "repo/file": every GET serves other bytes of the same size
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

            def _revision(self, repo: Repo, revision: str) -> tuple[str, dict[str, bytes]] | None:
                found = repo.at(revision)
                if found is None:
                    self._send(404, b'{"error":"Invalid rev id"}', {"X-Error-Code": "RevisionNotFound"})
                return found

            def _hang_up(self) -> None:
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)

            def do_HEAD(self) -> None:
                self._handle(head=True)

            def do_GET(self) -> None:
                self._handle(head=False)

            def _handle(self, head: bool) -> None:
                path = unquote(urlsplit(self.path).path)
                hub.requests.append((self.command, path, self.headers.get("Range")))
                parts = path.strip("/").split("/")
                if parts[:2] == ["api", "models"] and len(parts) == 4:
                    parts += ["revision", "main"]  # the model's own page: its main revision
                if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
                    repo_id = "/".join(parts[2:4])
                    repo = self._repo(repo_id)
                    found = repo and self._revision(repo, parts[5])
                    if not found:
                        return
                    sha, files = found
                    if parts[4] == "revision":
                        self._json({
                            "id": repo_id, "modelId": repo_id, "sha": sha, "private": False,
                            "gated": "auto" if repo.gated else False,
                            "siblings": [{"rfilename": name} for name in files],
                        })  # fmt: skip
                    else:
                        self._json([listing(name, data) for name, data in files.items()])
                    return
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo_id, name = "/".join(parts[:2]), "/".join(parts[4:])
                    repo = self._repo(repo_id)
                    found = repo and self._revision(repo, parts[3])
                    if not found:
                        return
                    sha, files = found
                    if name not in files:
                        self._send(404, b"", {"X-Error-Code": "EntryNotFound"})
                        return
                    data, entry = files[name], listing(name, files[name])
                    etag = entry["lfs"]["oid"] if "lfs" in entry else entry["oid"]
                    headers = {"X-Repo-Commit": sha, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
                    key = f"{repo_id}/{name}"
                    if not head and key in hub.corrupt:
                        data = bytes(b ^ 0x5A for b in data)
                    start = 0
                    rng = self.headers.get("Range")
                    if rng and rng.startswith("bytes="):
                        start = int(rng[6:].split("-")[0] or 0)
                    body = data[start:]
                    status = 206 if start else 200
                    if start:
                        headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                    fault = hub.faults[key].pop(0) if not head and hub.faults.get(key) else None
                    if fault == "drop":
                        return self._hang_up()
                    if fault == "503":
                        return self._send(503, b'{"error":"Service Unavailable"}')
                    if fault == "404":  # the run ends here (a pull does not retry a 404)
                        return self._send(404, b"", {"X-Error-Code": "EntryNotFound"})
                    if fault == "cut":
                        self.send_response(status)
                        for k, v in {**headers, "Content-Length": str(len(body))}.items():
                            self.send_header(k, v)
                        self.end_headers()
                        self.wfile.write(body[: len(body) // 2])
                        return self._hang_up()
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
