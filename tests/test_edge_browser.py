"""The page under its Content-Security-Policy in headless Chromium, and hostile chat text shown as
text: the real app on a loopback port (household of Ann, admin, and Bob; FakeBackend, so no model
load), every request the page makes recorded, every CSP violation collected."""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from conftest import ServedApp, serve
from fakes import FakeBackend
from test_browser import LOCAL_HOSTS, UI_TIMEOUT, browser, expect  # noqa: F401 - fixture

pytestmark = [pytest.mark.browser]
HOSTILE = (
    '<div id="lc-overlay" style="position:fixed;inset:0;background:red">Session expired</div>\n\n'
    '<form action="http://other.example/x"><input type=password name=p></form>\n\n'
    '<img src="http://other.example/a.png">\n\n<video src="http://other.example/v.mp4" autoplay></video>\n\n'
    "![x](http://other.example/?q=1) and `<b>code</b>` and $$a<b$$"
)
WATCH = """window.__csp = [];
document.addEventListener('securitypolicyviolation', e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));"""


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> Iterator[ServedApp]:
    served = serve(tmp_path_factory.mktemp("edge-browser"), backend=FakeBackend(HOSTILE), members={"Ann": "admin"})
    household = served.app.household
    bob = household.add_member("Bob", "password-Bob")
    household.set_admins_read_chats(household.store.member_by_name("Ann"), True)
    chat = household.store.create_conversation(bob.id, "Bob's chat")
    household.store.put_message(bob.id, chat, 0, "user", HOSTILE)
    yield served
    served.stop()


class Watched:
    """A signed-in page with its requests, console CSP reports and violation events."""

    def __init__(self, browser, app: ServedApp, name: str):  # noqa: F811
        self.context = browser.new_context(viewport={"width": 1280, "height": 800})
        self.context.set_default_timeout(UI_TIMEOUT)
        self.context.add_init_script(WATCH)
        self.page = self.context.new_page()
        self.requests: list[str] = []
        self.console: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("console", lambda m: self.console.append(m.text))
        self.page.goto(app.url + "/")
        expect(self.page).to_have_url(app.url + "/login")
        self.violations("the sign-in page")
        self.page.fill("#name", name)
        self.page.fill("#password", f"password-{name}")
        self.page.click("button[type=submit]")
        self.page.locator("#lc-input textarea").wait_for(state="visible")

    def violations(self, where: str) -> None:
        seen = self.page.evaluate("window.__csp")
        reports = [c for c in self.console if "Content Security Policy" in c or "Refused to" in c]
        assert not seen and not reports, f"CSP violations on {where}:\n" + "\n".join([*seen, *reports])

    def close(self) -> None:
        self.context.close()
        outside = sorted({u for u in self.requests if urlsplit(u).hostname not in LOCAL_HOSTS})
        assert not outside, "the page made requests off this machine:\n" + "\n".join(outside)


def assert_shown_as_text(region) -> None:
    """The hostile markup is visible text: no overlay, form, image or video from it exists."""
    expect(region).to_contain_text('<form action="http://other.example/x">')
    expect(region).to_contain_text('<img src="http://other.example/a.png">')
    expect(region).to_contain_text("<b>code</b>")  # inline code still shows tags literally
    for selector in ("#lc-overlay", "form[action*='other.example']", "img[src*='other.example']", "video"):
        assert region.locator(selector).count() == 0, selector
    assert region.locator("input[type=password]").count() == 0


def test_the_page_works_under_its_csp_and_shows_chat_html_as_text(browser, app, artifacts) -> None:  # noqa: F811
    ann = Watched(browser, app, "Ann")
    try:
        page = ann.page
        ann.violations("the chat page")
        page.locator("#lc-input textarea").fill(HOSTILE)
        page.locator("#lc-send").click()
        bot = page.locator('#lc-chat [data-testid="bot"]').last
        expect(bot).to_contain_text("Session expired")
        expect(page.locator("#lc-send")).to_be_visible()
        assert_shown_as_text(page.locator("#lc-chat"))
        expect(page.locator("#lc-chat .katex").first).to_be_attached()  # LaTeX still renders
        page.screenshot(path=str(artifacts / "edge-hostile-chat.png"))
        ann.violations("a chat round trip")
        page.locator("#lc-settings").click()
        expect(page.locator("#lc-settings-panel")).to_have_class(re.compile(r"\bopen\b"))
        ann.violations("Settings")
        page.locator("#lc-household").click()
        expect(page.locator("#lc-members")).to_contain_text("Bob")
        page.get_by_text("Privacy", exact=True).click()
        page.locator("#lc-reader-pick input").click()
        page.get_by_role("option", name="Bob").click()
        expect(page.locator("#lc-transcript")).to_contain_text("Session expired")
        assert_shown_as_text(page.locator("#lc-transcript"))
        page.screenshot(path=str(artifacts / "edge-admin-reader.png"))
        ann.violations("the household panel and the admin's reader")
    finally:
        ann.close()
