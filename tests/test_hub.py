"""`localchat pull` and `localchat models` against a stand-in Hub on loopback (HF_ENDPOINT): the
files arrive and load, a cut-off download continues with a Range request (within the run, and in
the next run), a part of an older revision is never continued, a file whose bytes do not match the
Hub's hash is deleted, gated repos need HF_TOKEN, pickle-only repos need consent, updates are
found, and a model can be deleted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from hub_server import HubServer, Repo, tiny_repo_files

from localchat.engine.loading import load_model
from localchat.types import LoadOptions
from localchat.weights.hub import SOURCE_FILE
from localchat.weights.models import folder_models


@pytest.fixture()
def hub(tiny_model: Path):
    files = tiny_repo_files(tiny_model)
    server = HubServer(
        {
            "org/tiny": Repo(files),
            "org/gated": Repo(files, gated=True),
            "org/pickled": Repo({"config.json": files["config.json"], "pytorch_model.bin": b"\x80\x02" + b"x" * 64}),
        }
    )
    server.url = server.start()
    yield server
    server.stop()


def localchat(hub: HubServer, data: Path, *args: str, token: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    env.update(HF_ENDPOINT=hub.url, **({"HF_TOKEN": token} if token else {}))
    return subprocess.run(
        [sys.executable, "-m", "localchat.cli", *args, "--data-dir", str(data)],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
    )  # fmt: skip


def gets(hub: HubServer, name: str) -> list[str | None]:
    """The Range header of each GET of a file, in order."""
    return [r for method, path, r in hub.requests if method == "GET" and path.endswith(f"/{name}")]


def test_a_pulled_model_is_listed_and_loads(hub: HubServer, tmp_path: Path, tiny_model: Path) -> None:
    out = localchat(hub, tmp_path, "pull", "org/tiny")
    assert out.returncode == 0, out.stderr
    assert "█" * 20 + " 100%" in out.stdout  # the progress bar reached its end
    folder = tmp_path / "models" / "org--tiny"
    assert (folder / "model.safetensors").read_bytes() == (tiny_model / "model.safetensors").read_bytes()
    assert [s.id for s in folder_models(tmp_path / "models")] == [str(folder)]
    loaded = load_model(LoadOptions(model=str(folder), device="cpu"), tmp_path / "cache")
    assert loaded.info.name == "org--tiny"
    listing = localchat(hub, tmp_path, "models").stdout
    assert "org--tiny" in listing and "org/tiny@aaaaaaaa" in listing


def test_a_cut_off_download_continues_where_it_stopped(hub: HubServer, tmp_path: Path, tiny_model: Path) -> None:
    hub.faults["org/tiny/model.safetensors"] = ["cut", "404"]  # cut halfway, then the run ends
    first = localchat(hub, tmp_path, "pull", "org/tiny")
    assert first.returncode == 1
    hub.faults.clear()
    folder = tmp_path / "models" / "org--tiny"
    have = sum(part.stat().st_size for part in folder.glob("model.safetensors*.part"))
    second = localchat(hub, tmp_path, "pull", "org/tiny")
    assert second.returncode == 0, second.stderr
    assert gets(hub, "model.safetensors")[-1] == f"bytes={have}-" != "bytes=0-"
    assert (folder / "model.safetensors").read_bytes() == (tiny_model / "model.safetensors").read_bytes()
    assert not list(folder.glob("*.part"))


def test_a_part_of_an_older_revision_is_not_continued(hub: HubServer, tmp_path: Path, tiny_model: Path) -> None:
    old = tiny_repo_files(tiny_model)
    hub.faults["org/tiny/model.safetensors"] = ["cut", "404"]
    assert localchat(hub, tmp_path, "pull", "org/tiny").returncode == 1  # half of the old weights on disk
    hub.faults.clear()
    folder = tmp_path / "models" / "org--tiny"
    (folder / "tokenizer.json.part").write_bytes(b"{ junk left by an older localchat")
    header = 8 + int.from_bytes(old["model.safetensors"][:8], "little")
    weights = old["model.safetensors"][:header] + bytes(b ^ 1 for b in old["model.safetensors"][header:])
    new = {**old, "model.safetensors": weights, "tokenizer.json": old["tokenizer.json"].replace(b"<pad>", b"<PAD>")}
    hub.repos["org/tiny"].new_revision(new, "b" * 40)  # same sizes, other bytes
    second = localchat(hub, tmp_path, "pull", "org/tiny")
    assert second.returncode == 0, second.stderr
    assert gets(hub, "model.safetensors")[-1] is None  # from its first byte, not from the old part's end
    assert {name: (folder / name).read_bytes() for name in new} == new
    assert not list(folder.glob("*.part"))


def test_a_flaky_connection_is_ridden_out_within_one_pull(hub: HubServer, tmp_path: Path, tiny_model: Path) -> None:
    hub.faults["org/tiny/model.safetensors"] = ["cut", "drop", "503", "cut"]
    hub.faults["org/tiny/config.json"] = ["503"]
    out = localchat(hub, tmp_path, "pull", "org/tiny")
    assert out.returncode == 0, out.stderr
    assert "█" * 20 + " 100%" in out.stdout
    ranges = gets(hub, "model.safetensors")
    starts = [int(r.removeprefix("bytes=").rstrip("-")) for r in ranges[1:]]
    assert ranges[0] is None and len(starts) == 4 and 0 < starts[0] == starts[1] == starts[2] < starts[3]
    folder = tmp_path / "models" / "org--tiny"
    assert tiny_repo_files(folder) == {**tiny_repo_files(tiny_model), SOURCE_FILE: (folder / SOURCE_FILE).read_bytes()}


def test_retries_are_bounded(hub: HubServer, tmp_path: Path, monkeypatch) -> None:
    from localchat.weights.hub import PullError, Retry, pull

    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    hub.faults["org/tiny/model.safetensors"] = ["drop"] * 4
    with pytest.raises(PullError, match="after 3 tries; run the same pull again"):
        pull("org/tiny", tmp_path / "models", retry=Retry(tries=3, first_wait_s=0.0))
    assert len(gets(hub, "model.safetensors")) == 3


@pytest.mark.parametrize(("name", "hash_kind"), [("model.safetensors", "sha256"), ("config.json", "git blob id")])
def test_a_corrupted_download_fails_its_hash_and_is_deleted(
    hub: HubServer, tmp_path: Path, name: str, hash_kind: str
) -> None:
    hub.corrupt.add(f"org/tiny/{name}")
    out = localchat(hub, tmp_path, "pull", "org/tiny")
    assert out.returncode == 1
    assert f"{name} of org/tiny arrived twice with bytes that do not match the size and {hash_kind}" in out.stderr
    assert "deleted" in out.stderr
    assert len(gets(hub, name)) == 2  # downloaded once more before giving up
    assert not list((tmp_path / "models" / "org--tiny").glob(f"{name}*"))


def test_a_gated_repo_needs_a_token(hub: HubServer, tmp_path: Path) -> None:
    refused = localchat(hub, tmp_path, "pull", "org/gated")
    assert refused.returncode == 1 and "gated" in refused.stderr and "HF_TOKEN" in refused.stderr
    assert localchat(hub, tmp_path, "pull", "org/gated", token=hub.token).returncode == 0


def test_pickle_weights_need_consent(hub: HubServer, tmp_path: Path) -> None:
    refused = localchat(hub, tmp_path, "pull", "org/pickled")
    assert refused.returncode == 1 and "can run code" in refused.stderr
    assert not (tmp_path / "models" / "org--pickled" / "pytorch_model.bin").exists()
    assert localchat(hub, tmp_path, "pull", "org/pickled", "--allow-pickle").returncode == 0
    assert (tmp_path / "models" / "org--pickled" / "pytorch_model.bin").exists()


def test_updates_are_found_and_a_model_can_be_deleted(hub: HubServer, tmp_path: Path) -> None:
    assert localchat(hub, tmp_path, "pull", "org/tiny").returncode == 0
    assert "up to date" in localchat(hub, tmp_path, "models", "--check-updates").stdout
    hub.repos["org/tiny"].sha = "b" * 40  # a new commit on the Hub
    assert "update: bbbbbbbb" in localchat(hub, tmp_path, "models", "--check-updates").stdout
    assert localchat(hub, tmp_path, "pull", "org/tiny").returncode == 0
    assert "up to date" in localchat(hub, tmp_path, "models", "--check-updates").stdout
    deleted = localchat(hub, tmp_path, "models", "--delete", "org--tiny")
    assert deleted.returncode == 0 and "freed" in deleted.stdout
    assert not (tmp_path / "models" / "org--tiny").exists()
    assert localchat(hub, tmp_path, "models", "--delete", "../..").returncode == 1


def test_the_catalog_estimates_match_the_known_sizes() -> None:
    from localchat.weights.catalog import CATALOG

    known = {  # parameters, from the model cards
        "HuggingFaceTB/SmolLM2-360M-Instruct": 0.362e9,
        "Qwen/Qwen2.5-0.5B-Instruct": 0.494e9,
        "Qwen/Qwen2.5-1.5B-Instruct": 1.54e9,
        "HuggingFaceTB/SmolLM2-1.7B-Instruct": 1.71e9,
        "Qwen/Qwen2.5-3B-Instruct": 3.09e9,
        "Qwen/Qwen2.5-7B-Instruct": 7.61e9,
    }
    for model in CATALOG:
        assert abs(model.counts().total - known[model.repo_id]) / known[model.repo_id] < 0.02, model.repo_id
    big = next(m for m in CATALOG if m.repo_id == "Qwen/Qwen2.5-7B-Instruct")
    assert big.report("cpu", 12 * 2**30).best().option == "4bit"  # 12 GB free: only 4-bit fits
    assert big.report("cpu", 8 * 2**30).best() is None


def test_downloading_from_the_page_is_for_admins_and_shows_progress(
    hub: HubServer, tmp_path: Path, monkeypatch
) -> None:
    from types import SimpleNamespace

    import gradio as gr
    from fakes import FAST_HASHER

    from localchat.household import Household
    from localchat.store import Store
    from localchat.ui.downloads import Downloads

    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    household = Household(Store(tmp_path / "db.sqlite"), listen=True, hasher=FAST_HASHER)
    ann = household.add_member("Ann", "ann-password", "admin")
    bob = household.add_member("Bob", "bob-password", "member")
    from localchat.hardware import detect

    downloads = Downloads(household, tmp_path / "models", detect)
    with pytest.raises(gr.Error):
        list(downloads.download("org/tiny", False, SimpleNamespace(username=str(bob.id))))
    lines = list(downloads.download("org/tiny", False, SimpleNamespace(username=str(ann.id))))
    assert lines[-1].startswith("✓ Downloaded org/tiny")
    text, _ = downloads.downloaded(SimpleNamespace(username=str(ann.id)))
    assert "org--tiny" in text and "org/tiny@aaaaaaaa" in text
    assert "- `Qwen/Qwen2.5-0.5B-Instruct`:" in downloads.catalog() and "fits here" in downloads.catalog()
    assert downloads.check_updates("org--tiny", SimpleNamespace(username=str(ann.id))) == "Up to date"
    assert downloads.delete("org--tiny", SimpleNamespace(username=str(ann.id))).startswith("✓ Deleted")
