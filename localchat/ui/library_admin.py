"""Household libraries and document quotas, for admins, inside the Documents panel: create a library
(name, who may use it, an optional folder on this machine), add and delete its files, change who
may use it, delete it; set a member's document quota.

Invariant: every handler checks on the server that the member of the request is an admin, and the
library service checks again; hiding this part from members is a convenience, not the protection.
"""

from __future__ import annotations

from collections.abc import Callable

import gradio as gr

from localchat.household import AccessDenied, Household
from localchat.library.types import LibraryError, LibraryInfo, LibraryService
from localchat.store import Member, NotFound
from localchat.ui.documents import (
    POLL_SECONDS,
    PROGRESS_CSS,
    drop_zone,
    file_choices,
    progress_html,
    quota_text,
    selected,
)
from localchat.ui.markdown import safe_markdown
from localchat.ui.members import member_of

NEW = 0  # the library picker's "new library" entry
NO_TARGET = ""  # the household drop zone before a library is picked
MB = 1 << 20


class LibraryAdmin:
    def __init__(self, household: Household, libraries: Callable[[], LibraryService | None]):
        self.household = household
        self.libraries = libraries

    def _admin(self, request: gr.Request) -> tuple[Member, LibraryService]:
        try:
            admin = self.household.require_admin(member_of(self.household, request))
        except AccessDenied as exc:
            raise gr.Error(str(exc)) from None
        service = self.libraries()
        if service is None:
            raise gr.Error("Documents are not turned on on this server.")
        return admin, service

    def _members(self) -> list[tuple[str, int]]:
        return [(m.name, m.id) for m in self.household.store.members() if not m.builtin]

    def _household(self, admin: Member, service: LibraryService) -> list[LibraryInfo]:
        return [lib for lib in service.visible(admin) if lib.household]

    def _picker(self, admin: Member, service: LibraryService, value: int = NEW) -> gr.Dropdown:
        choices = [("New library…", NEW), *((lib.name, lib.id) for lib in self._household(admin, service))]
        return gr.Dropdown(choices=choices, value=value)

    def refresh(self, request: gr.Request) -> tuple:
        """-> library picker, members to choose from, quota member picker (for admins; else unchanged)."""
        member = member_of(self.household, request)
        if not member.is_admin or self.libraries() is None:  # the part is hidden
            return gr.skip(), gr.skip(), gr.skip()
        admin, service = self._admin(request)
        members = self._members()
        return self._picker(admin, service), gr.CheckboxGroup(choices=members), gr.Dropdown(choices=members, value=None)

    def _library(self, admin: Member, service: LibraryService, library_id) -> LibraryInfo | None:
        try:
            wanted = int(library_id or NEW)
        except (TypeError, ValueError):
            return None
        return next((lib for lib in self._household(admin, service) if lib.id == wanted), None)

    def pick(self, library_id, chosen, request: gr.Request) -> tuple:
        """Fill the form with the picked library -> name, everyone, members, folder, button, its part, and files."""
        admin, service = self._admin(request)
        lib = self._library(admin, service, library_id)
        if lib is None:
            return (
                "",
                True,
                [],
                "",
                gr.Button(value="Create library"),
                gr.Column(visible=False),
                *self.files(NEW, None, request),
            )
        return (
            lib.name,
            lib.members is None,
            list(lib.members or []),
            lib.folder,
            gr.Button(value="Save changes"),
            gr.Column(visible=True),
            *self.files(lib.id, chosen, request),
        )

    def files(self, library_id, chosen, request: gr.Request) -> tuple:
        """-> the drop zone's target, the library's files, its progress, the timer."""
        admin, service = self._admin(request)
        lib = self._library(admin, service, library_id)
        if lib is None:
            return NO_TARGET, gr.Radio(choices=[], value=None), "", gr.Timer(active=False)
        docs = service.documents(admin, lib.id)
        progress = service.progress(admin, lib.id)
        choices = file_choices(docs)
        busy = any(d.status in ("queued", "indexing") for d in docs) or (progress is not None and not progress.finished)
        return (
            str(lib.id),
            gr.Radio(choices=choices, value=selected(choices, chosen)),
            progress_html(progress),
            (gr.Timer(active=busy)),
        )

    def save(self, library_id, name: str, everyone: bool, members: list, folder: str, request: gr.Request) -> tuple:
        """Create a library or change the picked one -> result line, picker."""
        admin, service = self._admin(request)
        who = None if everyone else [int(m) for m in members or []]
        if not everyone and not who:
            return "⚠ Choose who may use it (or everyone).", gr.skip()
        lib = self._library(admin, service, library_id)
        folder = (folder or "").strip()
        try:
            if lib is None:
                lib = service.create_household(admin, (name or "").strip(), who, folder)
                told = f"✓ Created {safe_markdown(lib.name)}. Add its files below."
            else:  # an unchanged folder is not checked again: a drive unplugged for now still saves the rest
                same = None if folder == lib.folder else folder
                lib = service.update_household(admin, lib.id, name=name, members=who, folder=same)
                told = f"✓ Saved {safe_markdown(lib.name)}."
        except (LibraryError, NotFound, ValueError) as exc:
            return f"⚠ {safe_markdown(str(exc))}", gr.skip()
        return told, self._picker(admin, service, lib.id)

    def delete_file(self, library_id, document_id, request: gr.Request) -> tuple:
        admin, service = self._admin(request)
        lib = self._library(admin, service, library_id)
        if lib is None or document_id is None:
            return "Pick a file first.", *self.files(library_id, None, request)
        try:
            service.delete_document(admin, lib.id, int(document_id))
        except (LibraryError, NotFound, ValueError) as exc:
            return f"⚠ {safe_markdown(str(exc))}", *self.files(library_id, None, request)
        return "✓ Deleted the file.", *self.files(library_id, None, request)

    def delete_library(self, library_id, request: gr.Request) -> tuple:
        admin, service = self._admin(request)
        lib = self._library(admin, service, library_id)
        if lib is None:
            return "Pick a library first.", gr.skip()
        try:
            service.delete_library(admin, lib.id)
        except (LibraryError, NotFound) as exc:
            return f"⚠ {safe_markdown(str(exc))}", gr.skip()
        return f"✓ Deleted {safe_markdown(lib.name)} and its files.", self._picker(admin, service)

    def show_quota(self, member_id, request: gr.Request) -> tuple:
        """A member picked -> their usage line and current limit in MB (0: no limit)."""
        _, service = self._admin(request)
        member = self.household.store.member(int(member_id)) if member_id is not None else None
        if member is None or member.builtin:
            return "", gr.skip()
        used, limit = service.quota(member)
        return f"{safe_markdown(member.name)}: {quota_text(used, limit)}.", 0 if limit is None else round(limit / MB, 1)

    def set_quota(self, member_id, megabytes, request: gr.Request) -> str:
        admin, service = self._admin(request)
        member = self.household.store.member(int(member_id)) if member_id is not None else None
        if member is None or member.builtin:
            return "⚠ Pick a household member first."
        if megabytes is None or megabytes < 0:
            return "⚠ The limit is a number of MB (0 for no limit)."
        limit = None if megabytes == 0 else int(megabytes * MB)
        try:
            service.set_quota(admin, member.id, limit)
        except (LibraryError, NotFound) as exc:
            return f"⚠ {safe_markdown(str(exc))}"
        return f"✓ {safe_markdown(member.name)}: {quota_text(service.quota(member)[0], limit)}."

    def build(self) -> dict:
        """Lay out the admin part inside an Accordion the layout makes; returns the event arguments
        that fill it (run when the page loads, for admins)."""
        picker = gr.Dropdown([("New library…", NEW)], value=NEW, label="Household library", elem_id="lc-lib-pick")
        name = gr.Textbox(label="Name", placeholder="e.g. Appliance manuals", max_lines=1, elem_id="lc-lib-name")
        everyone = gr.Checkbox(True, label="Everyone in the household may use it", elem_id="lc-lib-everyone")
        members = gr.CheckboxGroup([], label="Or only these members", elem_id="lc-lib-members")
        folder = gr.Textbox(
            label="Folder on this machine (optional)",
            info="Its files are added, and read again whenever they change",
            max_lines=1,
            elem_id="lc-lib-folder",
        )
        save = gr.Button("Create library", variant="primary", size="sm", elem_id="lc-lib-save")
        result = gr.Markdown("", elem_id="lc-lib-result")
        with gr.Column(visible=False) as existing:
            drop = drop_zone(NO_TARGET, "lc-lib-drop")
            progress = gr.HTML("", css_template=PROGRESS_CSS, elem_id="lc-lib-progress", padding=False)
            files = gr.Radio([], label="Its files", elem_id="lc-lib-files")
            with gr.Row():
                delete_file = gr.Button("Delete this file", size="sm", variant="stop", elem_id="lc-lib-delete-file")
                delete_library = gr.Button("Delete library", size="sm", variant="stop", elem_id="lc-lib-delete")
        gr.Markdown("**Document limits**: how much each member may keep in *My documents*.")
        whose = gr.Dropdown([], label="Member", elem_id="lc-quota-member")
        usage = gr.Markdown("", elem_id="lc-quota-usage")
        limit = gr.Number(0, label="Limit in MB (0 = no limit)", minimum=0, elem_id="lc-quota-limit")
        set_limit = gr.Button("Set limit", size="sm", elem_id="lc-quota-set")
        timer = gr.Timer(POLL_SECONDS, active=False)
        q = {"queue": False, "api_visibility": "private"}
        listed = [drop, files, progress, timer]
        picked = [name, everyone, members, folder, save, existing, *listed]
        picker.input(self.pick, [picker, files], picked, **q, api_name="library_pick")
        save.click(
            self.save, [picker, name, everyone, members, folder], [result, picker], **q, api_name="library_save"
        ).then(self.pick, [picker, files], picked, **q, api_name="library_pick")
        again = {"fn": self.files, "inputs": [picker, files], "outputs": listed, "api_name": "library_files", **q}
        drop.submit(**again)
        timer.tick(**again)
        delete_file.click(
            self.delete_file,
            [picker, files],
            [result, *listed],
            js="(l, id) => { if (id == null) return [l, id]; "
            "if (!confirm('Delete this file from the household library?')) throw 'kept'; return [l, id]; }",
            api_name="library_delete_file",
            **q,
        )
        delete_library.click(
            self.delete_library,
            [picker],
            [result, picker],
            js="(l) => { if (!confirm('Delete this library and all its files?')) throw 'kept'; return [l]; }",
            api_name="library_delete",
            **q,
        ).then(self.pick, [picker, files], picked, **q, api_name="library_pick")
        whose.input(self.show_quota, [whose], [usage, limit], **q, api_name="library_show_quota")
        set_limit.click(self.set_quota, [whose, limit], [usage], **q, api_name="library_set_quota")
        return {
            "fn": self.refresh,
            "inputs": None,
            "outputs": [picker, members, whose],
            "api_name": "library_refresh",
            **q,
        }
