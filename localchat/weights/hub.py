"""Downloading models from the Hugging Face Hub into the models folder: `localchat pull ID`.

Owns: the one place localchat talks to a model hub, and only when a person asks. Invariants:
files go to DATA_DIR/models/<name> (nothing outside the data dir); a file reaches its final name
only once its bytes match the hash the Hub lists for it (sha256 for LFS files, the git blob id for
others); a pull that is cut off resumes where it stopped, within the run (retries with backoff) and
when run again, but only from a `.part` file of the same hash (a part of another version is deleted,
never continued); `HF_TOKEN` is honoured for gated repos; a repo whose weights are only pickle files
(.bin, which can run code when loaded) is refused unless an admin allows it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatch
from glob import escape as glob_escape
from pathlib import Path
from typing import Any

SOURCE_FILE = ".localchat-source.json"
WEIGHTS = ("*.safetensors", "*.safetensors.index.json")
PICKLE = ("*.bin", "*.bin.index.json", "*.pt", "*.pth")
OTHER = ("*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja", "tokenizer*")  # never code (*.py)


class PullError(RuntimeError):
    """A download could not be done; the message says why and what to do."""


@dataclass(frozen=True)
class Retry:
    """How a download rides out a flaky connection within one run."""

    tries: int = 5  # tries in a row that bring no byte (a try that brings bytes resets the count)
    first_wait_s: float = 0.5  # doubled after each such try, up to max_wait_s
    max_wait_s: float = 8.0


@dataclass(frozen=True)
class Wanted:
    """One file of a revision, as the Hub's tree lists it."""

    name: str
    size: int
    sha256: str | None  # LFS files: the content's sha256
    blob_id: str | None  # other files: git's blob id, sha1 of b"blob <size>\0" + content
    revision: str = ""

    @property
    def part_name(self) -> str:
        """`<name>.<hash>.part`: a part of another version of the file never has this name."""
        key = self.sha256 or self.blob_id or hashlib.sha1(f"{self.revision}/{self.name}".encode()).hexdigest()
        return f"{self.name}.{key[:16]}.part"

    def matches(self, path: Path) -> bool:
        """Whether the file's bytes hash to what the Hub lists (True when the Hub lists no hash)."""
        if self.sha256:
            digest, expected = hashlib.sha256(), self.sha256
        elif self.blob_id:
            digest, expected = hashlib.sha1(f"blob {path.stat().st_size}\0".encode()), self.blob_id
        else:
            return True
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
        return digest.hexdigest() == expected.lower()


@dataclass(frozen=True)
class Pulled:
    repo_id: str
    revision: str
    folder: Path
    size_bytes: int


def progress_bar(done: int, total: int, width: int = 20) -> str:
    """█████░░░░░ 50% (shared by the command line and the page)."""
    share = done / total if total else 0.0
    filled = int(share * width)
    return "█" * filled + "░" * (width - filled) + f" {int(share * 100)}%"


def folder_name(repo_id: str) -> str:
    return repo_id.replace("/", "--")


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and ".cache" not in p.parts)


