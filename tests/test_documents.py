"""The Documents panel without a browser: the upload route through the real app on a loopback port
(real HTTP, the Guard, sessions, a real SQLite file) over an in-memory library service, and the
panel's handlers called as Gradio calls them, each with the member of its request."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import httpx
import pytest
from conftest import ServedApp, serve, sign_in
from fake_library_ui import FakeLibraries

from localchat.household import SESSION_COOKIE
from localchat.library.types import DocumentInfo, IndexProgress
from localchat.ui.documents import file_label, progress_html, quota_text
from localchat.web import documents as documents_route
from localchat.web.documents import file_name


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> Iterator[ServedApp]:
    data = tmp_path_factory.mktemp("documents")
    served = serve(data, members={"Ann": "admin", "Bob": "member", "Cy": "member"})
    served.app.ui.libraries = FakeLibraries(data)
    yield served
    served.stop()


@pytest.fixture(scope="module")
def cookies(app) -> dict[str, dict[str, str]]:
    return {name: {SESSION_COOKIE: sign_in(app.url, name)} for name in ("Ann", "Bob", "Cy")}


def member(app, name: str):
    return app.app.household.store.member_by_name(name)


def request(app, name: str) -> SimpleNamespace:
    """What a Gradio handler reads of its request: the member key the web layer attached."""
    return SimpleNamespace(username=str(member(app, name).id))


def post(app, cookie, body: bytes, name: str, library: str = "mine", **headers) -> httpx.Response:
    return httpx.post(
        app.url + "/documents/files",
        params={"library": library, "name": name},
        content=body,
        cookies=cookie,
        headers={"Content-Type": "application/octet-stream", **headers},
    )


def uploads(app) -> list[str]:
    folder = app.app.ui.libraries.data.parent / "tmp" / "uploads"
    return sorted(os.listdir(folder)) if folder.exists() else []


def names(app, who: str, library_id: int | None = None) -> list[str]:
    service = app.app.ui.libraries
    m = member(app, who)
    lib = library_id or next(lib.id for lib in service.visible(m) if lib.owner_id == m.id)
    return [d.name for d in service.documents(m, lib)]


def test_a_file_posted_from_the_page_lands_in_the_members_library_and_nowhere_else(app, cookies) -> None:
    r = post(app, cookies["Bob"], b"# Boiler\nReset: hold the red button for 5 seconds.", "boiler.md")
    assert r.status_code == 200, r.text
    assert r.json()["document"]["name"] == "boiler.md"
    assert "boiler.md" in names(app, "Bob")
    assert "boiler.md" not in names(app, "Cy")
    assert uploads(app) == []  # the temporary copy is gone; the service keeps its own
    stored = [p for p in app.app.ui.libraries.data.rglob("*boiler.md")]
    assert len(stored) == 1 and stored[0].stat().st_mode & 0o777 == 0o600


def test_a_refused_file_says_why_in_one_line_and_adds_nothing(app, cookies) -> None:
    r = post(app, cookies["Bob"], b"MZ...", "setup.exe")
    assert r.status_code == 400
    assert "setup.exe" in r.json()["error"]["message"] and "\n" not in r.json()["error"]["message"]
    assert "setup.exe" not in names(app, "Bob")
    assert post(app, cookies["Bob"], b"", "empty.txt").json()["error"]["message"] == "empty.txt is empty"
    assert uploads(app) == []


def test_the_quota_is_kept_and_the_error_names_the_limit(app, cookies) -> None:
    service, ann = app.app.ui.libraries, member(app, "Ann")
    service.set_quota(ann, member(app, "Cy").id, 1000)
    try:
        r = post(app, cookies["Cy"], b"x" * 1500, "big.txt")
        assert r.status_code == 413
        assert "limit" in r.json()["error"]["message"]
        assert names(app, "Cy") == []
        assert post(app, cookies["Cy"], b"x" * 600, "a.txt").status_code == 200
        r = post(app, cookies["Cy"], b"x" * 600, "b.txt")  # within the limit alone, past it with a.txt
        assert r.status_code == 413 and names(app, "Cy") == ["a.txt"]
    finally:
        service.set_quota(ann, member(app, "Cy").id, None)
    assert uploads(app) == []


def test_a_body_without_a_length_is_cut_off_at_the_quota_while_it_streams(app, cookies, monkeypatch) -> None:
    service, ann, cy = app.app.ui.libraries, member(app, "Ann"), member(app, "Cy")
    given: list[int] = []
    add_file = service.add_file
    monkeypatch.setattr(service, "add_file", lambda *a: given.append(a[3].stat().st_size) or add_file(*a))

    def body(size: int) -> Iterator[bytes]:  # chunked: no Content-Length to check before reading
        for _ in range(size // 1000):
            yield b"x" * 1000

    service.set_quota(ann, cy.id, service.quota(cy)[0] + 5000)
    before = names(app, "Cy")
    try:
        r = post(app, cookies["Cy"], body(20_000), "stream.txt")  # type: ignore[arg-type]
        assert r.status_code == 413 and "limit" in r.json()["error"]["message"], r.text
        assert given == [] and names(app, "Cy") == before  # never handed to the service, never written whole
        r = post(app, cookies["Cy"], body(3000), "fits.txt")  # type: ignore[arg-type]
        assert r.status_code == 200 and given == [3000] and names(app, "Cy") == sorted([*before, "fits.txt"])
    finally:
        service.set_quota(ann, cy.id, None)
    mine = service.visible(cy)[0].id
    service.delete_document(cy, mine, next(d.id for d in service.documents(cy, mine) if d.name == "fits.txt"))
    assert uploads(app) == []
    assert documents_route.MAX_FILE_BYTES <= 256 << 20  # one file is never a gigabyte in the server's tmp


def test_no_member_adds_to_a_library_that_is_not_theirs(app, cookies) -> None:
    service, ann = app.app.ui.libraries, member(app, "Ann")
    kitchen = service.create_household(ann, "Kitchen", [member(app, "Bob").id])
    anns = next(lib.id for lib in service.visible(ann) if lib.owner_id == ann.id)
    assert post(app, cookies["Bob"], b"hello", "note.txt", str(anns)).status_code == 404  # Ann's private one
    assert post(app, cookies["Cy"], b"hello", "note.txt", str(kitchen.id)).status_code == 404  # not shared with Cy
    assert post(app, cookies["Bob"], b"hello", "note.txt", str(kitchen.id)).status_code == 400  # admins add files
    assert post(app, cookies["Bob"], b"hello", "note.txt", "not-a-number").status_code == 404
    assert "note.txt" not in names(app, "Ann", anns)
    assert post(app, cookies["Ann"], b"Oven manual", "oven.txt", str(kitchen.id)).status_code == 200
    assert names(app, "Bob", kitchen.id) == ["oven.txt"]
    assert uploads(app) == []


def test_without_a_session_or_from_another_site_nothing_is_accepted(app, cookies) -> None:
    assert post(app, None, b"hello", "x.txt").status_code == 401
    r = post(app, cookies["Bob"], b"hello", "x.txt", Origin="http://evil.example")
    assert r.status_code == 403
    assert "x.txt" not in names(app, "Bob")


def test_file_names_keep_only_their_last_part() -> None:
    assert file_name("../../etc/passwd") == "passwd"
    assert file_name("C:\\Users\\ann\\Recipes.docx") == "Recipes.docx"
    assert file_name("two\nlines.txt") == "two lines.txt"
    assert file_name("") == "document"


def test_lines_the_panel_shows() -> None:
    assert quota_text(12 * 2**20, 100 * 2**20) == "12 MB of 100 MB used"
    assert quota_text(1536, 5 * 2**20) == "1.5 KB of 5.0 MB used"
    assert quota_text(0, None) == "0 bytes used (no limit)"
    failed = DocumentInfo(1, 1, "scan.pdf", 10, "failed", "the PDF is encrypted")
    assert file_label(failed) == "scan.pdf · could not be read: the PDF is encrypted"
    running = progress_html(IndexProgress(1, 1, 3, "<b>x</b>.pdf"))
    assert '<progress value="1" max="3">' in running and "&lt;b&gt;" in running and "<b>" not in running
    assert "2 files ready" in progress_html(IndexProgress(1, 3, 3, errors=("a: bad",))) and "1 could not" in (
        progress_html(IndexProgress(1, 3, 3, errors=("a: bad",)))
    )
    assert progress_html(None) == ""


def test_handlers_act_only_for_the_member_of_the_request(app) -> None:
    ui, service = app.app.ui, app.app.ui.libraries
    bob = member(app, "Bob")
    post_id = service.add_file(bob, service.visible(bob)[0].id, "diary.txt", _tmp(app, b"Bob's diary"))
    quota, files, *_ = ui.documents.refresh(None, request(app, "Cy"))
    assert "diary" not in str(files.choices)
    result, *_ = ui.documents.delete(post_id.id, None, request(app, "Cy"))  # Bob's file id, from Cy's page
    assert result.startswith("⚠")
    assert "diary.txt" in names(app, "Bob")
    with pytest.raises(gr.Error):
        ui.library_admin.save(0, "Bob's library", True, [], "", request(app, "Bob"))
    with pytest.raises(gr.Error):
        ui.library_admin.set_quota(bob.id, 0, request(app, "Bob"))
    _, files, *_ = ui.documents.refresh(None, request(app, "Bob"))
    assert any("diary.txt" in label for label, _ in files.choices)
    result, *_ = ui.documents.delete(post_id.id, post_id.id, request(app, "Bob"))
    assert result.startswith("✓") and "diary.txt" not in names(app, "Bob")


def test_an_admin_shares_a_library_with_chosen_members_only(app) -> None:
    ui, service = app.app.ui, app.app.ui.libraries
    bob, cy = member(app, "Bob"), member(app, "Cy")
    told, picker = ui.library_admin.save(0, "School calendar", False, [cy.id], "", request(app, "Ann"))
    assert told.startswith("✓ Created")
    school = picker.value
    assert "School calendar" in ui.documents.refresh(None, request(app, "Cy"))[3]
    assert "School calendar" not in ui.documents.refresh(None, request(app, "Bob"))[3]
    assert all(lib.name != "School calendar" for lib in service.visible(bob))
    told, _ = ui.library_admin.save(school, "School calendar", True, [], "", request(app, "Ann"))
    assert "School calendar" in ui.documents.refresh(None, request(app, "Bob"))[3]  # now everyone's
    told, _ = ui.library_admin.delete_library(school, request(app, "Ann"))
    assert told.startswith("✓") and "School calendar" not in ui.documents.refresh(None, request(app, "Cy"))[3]


def test_saving_who_may_use_a_folder_library_does_not_check_its_folder_again(app, tmp_path: Path) -> None:
    ui, cy = app.app.ui, member(app, "Cy")
    drive = tmp_path / "usb-drive"
    drive.mkdir()
    told, picker = ui.library_admin.save(0, "Photos", True, [], str(drive), request(app, "Ann"))
    assert told.startswith("✓ Created"), told
    drive.rmdir()  # the drive is unplugged for now
    told, _ = ui.library_admin.save(picker.value, "Photos", False, [cy.id], str(drive), request(app, "Ann"))
    assert told == "✓ Saved Photos.", told
    assert "Photos" in ui.documents.refresh(None, request(app, "Cy"))[3]
    assert "Photos" not in ui.documents.refresh(None, request(app, "Bob"))[3]
    told, _ = ui.library_admin.save(picker.value, "Photos", True, [], str(tmp_path / "elsewhere"), request(app, "Ann"))
    assert told.startswith("⚠")  # a folder that is changed is checked
    ui.library_admin.delete_library(picker.value, request(app, "Ann"))


def test_an_admin_sets_and_lifts_a_members_limit(app) -> None:
    ui, cy = app.app.ui, member(app, "Cy")
    assert ui.library_admin.set_quota(cy.id, 5, request(app, "Ann")).endswith("of 5.0 MB used.")
    assert app.app.ui.libraries.quota(cy)[1] == 5 * 2**20
    assert "of 5.0 MB used" in ui.documents.refresh(None, request(app, "Cy"))[0]
    assert ui.library_admin.set_quota(cy.id, 0, request(app, "Ann")).endswith("(no limit).")
    assert app.app.ui.libraries.quota(cy)[1] is None


def _tmp(app, body: bytes) -> Path:
    path = app.app.ui.libraries.data.parent / "scratch.txt"
    path.write_bytes(body)
    return path
