"""Accessibility in headless Chromium: axe-core (from npm, never a CDN) finds no serious or critical
problem on the sign-in and set-up pages, the chat, the Settings sidebar, the chat list or the
household panel, in light and dark; and the whole chat flow works with the keyboard alone, with a
visible focus ring on every control the keyboard reaches.

The app runs over a FakeBackend on a loopback port (no model load); axe's source is evaluated in
the page through the DevTools protocol, so the page's own CSP and its no-off-host rule stay as they are.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import ROOT, ServedApp, serve
from test_browser import LOCAL_HOSTS, UI_TIMEOUT, browser, expect  # noqa: F401 - fixture

pytestmark = [pytest.mark.browser]
AXE = Path(os.environ.get("LOCALCHAT_AXE", ROOT / ".cache/npm/node_modules/axe-core/axe.min.js"))
REPLY = "Hello from the fake model"
# Every rule axe runs by default, nothing excluded (Gradio's own markup passes too, as of Gradio 6.31).
RUN_AXE = """async () => {
  const r = await axe.run(document, {resultTypes: ['violations']});
  return r.violations.filter(v => v.impact === 'serious' || v.impact === 'critical').map(v => ({
    id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.map(n => ({target: n.target.join(' '), why: n.any.concat(n.all, n.none).map(c => c.message).join('; ')})),
  }));
}"""
# Nothing sliding or fading, and no Gradio component dimmed while its update is pending.
SETTLED = """() => document.getAnimations().length === 0 && !document.querySelector('.pending')"""
# The focused control (or, for a visually hidden radio or file field, the label that shows it):
# whether it is on screen and draws a focus outline.
FOCUS = """() => {
  let e = document.activeElement;
  if (!e || e === document.body) return null;
  const hidden = el => { const r = el.getBoundingClientRect(); return r.width < 4 || r.height < 4
                         || getComputedStyle(el).opacity === '0'; };
  if (hidden(e) && e.closest('label')) e = e.closest('label');
  const s = getComputedStyle(e), r = e.getBoundingClientRect();
  const shown = s.visibility === 'visible' && r.width > 0 && r.height > 0 && r.right > 0 && r.bottom > 0
                && r.left < innerWidth && r.top < innerHeight;
  const ring = s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) >= 2;
  const name = (e.id || e.closest('[id]')?.id || '') + ' ' + e.tagName.toLowerCase() + ' "'
               + (e.getAttribute('aria-label') || e.innerText || e.placeholder || '').trim().slice(0, 30) + '"';
  return {name, shown, ring, outline: `${s.outlineStyle} ${s.outlineWidth} ${s.outlineColor}`};
}"""


@pytest.fixture(scope="module")
def axe_source() -> str:
    if not AXE.is_file():
        pytest.fail(
            f"axe-core is missing at {AXE}: run the README test command (scripts/test.sh installs it with "
            "`npm install --prefix .cache/npm axe-core@4`), or set LOCALCHAT_AXE to its axe.min.js"
        )
    return AXE.read_text()


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> Iterator[ServedApp]:
    """Ann (admin) and Bob (member); Bob has two saved chats for the keyboard to open."""
    served = serve(tmp_path_factory.mktemp("a11y"), members={"Ann": "admin", "Bob": "member"})
    store = served.app.household.store
    bob = store.member_by_name("Bob")
    for title, text in (("Soup recipes", "A soup for a cold day?"), ("Trip to Rome", "Three days in Rome?")):
        chat = store.create_conversation(bob.id, title)
        store.put_message(bob.id, chat, 0, "user", text)
    yield served
    served.stop()


class Page:
    """A fresh context on the app, its requests recorded (none may leave this machine)."""

    def __init__(self, browser, **options):  # noqa: F811
        self.context = browser.new_context(**options)
        self.context.set_default_timeout(UI_TIMEOUT)
        self.page = self.context.new_page()
        self.requests: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))

    def close(self) -> None:
        self.context.close()
        outside = sorted({u for u in self.requests if urlsplit(u).hostname not in LOCAL_HOSTS})
        assert not outside, "the page made requests off this machine:\n" + "\n".join(outside)


def assert_axe_clean(page, axe_source: str, where: str, artifacts: Path | None = None) -> None:
    page.mouse.move(0, 0)  # a hover colour is not what the page shows at rest
    page.wait_for_function(SETTLED)  # a half-faded element is not what the page shows at rest either
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.evaluate(axe_source)  # via DevTools: not subject to the page's CSP script-src
    found = page.evaluate(RUN_AXE)
    if artifacts is not None:
        page.screenshot(path=str(artifacts / f"a11y-{re.sub(r'[^a-z0-9]+', '-', where.lower()).strip('-')}.png"))
    report = [
        f"{v['impact']} {v['id']} ({v['help']}):\n" + "\n".join(f"  {n['target']}: {n['why']}" for n in v["nodes"])
        for v in found
    ]
    assert not found, f"axe on {where}:\n" + "\n".join(report)


def sign_in(page, app: ServedApp, name: str) -> None:
    page.goto(app.url + "/")
    expect(page).to_have_url(app.url + "/login")
    page.fill("#name", name)
    page.fill("#password", f"password-{name}")
    page.click("button[type=submit]")
    page.locator("#lc-input textarea").wait_for(state="visible")


def open_accordions(page, region) -> None:
    """Open every closed accordion in a region, nested ones too, so axe sees what is inside."""
    for _ in range(20):
        closed = [b for b in region.locator("button.label-wrap:not(.open)").all() if b.is_visible()]
        if not closed:
            return
        closed[0].click()  # one at a time: each opening moves the ones below it
        page.wait_for_function(SETTLED)
    raise AssertionError("accordions that would not open")


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_pages_have_no_serious_axe_violations(browser, app, axe_source, artifacts, scheme):  # noqa: F811
    view = Page(browser, viewport={"width": 1280, "height": 800}, color_scheme=scheme)
    page = view.page
    try:
        page.goto(app.url + "/login")
        assert_axe_clean(page, axe_source, f"the sign-in page ({scheme})", artifacts)
        page.fill("#name", "Ann")
        page.fill("#password", "wrong password")
        page.click("button[type=submit]")
        expect(page.locator("#lc-login-error")).to_contain_text("Wrong name or password")
        assert_axe_clean(page, axe_source, f"the sign-in page with its error ({scheme})", artifacts)

        sign_in(page, app, "Ann")
        expect(page.locator("#lc-chats")).to_have_class(re.compile(r"\bopen\b"))  # wide: the chat list shows
        assert_axe_clean(page, axe_source, f"the chat page ({scheme})")
        page.locator("#lc-input textarea").fill("Hello?")
        page.locator("#lc-send").click()
        expect(page.locator('#lc-chat [data-testid="bot"]').last).to_contain_text(REPLY)
        expect(page.locator("#lc-send")).to_be_visible()
        assert_axe_clean(page, axe_source, f"a chat with a reply ({scheme})", artifacts)

        page.locator("#lc-settings").click()
        settings = page.locator("#lc-settings-panel")
        expect(settings).to_have_class(re.compile(r"\bopen\b"))
        open_accordions(page, settings)
        expect(page.locator("#lc-load")).to_be_visible()
        assert_axe_clean(page, axe_source, f"the Settings sidebar ({scheme})", artifacts)
        page.locator("#lc-settings").click()
        expect(settings).not_to_have_class(re.compile(r"\bopen\b"))

        page.locator("#lc-household").click()
        expect(page.locator("#lc-members")).to_contain_text("Bob")
        open_accordions(page, page.locator("#lc-admin"))
        expect(page.locator("#lc-add-member")).to_be_visible()
        assert_axe_clean(page, axe_source, f"the household panel ({scheme})", artifacts)
    finally:
        view.close()


def test_first_run_set_up_page_has_no_serious_axe_violations(browser, axe_source, tmp_path):  # noqa: F811
    fresh = serve(tmp_path)  # no account yet: the set-up page answers on this computer
    view = Page(browser, viewport={"width": 1280, "height": 800})
    try:
        view.page.goto(fresh.url + "/setup")
        expect(view.page.locator("h1")).to_have_text("Set up your household")
        assert_axe_clean(view.page, axe_source, "the set-up page")
    finally:
        view.close()
        fresh.stop()


def tab_to(page, target: str, key: str = "Tab", limit: int = 60) -> list[str]:
    """Press Tab (or Shift+Tab) until the focus is inside `target`; every control it stops at on
    the way must be on screen and show a focus ring. Returns the names of those controls."""
    passed: list[str] = []
    for _ in range(limit):
        page.keyboard.press(key)
        focus = page.evaluate(FOCUS)
        if focus is None:  # past the page's last control: the browser's own UI
            continue
        assert focus["shown"], f"the focus went to a control that is not on screen: {focus['name']} (after {passed})"
        assert focus["ring"], f"no visible focus ring on {focus['name']}: outline {focus['outline']}"
        passed.append(focus["name"])
        if page.evaluate("sel => !!document.activeElement?.closest(sel)", target):
            return passed
    raise AssertionError(f"{limit} presses of {key} never reached {target}; passed {passed}")


def test_the_chat_flow_works_with_the_keyboard_alone(browser, app, artifacts):  # noqa: F811
    # narrower than 900 px: the chat list starts closed, so the keyboard has to open it
    view = Page(browser, viewport={"width": 860, "height": 760})
    page = view.page
    keys = page.keyboard
    try:
        page.goto(app.url + "/")
        expect(page.locator("#name")).to_be_focused()  # the sign-in form starts in the name field
        keys.type("Bob")
        tab_to(page, "#password")
        keys.type("password-Bob")
        keys.press("Enter")
        box = page.locator("#lc-input textarea")
        box.wait_for(state="visible")
        expect(box).to_be_focused()  # ready to type

        keys.type("Is this keyboard only?")
        keys.press("Enter")
        expect(page.locator('#lc-chat [data-testid="user"]').last).to_contain_text("Is this keyboard only?")
        expect(page.locator('#lc-chat [data-testid="bot"]').last).to_contain_text(REPLY)
        expect(page.locator("#lc-send")).to_be_visible()
        expect(box).to_have_value("")

        # Settings, from the header's button (backwards from the message box), and closed again
        tab_to(page, "#lc-settings", key="Shift+Tab")
        keys.press("Enter")
        settings = page.locator("#lc-settings-panel")
        expect(settings).to_have_class(re.compile(r"\bopen\b"))
        page.wait_for_function(SETTLED)
        tab_to(page, "#lc-system")  # into the sidebar: its controls are reachable and on screen
        page.screenshot(path=str(artifacts / "a11y-keyboard-settings.png"))
        tab_to(page, "#lc-settings", key="Shift+Tab")
        keys.press("Space")
        expect(settings).not_to_have_class(re.compile(r"\bopen\b"))
        page.wait_for_function(SETTLED)  # slid away: its controls leave the Tab order

        # the chat list: its toggle, then a saved chat picked with Space
        chats = page.locator("#lc-chats")
        tab_to(page, "#lc-chats > button.toggle-button", key="Shift+Tab")
        keys.press("Enter")
        expect(chats).to_have_class(re.compile(r"\bopen\b"))
        expect(chats).to_contain_text("Trip to Rome")
        page.wait_for_function(SETTLED)
        tab_to(page, '#lc-conversations [data-testid="Trip to Rome-radio-label"]')  # each chat is a Tab stop
        page.screenshot(path=str(artifacts / "a11y-keyboard-chat-list.png"))
        keys.press("Space")
        expect(page.locator('#lc-chat [data-testid="user"]').first).to_contain_text("Three days in Rome?")
        expect(page.locator('#lc-chat [data-testid="user"]')).to_have_count(1)
        expect(chats).not_to_have_class(re.compile(r"\bopen\b"))  # on a narrow screen it gets out of the way
        page.wait_for_function(SETTLED)

        # a new chat from the header
        tab_to(page, "#lc-new")
        keys.press("Enter")
        expect(page.locator('#lc-chat [data-testid="user"]')).to_have_count(0)
        tab_to(page, "#lc-input")
        keys.type("And a second one")
        keys.press("Enter")
        expect(page.locator('#lc-chat [data-testid="bot"]').last).to_contain_text(REPLY)
        page.screenshot(path=str(artifacts / "a11y-keyboard-new-chat.png"))
    finally:
        view.close()
