"""Downloading models from the Hugging Face Hub into the models folder: `localchat pull ID`.

Owns: the one place localchat talks to a model hub, and only when a person asks. Invariants:
files go to DATA_DIR/models/<name> (nothing outside the data dir); a pull that is cut off resumes
where it stopped when run again; `HF_TOKEN` is honoured for gated repos; a repo whose weights are
only pickle files (.bin, which can run code when loaded) is refused unless an admin allows it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SOURCE_FILE = ".localchat-source.json"
WEIGHTS = ("*.safetensors", "*.safetensors.index.json")
PICKLE = ("*.bin", "*.bin.index.json", "*.pt", "*.pth")
OTHER = ("*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja", "tokenizer*")  # never code (*.py)


class PullError(RuntimeError):
    """A download could not be done; the message says why and what to do."""


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
) -> Pulled:
    """Download (or resume, or update) a Hub model repo into models_dir/<org>--<name>.

    Each file is written to `<name>.part` and renamed when complete; a pull that was cut off
    continues every .part file with an HTTP Range request. `progress(done_bytes, total_bytes)`."""
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
            wanted = [(f.path, f.size) for f in tree if hasattr(f, "size") and _matches(f.path, patterns)]
        except Exception as exc:  # noqa: BLE001
            raise _explain(exc, repo_id) from exc
    target = models_dir / folder_name(repo_id)
    target.mkdir(parents=True, exist_ok=True)
    total = sum(size for _, size in wanted)
    done = 0
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(headers=headers, follow_redirects=True, timeout=httpx.Timeout(60.0, connect=10.0)) as http:
        for name, size in wanted:
            final = target / name
            if final.exists() and final.stat().st_size == size and (target / SOURCE_FILE).exists():
                source = source_of(target) or {}
                if source.get("revision") == sha:
                    done += size
                    continue
            url = hf_hub_url(repo_id, name, revision=sha, endpoint=_endpoint())
            done = _fetch(http, url, final, size, done, total, progress, repo_id)
    (target / SOURCE_FILE).write_text(json.dumps({"repo_id": repo_id, "revision": sha, "pulled_at": time.time()}))
    return Pulled(repo_id, sha, target, folder_size(target))


def _matches(path: str, patterns: list[str]) -> bool:
    from fnmatch import fnmatch

    return "/" not in path and any(fnmatch(path, p) for p in patterns)


def _fetch(http, url: str, final: Path, size: int, done: int, total: int, progress, repo_id: str) -> int:  # noqa: PLR0913
    """One file, continued from its .part file if a pull was cut off; returns the bytes done."""
    import httpx

    part = final.with_name(final.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    if have > size:
        part.unlink()
        have = 0
    request_headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        with http.stream("GET", url, headers=request_headers) as r:
            if r.status_code in (401, 403):
                code = r.headers.get("X-Error-Code", "")
                raise PullError(
                    f"{repo_id} is gated: accept its terms on its Hub page, then set HF_TOKEN to a token of that account"
                    if code == "GatedRepo" or r.status_code == 403
                    else f"The Hub refused {repo_id} (set HF_TOKEN if it is private)"
                )
            if r.status_code not in (200, 206):
                raise PullError(f"The Hub answered {r.status_code} for {final.name} of {repo_id}")
            if r.status_code == 200 and have:  # the server ignored the Range: start the file again
                have = 0
            with part.open("ab" if have else "wb") as out:
                for chunk in r.iter_bytes():  # as it arrives: a cut-off keeps what came
                    out.write(chunk)
                    have += len(chunk)
                    if progress:
                        progress(done + have, total)
    except httpx.HTTPError as exc:
        raise PullError(
            f"The download of {repo_id} stopped at {final.name} ({type(exc).__name__}); "
            "run the same pull again to continue where it stopped"
        ) from exc
    if have != size:
        raise PullError(f"{final.name} of {repo_id} arrived incomplete; run the same pull again to continue")
    part.replace(final)
    return done + size


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
