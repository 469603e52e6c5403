"""The real page in headless Chromium against the real app (bundled model on a loopback port).

Every request the page makes is recorded; any that leaves 127.0.0.1/localhost fails the test, so
a font, CDN script or telemetry ping sneaking into the UI is caught. Waits are event-driven.
Screenshots land in test-artifacts/ for a human look.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

pytestmark = [pytest.mark.browser, pytest.mark.model]

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

CHROMIUM = os.environ.get("LOCALCHAT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
PRESETS = Path(__file__).resolve().parent.parent / "presets"
REPLY_TIMEOUT = 240_000  # ms: a 2-core CPU shared with other work can be slow
UI_TIMEOUT = 30_000

LAST_BOT = """() => {
  const b = document.querySelectorAll('#lc-chat [data-testid="bot"]');
  return b.length ? b[b.length - 1].innerText : null;
}"""

SEEN: set[str] = set()  # every URL any page made this session, written to artifacts at the end


@pytest.fixture(scope="module")
def browser(artifacts: Path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (set LOCALCHAT_CHROMIUM)")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
    (artifacts / "browser-requests.txt").write_text("\n".join(sorted(SEEN)) + "\n")


def _open(browser, running_app, **context_options) -> Iterator:
    """A fresh context and page on the app; after the test, fail on any non-local request."""
    context = browser.new_context(**context_options)
    context.set_default_timeout(UI_TIMEOUT)
    page = context.new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("websocket", lambda ws: requests.append(ws.url))
    page.goto(running_app.url + "/")
    page.locator("#lc-input textarea").wait_for(state="visible")
    yield page
    context.close()
    SEEN.update(requests)
    outside = sorted({u for u in requests if urlsplit(u).hostname not in LOCAL_HOSTS})
    assert not outside, "the page made requests off this machine:\n" + "\n".join(outside)


@pytest.fixture()
def page(browser, running_app):
    yield from _open(browser, running_app, viewport={"width": 1280, "height": 800})


@pytest.fixture()
def phone(browser, running_app):
    yield from _open(
        browser,
        running_app,
        viewport={"width": 390, "height": 844},
        is_mobile=True,
        has_touch=True,
        device_scale_factor=2,
    )


def last_reply(page) -> str:
    return page.evaluate(LAST_BOT) or ""


def wait_for_reply(page) -> list[int]:
    """Follow the last reply until its stats line shows; returns the text lengths seen on the way."""
    page.wait_for_function(f"({LAST_BOT})()?.length > 0", timeout=REPLY_TIMEOUT)
    lengths = []
    while "tok/s" not in (text := last_reply(page)):
        lengths.append(len(text))
        page.wait_for_function(
            f"prev => {{ const t = ({LAST_BOT})(); return t !== null && t.length !== prev; }}",
            arg=len(text),
            timeout=REPLY_TIMEOUT,
        )
    expect(page.locator("#lc-send")).to_be_visible(timeout=UI_TIMEOUT)
    return lengths


def ask(page, text: str, via: str) -> None:
    box = page.locator("#lc-input textarea")
    box.fill(text)
    if via == "enter":
        box.press("Enter")
    else:
        page.locator("#lc-send").click()
    expect(page.locator('#lc-chat [data-testid="user"]').last).to_contain_text(text, timeout=UI_TIMEOUT)
    expect(box).to_have_value("")


def assert_streamed(lengths: list[int], final: str) -> None:
    assert any(b > a for a, b in zip(lengths, lengths[1:], strict=False)), (
        f"reply did not grow while streaming: {lengths}"
    )
    assert lengths[-1] < len(final), (lengths, final)


def open_settings(page) -> None:
    page.locator(".sidebar").get_by_role("button", name="Toggle Sidebar").click()
    expect(page.locator(".sidebar")).to_have_class(re.compile(r"\bopen\b"))
    page.wait_for_function(  # the sidebar slides in: wait for the transition to finish
        """() => { const s = document.querySelector('.sidebar');
                   return s.getBoundingClientRect().left >= 0 && s.getAnimations({subtree: true}).length === 0; }"""
    )
    expect(page.locator("#lc-preset input")).to_be_in_viewport()


def test_first_load_shows_model_and_input(page):
    expect(page.locator("#lc-status")).to_contain_text("SmolLM2", timeout=UI_TIMEOUT)
    expect(page.locator("#lc-input textarea")).to_be_editable()
    expect(page.locator("#lc-send")).to_be_visible()
    expect(page.locator("#lc-stop")).to_be_hidden()
    expect(page).to_have_title("localchat")


def test_enter_streams_a_reply(page, artifacts):
    ask(page, "Describe Paris in three sentences.", via="enter")
    lengths = wait_for_reply(page)
    final = last_reply(page)
    assert_streamed(lengths, final)
    assert "tokens" in final and "tok/s" in final, final
    expect(page.locator("#lc-stop")).to_be_hidden()
    page.screenshot(path=str(artifacts / "desktop.png"))
    open_settings(page)
    page.screenshot(path=str(artifacts / "desktop-settings.png"))


def test_send_button_on_a_phone(phone, artifacts):
    ask(phone, "Name three things to see in Paris and say why.", via="click")
    lengths = wait_for_reply(phone)
    final = last_reply(phone)
    assert_streamed(lengths, final)
    assert "tok/s" in final, final
    phone.screenshot(path=str(artifacts / "phone.png"))
    width = phone.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1] + 1, f"horizontal scrolling on a phone: scrollWidth {width[0]} > {width[1]}"
    expect(phone.locator("#lc-send")).to_be_in_viewport()
    expect(phone.locator("#lc-input textarea")).to_be_in_viewport()
    open_settings(phone)
    phone.screenshot(path=str(artifacts / "phone-settings.png"))


def test_stop_ends_the_reply_early(page):
    ask(page, "Write a long story about a dragon.", via="click")
    stop = page.locator("#lc-stop")
    expect(stop).to_be_visible(timeout=UI_TIMEOUT)
    expect(page.locator("#lc-send")).to_be_hidden()
    page.wait_for_function(f"({LAST_BOT})()?.length > 20", timeout=REPLY_TIMEOUT)
    # Enter while a reply is being written must not swallow the new message
    box = page.locator("#lc-input textarea")
    box.fill("And then what happened?")
    with page.expect_response(lambda r: "/gradio_api/run/predict" in r.url):
        box.press("Enter")
    expect(box).to_have_value("And then what happened?")
    expect(page.locator('#lc-chat [data-testid="user"]')).to_have_count(1)
    stop.click()
    page.wait_for_function(f"({LAST_BOT})()?.includes('tok/s')", timeout=UI_TIMEOUT)
    final = last_reply(page)
    stats = final.strip().splitlines()[-1]
    assert "stopped" in stats and "length limit" not in stats, stats
    tokens = int(stats.split(" tokens")[0].split()[-1].replace(",", ""))
    assert tokens < 512, stats  # the preset's limit; Stop ended it well before
    expect(page.locator("#lc-send")).to_be_visible()
    expect(stop).to_be_hidden()


def test_preset_fills_the_system_prompt(page):
    wanted = next(
        data
        for f in sorted(PRESETS.glob("*.yaml"))
        if (data := yaml.safe_load(f.read_text())).get("name") == "Deterministic"
    )
    system = page.locator("#lc-system textarea")
    before = system.input_value()
    assert before != wanted["system_prompt"], "pick a preset whose prompt differs from the default"
    open_settings(page)
    page.locator("#lc-preset input").click()
    page.get_by_role("option", name="Deterministic", exact=True).click()
    expect(page.locator("#lc-preset input")).to_have_value("Deterministic")
    expect(system).to_have_value(wanted["system_prompt"])
    expect(page.locator(".sidebar")).to_contain_text(wanted["description"])
