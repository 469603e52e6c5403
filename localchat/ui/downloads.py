"""Getting more models (admins): the curated catalog with what fits this machine, downloading a
Hub id with progress, and the downloaded models with their disk use, updates and deletion.

Invariant: every handler that acts on or tells about the server's model folder checks on the
server that the member of the request may load models; the page hiding it is only a convenience.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import gradio as gr

from localchat.hardware import Hardware, gib
from localchat.household import Household
from localchat.ui.members import member_of
from localchat.weights import hub
from localchat.weights.catalog import CATALOG

LABELS = {"float32": "fp32", "bfloat16": "bf16", "8bit": "8-bit", "4bit": "4-bit"}


class Downloads:
    def __init__(self, household: Household, models_dir: Path, hardware: Callable[[], Hardware]):
        self.household = household
        self.models_dir = models_dir
        self.hardware = hardware  # as the engine sees it (the GPUs are the engine's)

    def _admin(self, request: gr.Request) -> None:
        if not self.household.may_load_models(member_of(self.household, request)):
            raise gr.Error("Only a household admin can download or delete models")

    def catalog(self) -> str:
        """The catalog as a table, each model with its estimated memory and a fits badge here."""
        hw = self.hardware()
        device = "cuda" if hw.gpus else "cpu"
        rows = ["Good instruct models to start with (memory: unquantized / 8-bit / 4-bit, with an 8k chat):"]
        for model in CATALOG:
            report = model.report(device, hw.free_bytes(device))
            sizes = {e.option: e.total_bytes for e in report.estimates}
            best = report.best()
            badge = f"✓ fits here ({LABELS[best.option]})" if best else "✗ too big for this machine"
            plain = sizes[report.unquantized]
            rows.append(
                f"- `{model.repo_id}`: {model.about}. {gib(plain)} / {gib(sizes['8bit'])} / "
                f"{gib(sizes['4bit'])}. **{badge}**"
            )
        return "\n".join(rows)

    def downloaded(self, request: gr.Request) -> tuple[str, gr.Dropdown]:
        """The downloaded models and the disk they use; nothing for a member who may not load models."""
        if not self.household.may_load_models(member_of(self.household, request)):
            return "", gr.Dropdown(choices=[], value=None)
        folders = sorted(f for f in self.models_dir.glob("*") if f.is_dir()) if self.models_dir.is_dir() else []
        lines, names = [], []
        for folder in folders:
            source = hub.source_of(folder)
            origin = f" · {source['repo_id']}@{source['revision'][:8]}" if source else ""
            lines.append(f"- **{folder.name}** · {gib(hub.folder_size(folder))}{origin}")
            names.append(folder.name)
        used = sum(hub.folder_size(f) for f in folders)
        from localchat.hardware import disk_free

        lines.append(f"\nTogether {gib(used)} on disk; {gib(disk_free(self.models_dir))} free there.")
        text = "\n".join(lines) if folders else "*No downloaded models yet.*"
        return text, gr.Dropdown(choices=names, value=None)

    def download(self, repo_id: str, allow_pickle: bool, request: gr.Request) -> Iterator[str]:
        self._admin(request)
        repo_id = (repo_id or "").strip()
        progress = {"done": 0, "total": 0}
        result: dict = {}

        def run() -> None:
            try:
                result["pulled"] = hub.pull(
                    repo_id,
                    self.models_dir,
                    allow_pickle=bool(allow_pickle),
                    progress=lambda done, total: progress.update(done=done, total=total),
                )
            except hub.PullError as exc:
                result["error"] = str(exc)

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(0.5)
            done, total = progress["done"], progress["total"]
            if total:
                yield f"Downloading {repo_id}: `{hub.progress_bar(done, total)}` {gib(done)} of {gib(total)}"
            else:
                yield f"Asking the Hub about {repo_id}…"
        if "error" in result:
            yield f"⚠ {result['error']}"
            return
        pulled = result["pulled"]
        yield f"✓ Downloaded {pulled.repo_id} ({gib(pulled.size_bytes)}). Pick it in the model list and press Load."

    def check_updates(self, name: str | None, request: gr.Request) -> str:
        self._admin(request)
        if not name:
            return "Pick a downloaded model first"
        try:
            newer = hub.check_update(self.models_dir / name)
        except hub.PullError as exc:
            return f"⚠ {exc}"
        source = hub.source_of(self.models_dir / name)
        if source is None:
            return f"{name} was not downloaded by localchat, so there is nothing to compare"
        return f"A newer revision ({newer[:8]}) exists: download {source['repo_id']} again" if newer else "Up to date"

    def delete(self, name: str | None, request: gr.Request) -> str:
        self._admin(request)
        if not name:
            return "Pick a downloaded model first"
        try:
            freed = hub.delete(self.models_dir / name, self.models_dir)
        except hub.PullError as exc:
            return f"⚠ {exc}"
        return f"✓ Deleted {name} ({gib(freed)} freed)"

    def build(self, after: dict) -> dict:
        """Inside the Model panel. `after`: the event that refreshes the model picker once the
        downloaded models change. Returns the event that fills the downloaded list on page load."""
        with gr.Accordion("Get more models", open=False, elem_id="lc-get-models"):
            gr.Markdown(self.catalog, elem_id="lc-catalog")
            repo = gr.Textbox(label="Hub id to download", placeholder="e.g. Qwen/Qwen2.5-1.5B-Instruct",
                              max_lines=1, elem_id="lc-pull-id")  # fmt: skip
            pickle = gr.Checkbox(False, label="Allow pickle (.bin) weights: they can run code when loaded")
            go = gr.Button("Download", size="sm", elem_id="lc-pull")
            result = gr.Markdown("", elem_id="lc-pull-result")
            listing = gr.Markdown("", elem_id="lc-downloaded")
            which = gr.Dropdown([], label="Downloaded model", elem_id="lc-downloaded-pick")
            with gr.Row():
                updates = gr.Button("Check for updates", size="sm")
                delete = gr.Button("Delete", size="sm", variant="stop")
        q = {"queue": False, "api_visibility": "private"}
        refresh = {"fn": self.downloaded, "inputs": None, "outputs": [listing, which], **q}
        go.click(self.download, [repo, pickle], [result], concurrency_limit=None, api_visibility="private").then(
            **refresh
        ).then(**after)
        updates.click(self.check_updates, [which], [result], **q)
        delete.click(
            self.delete,
            [which],
            [result],
            js="(n) => { if (!confirm('Delete ' + n + ' from this machine?')) throw 'kept'; return [n]; }",
            **q,
        ).then(**refresh).then(**after)
        return refresh
