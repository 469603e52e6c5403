"""Household mode in headless Chromium: two members sign in from two browsers (a laptop and a
phone), each chats with the real bundled model, and each sees only their own conversations.

Accounts are made with the real CLI (`localchat users add`, password on stdin); the app runs on a
loopback port, where existing accounts mean everyone signs in.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import ARTIFACTS, ROOT, RunningApp, start_app
from test_browser import LOCAL_HOSTS, UI_TIMEOUT, ask, browser, expect, wait_for_reply  # noqa: F401 - fixture

pytestmark = [pytest.mark.browser, pytest.mark.model]
PASSWORDS = {"Ann": "ann's long password", "Bob": "bob's long password"}


def add_member(data_dir: Path, name: str, admin: bool) -> None:
    args = [sys.executable, "-m", "localchat.cli", "users", "--data-dir", str(data_dir), "add", name]
    result = subprocess.run(
        [*args, *(["--admin"] if admin else [])],
        input=PASSWORDS[name] + "\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert PASSWORDS[name] not in result.stdout + result.stderr


@pytest.fixture(scope="module")
def household(tmp_path_factory, session_data_dir: Path, smol_backend) -> Iterator[RunningApp]:
    data = tmp_path_factory.mktemp("household")
    (data / "cache").symlink_to(session_data_dir / "cache")  # reuse the dequantized starter model
    add_member(data, "Ann", admin=True)
    add_member(data, "Bob", admin=False)
    app = start_app(data)
    yield app
    app.process.terminate()
    app.process.wait(timeout=15)


def signed_in(chromium, app: RunningApp, name: str, **context_options):
    context = chromium.new_context(**context_options)
    context.set_default_timeout(UI_TIMEOUT)
    page = context.new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(app.url + "/")
    expect(page).to_have_url(app.url + "/login")
    page.fill("#name", name)
    page.fill("#password", "wrong password")
    page.click("button[type=submit]")
    expect(page.locator("#lc-login-error")).to_contain_text("Wrong name or password")
    page.screenshot(path=str(ARTIFACTS / f"household-login-{name.lower()}.png"))
    page.fill("#password", PASSWORDS[name])
    page.click("button[type=submit]")
    page.locator("#lc-input textarea").wait_for(state="visible")
    return context, page, requests


def app_url(app: RunningApp, href: str | None) -> str:
    assert href and href.startswith("/export/"), href
    return app.url + href


def chat_titles(page) -> list[str]:
    page.wait_for_function("() => document.querySelector('#lc-conversations') !== null")
    return page.locator("#lc-conversations label").all_inner_texts()


def test_two_members_each_see_only_their_own_conversations(browser, household, artifacts):  # noqa: F811
    ann_ctx, ann, ann_requests = signed_in(browser, household, "Ann", viewport={"width": 1280, "height": 800})
    phone = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True, "device_scale_factor": 2}
    bob_ctx, bob, bob_requests = signed_in(browser, household, "Bob", **phone)
    bob.screenshot(path=str(artifacts / "household-phone-signed-in.png"))
    try:
        ask(ann, "Which country does pasta come from? Answer in one word.", via="enter")  # short replies
        ask(bob, "Who won the football world cup in 2018? Answer in one word.", via="click")
        wait_for_reply(ann)
        wait_for_reply(bob)
        expect(ann.locator("#lc-conversations")).to_contain_text("pasta")
        ann.reload()
        bob.reload()
        ann.locator("#lc-input textarea").wait_for(state="visible")
        bob.locator("#lc-input textarea").wait_for(state="visible")
        expect(ann.locator("#lc-conversations")).to_contain_text("pasta", timeout=UI_TIMEOUT)
        assert not any("football" in t for t in chat_titles(ann))
        expect(bob.locator("#lc-conversations")).to_contain_text("football")  # the page has loaded
        bob.locator("#lc-chats").get_by_role("button", name="Toggle Sidebar").click()  # closed on a phone
        expect(bob.locator("#lc-conversations label").first).to_be_in_viewport()
        assert not any("pasta" in t for t in chat_titles(bob))
        bob.wait_for_timeout(600)  # for the screenshot only: let the sidebar finish sliding in
        bob.screenshot(path=str(artifacts / "household-phone-chats.png"))
        # reopening a saved chat brings its messages back
        bob.locator("#lc-conversations label").first.click()
        expect(bob.locator('#lc-chat [data-testid="user"]').first).to_contain_text("football")
        expect(bob.locator("#lc-chats")).not_to_have_class(re.compile(r"\bopen\b"))  # out of the way on a phone
        bob.wait_for_timeout(600)
        bob.screenshot(path=str(artifacts / "household-phone-reopened.png"))
        # export this chat from the page, then import it back through the page's own form
        bob.locator("#lc-chats").get_by_role("button", name="Toggle Sidebar").click()
        href = bob.locator("#lc-export a", has_text="JSON").first.get_attribute("href")
        response = bob.request.get(app_url(household, href))  # with this browser's session cookie
        assert response.ok and "attachment" in response.headers["content-disposition"]
        exported = response.text()
        assert "football" in exported and "pasta" not in exported
        messages: list[str] = []
        bob.once("dialog", lambda d: (messages.append(d.message), d.accept()))
        bob.locator("#lc-import-file").set_input_files(
            files=[{"name": "chats.json", "mimeType": "application/json", "buffer": exported.encode()}]
        )
        bob.wait_for_function("() => document.querySelectorAll('#lc-conversations label').length === 2")
        assert messages and "Imported 1" in messages[0]
        # only the admin has the household panel and the model loader
        expect(ann.locator("#lc-household")).to_be_visible()
        expect(bob.locator("#lc-household")).to_be_hidden()
        expect(ann.locator("#lc-member")).to_contain_text("Signed in as Ann")
        ann.locator("#lc-household").click()
        expect(ann.locator("#lc-members")).to_contain_text("Bob", timeout=UI_TIMEOUT)
        ann.screenshot(path=str(artifacts / "household-admin.png"))
    finally:
        ann_ctx.close()
        bob_ctx.close()
    outside = sorted({u for u in ann_requests + bob_requests if urlsplit(u).hostname not in LOCAL_HOSTS})
    assert not outside, outside
