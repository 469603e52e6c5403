"""The Documents panel in the Settings sidebar: the member's private library (add files by drag and
drop or the phone's file picker, their status, delete one, the quota, a progress bar while
indexing) and the household libraries they may use (read-only); admins also get ui.library_admin.

Invariants: every handler takes the member from the request's session and reaches libraries only
through the LibraryService, which checks access (an id from the page is never trusted alone); files
go to our own route (web.documents), never through Gradio's shared upload cache; names from files
are shown as text, never as HTML. Without a library service the panel stays hidden.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence

import gradio as gr

from localchat.household import Household
from localchat.library.types import DocumentInfo, IndexProgress, LibraryError, LibraryInfo, LibraryService
from localchat.store import Member, NotFound
from localchat.ui.markdown import safe_markdown
from localchat.ui.members import member_of

ACCEPT = ".pdf,.docx,.md,.markdown,.txt,.html,.htm,.epub"
POLL_SECONDS = 1.0
STATUS = {"queued": "waiting to be read", "indexing": "being read…", "ready": "ready"}

# The drop zone: a label around a file input (a tap opens the phone's picker; Tab reaches it), and
# the element itself takes dropped files. `${value}` is the target library: "mine" or a library id.
DROP_TEMPLATE = f"""<div class="lc-drop" data-library="${{value}}">
<label class="lc-drop-zone"><span class="lc-drop-title">Drop files here, or <u>choose files</u></span>
<span class="lc-drop-kinds">PDF, Word (.docx), Markdown, text, HTML, EPUB</span>
<input type="file" multiple accept="{ACCEPT}" aria-label="Add documents"></label>
<div class="lc-drop-status" role="status" aria-live="polite"></div></div>"""
DROP_CSS = """
.lc-drop-zone { display: flex; flex-direction: column; align-items: center; gap: 4px; padding: 18px 8px;
  border: 2px dashed var(--border-color-primary); border-radius: 8px; cursor: pointer; text-align: center; }
.lc-drop-zone:hover, .lc-over .lc-drop-zone { border-color: var(--color-accent);
  background: var(--background-fill-secondary); }
.lc-drop-zone:focus-within { outline: 2px solid var(--color-accent); outline-offset: 2px; }
.lc-drop-kinds { font-size: 0.8em; color: var(--body-text-color-subdued); }
.lc-drop-zone input { position: absolute; opacity: 0; width: 1px; height: 1px; }
.lc-drop-status { white-space: pre-line; font-size: 0.9em; margin-top: 4px; }
"""
PROGRESS_CSS = """
progress { width: 100%; height: 10px; accent-color: var(--color-accent); display: block; margin-bottom: 4px; }
"""
# Each file is posted on its own (one failure loses nothing else); then `submit` refreshes the lists.
DROP_JS = """
const send = async (files) => {
  if (!files.length) return;
  const box = element.querySelector('.lc-drop');
  const status = element.querySelector('.lc-drop-status');
  const lines = [];
  for (const f of files) {
    status.textContent = lines.concat('Adding ' + f.name + '…').join('\\n');
    try {
      const r = await fetch('/documents/files?library=' + encodeURIComponent(box.dataset.library)
        + '&name=' + encodeURIComponent(f.name),
        {method: 'POST', body: f, headers: {'Content-Type': 'application/octet-stream'}});
      const j = await r.json().catch(() => ({error: {message: f.name + ': the server answered ' + r.status}}));
      lines.push(j.error ? '⚠ ' + j.error.message : '✓ Added ' + j.document.name);
    } catch (e) {
      lines.push('⚠ ' + f.name + ': not sent (' + e + ')');
    }
    status.textContent = lines.join('\\n');
    trigger('submit');
  }
};
element.addEventListener('change', (e) => {
  if (e.target.type === 'file') { const files = [...e.target.files]; e.target.value = ''; send(files); }
});
element.addEventListener('dragover', (e) => { e.preventDefault(); element.classList.add('lc-over'); });
element.addEventListener('dragleave', () => element.classList.remove('lc-over'));
element.addEventListener('drop', (e) => {
  e.preventDefault(); element.classList.remove('lc-over'); send([...e.dataTransfer.files]);
});
"""


def drop_zone(target: str, elem_id: str) -> gr.HTML:
    return gr.HTML(
        target, html_template=DROP_TEMPLATE, css_template=DROP_CSS, js_on_load=DROP_JS, elem_id=elem_id, padding=False
    )


def size_text(size: float) -> str:
    """Sizes as the library service words them (1 MB = 1024 KB), so a limit reads the same everywhere."""
    for unit in ("bytes", "KB", "MB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "bytes" or size >= 10 else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB" if size < 10 else f"{size:.0f} GB"


def quota_text(used: int, limit: int | None) -> str:
    if limit is None:
        return f"{size_text(used)} used (no limit)"
    return f"{size_text(used)} of {size_text(limit)} used"


def file_label(doc: DocumentInfo) -> str:
    if doc.status == "failed":
        return f"{doc.name} · could not be read: {doc.error or 'unknown reason'}"
    return f"{doc.name} · {size_text(doc.size_bytes)} · {STATUS.get(doc.status, doc.status)}"


def file_choices(docs: Sequence[DocumentInfo]) -> list[tuple[str, int]]:
    return [(file_label(d), d.id) for d in docs]


def progress_html(progress: IndexProgress | None) -> str:
    """A progress bar while a round of indexing runs; one line once it has finished."""
    if progress is None or progress.total == 0:
        return ""
    if not progress.finished:
        now = f": {html.escape(progress.current)}" if progress.current else ""
        return (
            f'<div class="lc-docs-progress"><progress value="{progress.done}" max="{progress.total}"></progress> '
            f"<span>Reading file {min(progress.done + 1, progress.total)} of {progress.total}{now}</span></div>"
        )
    failed = len(progress.errors)
    ready = progress.total - failed
    line = f"✓ {ready} file{'s' * (ready != 1)} ready to use in chats"
    if failed:
        line += f"; {failed} could not be read"
    return f'<div class="lc-docs-progress lc-docs-done">{html.escape(line)}</div>'


def library_summary(docs: Sequence[DocumentInfo]) -> str:
    """One library's files as plain HTML lines, every name escaped."""
    if not docs:
        return "<em>no files yet</em>"
    return "<br>".join(html.escape(file_label(d)) for d in docs)