@contextmanager
def _online() -> Any:
    """localchat keeps the Hub offline (HF_HUB_OFFLINE=1); a pull is the one call that may go out."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = False
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _endpoint() -> str | None:
    """HF_ENDPOINT as it is now (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_ENDPOINT") or None


def _explain(exc: Exception, repo_id: str) -> PullError:
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(exc, GatedRepoError):
        return PullError(
            f"{repo_id} is gated: accept its terms on its Hub page, then set HF_TOKEN to a token of that account"
        )
    if isinstance(exc, RepositoryNotFoundError):
        return PullError(f"There is no model {repo_id} on the Hub (or it is private: set HF_TOKEN)")
    if isinstance(exc, RevisionNotFoundError):
        return PullError(f"{repo_id} has no such revision")
    if isinstance(exc, HfHubHTTPError):
        return PullError(f"The Hub refused the download of {repo_id}: {str(exc).splitlines()[0]}")
    return PullError(f"The download of {repo_id} stopped ({type(exc).__name__}); run the same pull again to resume")


def remote_revision(repo_id: str, token: str | None = None) -> tuple[str, list[str]]:
    """(commit sha, file names) of the repo's main revision."""
    from huggingface_hub import HfApi

    with _online():
        try:
            info = HfApi(endpoint=_endpoint(), token=token or os.environ.get("HF_TOKEN")).model_info(repo_id)
        except Exception as exc:  # noqa: BLE001 - every failure becomes one line
            raise _explain(exc, repo_id) from exc
    return str(info.sha), [s.rfilename for s in (info.siblings or [])]


def pull(
    repo_id: str,
    models_dir: Path,
    allow_pickle: bool = False,
    token: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    retry: Retry = Retry(),
) -> Pulled:
    """Download (or resume, or update) a Hub model repo into models_dir/<org>--<name>.

    Each file is written to `<name>.<hash>.part`, checked against its hash and renamed when complete;
    a dropped connection is retried (`retry`), and a pull that was cut off continues every .part file
    of the same hash with an HTTP Range request. `progress(done_bytes, total_bytes)`."""
    import httpx
    from huggingface_hub import HfApi, hf_hub_url

    if repo_id.count("/") != 1 or any(not part for part in repo_id.split("/")):
        raise PullError(f"{repo_id!r} is not a Hub id like org/name")
    token = token or os.environ.get("HF_TOKEN") or None
    sha, files = remote_revision(repo_id, token)
    has_safetensors = any(f.endswith(".safetensors") for f in files)
    has_pickle = any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    if not has_safetensors and has_pickle and not allow_pickle:
        raise PullError(
            f"{repo_id} has only pickle weights (.bin), which can run code when loaded; "
            "an admin can allow it (--allow-pickle), or pick a repo with .safetensors"
        )
    if not has_safetensors and not has_pickle:
        raise PullError(f"{repo_id} has no transformers weights (.safetensors or .bin) to load")
    patterns = [*WEIGHTS, *OTHER, *(PICKLE if not has_safetensors else ())]
    with _online():
        try:
            tree = HfApi(endpoint=_endpoint(), token=token).list_repo_tree(repo_id, revision=sha, recursive=True)
            wanted = [_wanted(f, sha) for f in tree if hasattr(f, "size") and _matches(f.path, patterns)]
        except Exception as exc:  # noqa: BLE001
            raise _explain(exc, repo_id) from exc
    target = models_dir / folder_name(repo_id)
    target.mkdir(parents=True, exist_ok=True)
    total = sum(w.size for w in wanted)
    done = 0
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(headers=headers, follow_redirects=True, timeout=httpx.Timeout(60.0, connect=10.0)) as http:
        fetch = _Fetch(http, repo_id, target, total, progress, retry)
        for want in wanted:
            final = target / want.name
            if final.exists() and final.stat().st_size == want.size and (target / SOURCE_FILE).exists():
                source = source_of(target) or {}
                if source.get("revision") == sha:
                    done += want.size
                    continue
            done = fetch.file(want, hf_hub_url(repo_id, want.name, revision=sha, endpoint=_endpoint()), done)
    for stale in target.glob("*.part"):  # parts of files this revision no longer has
        stale.unlink()
    (target / SOURCE_FILE).write_text(json.dumps({"repo_id": repo_id, "revision": sha, "pulled_at": time.time()}))
    return Pulled(repo_id, sha, target, folder_size(target))


def _wanted(entry: Any, revision: str) -> Wanted:
    lfs = getattr(entry, "lfs", None)
    sha256 = getattr(lfs, "sha256", None) if lfs is not None else None
    blob_id = getattr(entry, "blob_id", None) if lfs is None else None  # an LFS entry's blob is its pointer
    return Wanted(entry.path, entry.size, sha256 or None, blob_id or None, revision)


def _matches(path: str, patterns: list[str]) -> bool:
    return "/" not in path and any(fnmatch(path, p) for p in patterns)


class _Retryable(Exception):
    """A try that may go better a moment later (a dropped connection, a 5xx)."""


@dataclass(frozen=True)
class _Fetch:
    """Downloads the files of one pull into `target`, each through its hash-keyed .part file."""

    http: Any  # httpx.Client
    repo_id: str
    target: Path
    total: int
    progress: Callable[[int, int], None] | None
    retry: Retry

    def file(self, want: Wanted, url: str, done: int) -> int:
        """One file, verified; a mismatch is downloaded once more from zero. Returns the bytes done."""
        final, part = self.target / want.name, self.target / want.part_name
        self._drop_other_parts(want)
        for attempt in range(2):
            self._download(want, url, part, done)
            if part.stat().st_size == want.size and want.matches(part):
                part.replace(final)
                return done + want.size
            part.unlink()
            if attempt == 0 and self.progress:
                self.progress(done, self.total)
        kind = f"sha256 {want.sha256}" if want.sha256 else f"git blob id {want.blob_id}"
        raise PullError(
            f"{want.name} of {self.repo_id} arrived twice with bytes that do not match the size and {kind} "
            "the Hub lists for it, so it was deleted; something between you and the Hub (a proxy, the mirror "
            "in HF_ENDPOINT) alters downloads"
        )

    def _drop_other_parts(self, want: Wanted) -> None:
        """A .part of another version of this file (or of localchat before hashes) is never continued."""
        other = re.compile(re.escape(want.name) + r"(\.[0-9a-f]{16})?\.part")
        for path in self.target.glob(f"{glob_escape(want.name)}*.part"):
            if path.name != want.part_name and other.fullmatch(path.name):
                path.unlink()

    def _download(self, want: Wanted, url: str, part: Path, done: int) -> None:
        """Fill `part` up to want.size, continuing it with Range requests and retrying within `retry`."""
        fruitless, wait = 0, self.retry.first_wait_s
        while True:
            before = part.stat().st_size if part.exists() else 0
            if before > want.size:
                part.unlink()
                before = 0
            if before == want.size:
                return
            try:
                return self._once(want, url, part, before, done)  # complete, or longer than listed (caught later)
            except _Retryable as exc:
                now = part.stat().st_size if part.exists() else 0
                fruitless, wait = (0, self.retry.first_wait_s) if now > before else (fruitless + 1, wait)
                if fruitless >= self.retry.tries:
                    raise PullError(
                        f"The download of {self.repo_id} stopped at {want.name} ({exc}) after {fruitless} tries; "
                        "run the same pull again to continue where it stopped"
                    ) from exc
                time.sleep(wait)
                wait = min(wait * 2, self.retry.max_wait_s)

    def _once(self, want: Wanted, url: str, part: Path, have: int, done: int) -> None:
        import httpx

        try:
            with self.http.stream("GET", url, headers={"Range": f"bytes={have}-"} if have else {}) as r:
                if r.status_code in (401, 403):
                    code = r.headers.get("X-Error-Code", "")
                    raise PullError(
                        f"{self.repo_id} is gated: accept its terms on its Hub page, then set HF_TOKEN to a token "
                        "of that account"
                        if code == "GatedRepo" or r.status_code == 403
                        else f"The Hub refused {self.repo_id} (set HF_TOKEN if it is private)"
                    )
                if r.status_code == 429 or r.status_code >= 500:
                    raise _Retryable(f"the Hub answered {r.status_code}")
                if r.status_code not in (200, 206):
                    raise PullError(f"The Hub answered {r.status_code} for {want.name} of {self.repo_id}")
                if r.status_code == 200:  # no Range asked, or the server ignored it: the file from its start
                    have = 0
                with part.open("ab" if have else "wb") as out:
                    for chunk in r.iter_bytes():  # as it arrives: a cut-off keeps what came
                        out.write(chunk)
                        have += len(chunk)
                        if self.progress:
                            self.progress(done + min(have, want.size), self.total)
        except httpx.TransportError as exc:  # connection refused, reset, cut mid-body, timed out
            raise _Retryable(type(exc).__name__) from exc
        except httpx.HTTPError as exc:
            raise PullError(f"The download of {self.repo_id} failed at {want.name} ({type(exc).__name__})") from exc
        if have < want.size:
            raise _Retryable(f"{have} of {want.size} bytes")


def source_of(folder: Path) -> dict[str, Any] | None:
    """Where a downloaded folder came from (repo and revision), if localchat pulled it."""
    try:
        return json.loads((folder / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return None


def check_update(folder: Path, token: str | None = None) -> str | None:
    """The newer revision on the Hub, or None when the folder is current (or not from the Hub)."""
    source = source_of(folder)
    if source is None:
        return None
    sha, _ = remote_revision(source["repo_id"], token)
    return sha if sha != source.get("revision") else None


def delete(folder: Path, models_dir: Path) -> int:
    """Delete a model folder inside models_dir; returns the bytes freed."""
    folder, models_dir = folder.resolve(), models_dir.resolve()
    if folder.parent != models_dir or not folder.is_dir():
        raise PullError(f"{folder} is not a model folder inside {models_dir}")
    size = folder_size(folder)
    shutil.rmtree(folder)
    return size
