"""The Documents panel in headless Chromium: a member adds files from a phone (the file picker),
sees them being read and then ready (or why not), deletes one, and hits their limit; an admin on a
laptop makes a household library for one member, and another member does not see it. The app is the
real one on a loopback port over a fake model and an in-memory library service (UI logic only).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import ServedApp, serve, sign_in
from fake_library_ui import FakeLibraries
from test_browser import LOCAL_HOSTS, UI_TIMEOUT, browser, expect  # noqa: F401 - fixture

from localchat.household import SESSION_COOKIE

pytestmark = [pytest.mark.browser]
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True, "device_scale_factor": 2}
DESKTOP = {"viewport": {"width": 1280, "height": 800}}


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> Iterator[ServedApp]:
    data = tmp_path_factory.mktemp("documents-web")
    served = serve(data, members={"Ann": "admin", "Bob": "member", "Cy": "member"})
    served.app.ui.libraries = FakeLibraries(data)
    yield served
    served.stop()


def open_documents(browser, app: ServedApp, name: str, options: dict):  # noqa: F811
    context = browser.new_context(**options)
    context.set_default_timeout(UI_TIMEOUT)
    context.add_cookies([{"name": SESSION_COOKIE, "value": sign_in(app.url, name), "url": app.url}])
    page = context.new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(app.url + "/")
    page.locator("#lc-input textarea").wait_for(state="visible")
    page.click("#lc-settings")
    page.locator("#lc-documents").get_by_role("button", name="Documents").first.click()
    expect(page.locator("#lc-docs-quota")).to_contain_text("My documents")
    return context, page, requests


def only_local(requests: list[str]) -> None:
    outside = sorted({u for u in requests if urlsplit(u).hostname not in LOCAL_HOSTS})
    assert not outside, outside


def gradio_cache_files(app: ServedApp) -> list[Path]:
    from gradio.utils import get_upload_folder

    folder = Path(get_upload_folder())
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def test_a_member_adds_files_from_a_phone_sees_them_read_and_deletes_one(browser, app, artifacts) -> None:  # noqa: F811
    service: FakeLibraries = app.app.ui.libraries
    before = gradio_cache_files(app)
    context, page, requests = open_documents(browser, app, "Bob", PHONE)
    try:
        service.gate.clear()  # indexing waits, so the bar can be seen
        page.locator("#lc-docs-drop input[type=file]").set_input_files(
            files=[
                {"name": "boiler.md", "mimeType": "text/markdown", "buffer": b"# Boiler\nHold red for 5 s."},
                {"name": "scan.pdf", "mimeType": "application/pdf", "buffer": b"BROKEN pdf"},
                {"name": "setup.exe", "mimeType": "application/octet-stream", "buffer": b"MZ"},
            ]
        )
        status = page.locator("#lc-docs-drop .lc-drop-status")
        expect(status).to_contain_text("✓ Added scan.pdf")
        expect(status).to_contain_text("⚠ setup.exe")  # one clear line; the other files still went in
        files = page.locator("#lc-docs-files")
        expect(files).to_contain_text("boiler.md")
        expect(files).to_contain_text("being read")
        expect(page.locator("#lc-docs-progress progress")).to_be_visible()
        page.screenshot(path=str(artifacts / "documents-phone-indexing.png"))
        service.gate.set()
        expect(page.locator("#lc-docs-progress")).to_contain_text("1 file ready to use in chats; 1 could not be read")
        expect(files).to_contain_text("boiler.md · 26 bytes · ready")
        expect(files).to_contain_text("scan.pdf · could not be read: the file is damaged")
        expect(page.locator("#lc-docs-progress progress")).to_have_count(0)
        page.screenshot(path=str(artifacts / "documents-phone-ready.png"))
        assert gradio_cache_files(app) == before  # nothing went through Gradio's shared cache
        assert not list((app.app.ui.libraries.data.parent / "tmp" / "uploads").iterdir())

        files.get_by_text("boiler.md").click()
        page.once("dialog", lambda d: d.accept())
        page.click("#lc-docs-delete")
        expect(page.locator("#lc-docs-result")).to_contain_text("Deleted boiler.md")
        expect(files).not_to_contain_text("boiler.md")
        page.once("dialog", lambda d: d.accept())
        files.get_by_text("scan.pdf").click()
        page.click("#lc-docs-delete")
        expect(page.locator("#lc-docs-quota")).to_contain_text("No files yet")
        expect(files).to_be_hidden()
        bob = app.app.household.store.member_by_name("Bob")
        assert service.documents(bob, service.visible(bob)[0].id) == []
        page.locator("#lc-docs-drop input[type=file]").set_input_files(
            files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"0123456789"}]
        )
        expect(files).to_contain_text("notes.txt")

        service.set_quota(app.app.household.store.member_by_name("Ann"), bob.id, 20)
        page.locator("#lc-docs-drop input[type=file]").set_input_files(
            files=[{"name": "big.txt", "mimeType": "text/plain", "buffer": b"x" * 100}]
        )
        expect(status).to_contain_text("⚠ big.txt")
        expect(status).to_contain_text("limit")
        expect(page.locator("#lc-docs-quota")).to_contain_text("10 bytes of 20 bytes used")
        expect(status).to_contain_text("(10 bytes of 20 bytes used)")
        expect(files).not_to_contain_text("big.txt")
        page.screenshot(path=str(artifacts / "documents-phone-quota.png"))
    finally:
        context.close()
    only_local(requests)


def test_an_admin_shares_a_library_with_one_member_and_another_does_not_see_it(browser, app, artifacts) -> None:  # noqa: F811
    context, page, requests = open_documents(browser, app, "Ann", DESKTOP)
    try:
        page.locator("#lc-libraries").get_by_role("button", name="Household libraries").first.click()
        page.fill("#lc-lib-name input", "Cy's school calendar")
        page.locator("#lc-lib-everyone input").uncheck()
        page.locator("#lc-lib-members").get_by_label("Cy").check()
        page.click("#lc-lib-save")
        expect(page.locator("#lc-lib-result")).to_contain_text("Created Cy's school calendar")
        page.locator("#lc-lib-drop input[type=file]").set_input_files(
            files=[{"name": "terms.txt", "mimeType": "text/plain", "buffer": b"Term starts 4 September."}]
        )
        expect(page.locator("#lc-lib-files")).to_contain_text("terms.txt")
        page.screenshot(path=str(artifacts / "documents-desktop-admin.png"), full_page=True)
    finally:
        context.close()
    only_local(requests)
    for name, sees in (("Cy", True), ("Bob", False)):
        context, page, requests = open_documents(browser, app, name, PHONE)
        try:
            expect(page.locator("#lc-libraries")).to_be_hidden()  # members get no admin part
            shared = page.locator("#lc-docs-shared")
            if sees:
                expect(shared).to_contain_text("Cy's school calendar")
                expect(shared).to_contain_text("terms.txt")
                page.screenshot(path=str(artifacts / "documents-phone-household.png"))
            else:
                expect(page.locator("#lc-docs-quota")).to_contain_text("used")  # the panel has been filled
                expect(shared).not_to_contain_text("school calendar")
        finally:
            context.close()
        only_local(requests)