def selected(choices: Sequence[tuple[str, int]], value) -> int | None:
    """The page's selection, kept only while it names a file still listed."""
    ids = {c[1] for c in choices}
    try:
        return int(value) if value is not None and int(value) in ids else None
    except (TypeError, ValueError):
        return None


class Documents:
    def __init__(self, household: Household, libraries: Callable[[], LibraryService | None]):
        self.household = household
        self.libraries = libraries  # read at every event: the service may be wired after the page is built

    def _service(self) -> LibraryService:
        service = self.libraries()
        if service is None:
            raise gr.Error("Documents are not turned on on this server.")
        return service

    def _mine(self, service: LibraryService, member: Member) -> tuple[LibraryInfo, list[LibraryInfo]]:
        libraries = service.visible(member)
        mine = next(lib for lib in libraries if lib.owner_id == member.id)
        return mine, [lib for lib in libraries if lib.household]

    def refresh(self, chosen, request: gr.Request) -> tuple:
        """-> quota line, my files, progress, household libraries, timer (runs only while indexing), delete."""
        member = member_of(self.household, request)
        service = self.libraries()
        if service is None:  # the panel is hidden
            return (gr.skip(),) * 6
        mine, shared = self._mine(service, member)
        docs = service.documents(member, mine.id)
        progress = service.progress(member, mine.id)
        choices = file_choices(docs)
        busy = any(d.status in ("queued", "indexing") for d in docs) or (progress is not None and not progress.finished)
        empty = "" if docs else " No files yet: add some and ask about them in any chat."
        return (
            f"**My documents**: only you can use them. {quota_text(*service.quota(member))}.{empty}",
            gr.Radio(choices=choices, value=selected(choices, chosen), visible=bool(docs)),
            progress_html(progress),
            self._shared_html(service, member, shared),
            gr.Timer(active=busy),
            gr.Button(visible=bool(docs)),
        )

    def _shared_html(self, service: LibraryService, member: Member, shared: Sequence[LibraryInfo]) -> str:
        if not shared:
            return ""
        parts = ["<h4>Household libraries you can use</h4>"]
        for lib in shared:
            try:
                docs = service.documents(member, lib.id)
            except NotFound:  # its access changed since visible() answered
                continue
            parts.append(f"<p><strong>{html.escape(lib.name)}</strong><br>{library_summary(docs)}</p>")
        return "".join(parts)

    def delete(self, document_id, chosen, request: gr.Request) -> tuple:
        """Delete one of the member's own files -> result line, then the refresh's outputs."""
        member = member_of(self.household, request)
        service = self._service()
        if document_id is None:
            return "Pick a file first.", *self.refresh(chosen, request)
        mine, _ = self._mine(service, member)
        name = next((d.name for d in service.documents(member, mine.id) if d.id == int(document_id)), None)
        try:
            service.delete_document(member, mine.id, int(document_id))
        except (NotFound, LibraryError, ValueError) as exc:
            return f"⚠ {safe_markdown(str(exc))}", *self.refresh(None, request)
        return f"✓ Deleted {safe_markdown(name or 'the file')}.", *self.refresh(None, request)

    def visibility(self, request: gr.Request) -> tuple:
        """-> the Documents accordion (hidden without a service), the admin part (admins only)."""
        member = member_of(self.household, request)
        on = self.libraries() is not None
        return gr.Accordion(visible=on), gr.Accordion(visible=on and member.is_admin)

    def build(self) -> dict:
        """Lay out the member's part inside the Accordion the layout makes; returns the load-event
        arguments that fill it (and refresh it after every upload)."""
        quota = gr.Markdown("", elem_id="lc-docs-quota")
        drop = drop_zone("mine", "lc-docs-drop")
        progress = gr.HTML("", css_template=PROGRESS_CSS, elem_id="lc-docs-progress", padding=False)
        files = gr.Radio([], label="My files", visible=False, elem_id="lc-docs-files")
        delete = gr.Button("Delete this file", size="sm", variant="stop", visible=False, elem_id="lc-docs-delete")
        result = gr.Markdown("", elem_id="lc-docs-result")
        shared = gr.HTML("", elem_id="lc-docs-shared", padding=False)
        timer = gr.Timer(POLL_SECONDS, active=False)
        q = {"queue": False, "api_visibility": "private"}
        outputs = [quota, files, progress, shared, timer, delete]
        refresh = {"fn": self.refresh, "inputs": [files], "outputs": outputs, "api_name": "documents_refresh", **q}
        drop.submit(**refresh)
        timer.tick(**refresh)
        delete.click(
            self.delete,
            [files, files],
            [result, *outputs],
            js="(id, c) => { if (id == null) return [id, c]; "
            "if (!confirm('Delete this file? The assistant will no longer use it.')) throw 'kept'; return [id, c]; }",
            api_name="documents_delete",
            **q,
        )
        return refresh
