"""The real page in headless Chromium against the real app (bundled model on a loopback port).

Every request the page makes is recorded; any that leaves 127.0.0.1/localhost fails the test, so
a font, CDN script or telemetry ping sneaking into the UI is caught. Waits are event-driven.
Screenshots land in test-artifacts/ for a human look.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin, urlsplit

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
    try:
        page.goto(running_app.url + "/")
        page.locator("#lc-input textarea").wait_for(state="visible")
        yield page
    finally:
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


opened = contextlib.contextmanager(_open)  # `with opened(browser, app, **options) as page:`


def open_settings(page, via: str = "toggle") -> None:
    """Open the Settings sidebar with its own arrow ("toggle") or the header's Settings button."""
    if via == "header":
        page.locator("#lc-settings").click()
    else:
        page.locator("#lc-settings-panel").get_by_role("button", name="Toggle Sidebar").click()
    expect(page.locator("#lc-settings-panel")).to_have_class(re.compile(r"\bopen\b"))
    page.wait_for_function(  # the sidebar slides in: wait for the transition to finish
        """() => { const s = document.querySelector('#lc-settings-panel');
                   return s.getBoundingClientRect().left >= 0 && s.getAnimations({subtree: true}).length === 0; }"""
    )
    expect(page.locator("#lc-preset input")).to_be_in_viewport()


def test_header_settings_button_toggles_the_sidebar(page):
    sidebar = page.locator("#lc-settings-panel")
    open_settings(page, via="header")
    page.locator("#lc-settings").click()
    expect(sidebar).not_to_have_class(re.compile(r"\bopen\b"))
    open_settings(page, via="toggle")  # the sidebar's own arrow, then the header button closes it
    page.locator("#lc-settings").click()
    expect(sidebar).not_to_have_class(re.compile(r"\bopen\b"))


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
    expect(page.locator("#lc-settings-panel")).to_contain_text(wanted["description"])


# -- Settings: model, sampling; dark mode; PWA ---------------------------------------------------

MIB = re.compile(r"([\d,]+) MiB")
STATUS_MIB = """() => {
  const m = (document.querySelector('#lc-status')?.innerText || '').match(/([\\d,]+) MiB/);
  return m ? Number(m[1].replaceAll(',', '')) : null;
}"""
# The colour of an element's text and of what is behind it (its first ancestor with a background).
COLOURS = """el => {
  const alpha = c => { const m = c.match(/rgba?\\(([^)]*)\\)/); const p = m ? m[1].split(/[ ,\\/]+/) : [];
                       return p.length > 3 ? Number(p[3]) : 1; };
  let b = el;
  while (b && alpha(getComputedStyle(b).backgroundColor) === 0) b = b.parentElement;
  return [getComputedStyle(el).color, b ? getComputedStyle(b).backgroundColor : 'rgb(255, 255, 255)'];
}"""


def open_accordion(page, elem_id: str) -> None:
    accordion = page.locator(f"#{elem_id}")
    accordion.locator("button.label-wrap").first.click()
    expect(accordion.locator('[data-testid="accordion-content"]').first).to_be_visible()


def luminance(css: str) -> float:
    """WCAG relative luminance of a computed `rgb()`/`rgba()` colour."""
    m = re.fullmatch(r"rgba?\((.*)\)", css.strip())
    assert m, f"not an rgb() colour: {css}"
    r, g, b = (float(v) / 255 for v in re.split(r"[\s,/]+", m[1].strip())[:3])

    def lin(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b)


def contrast(fg: str, bg: str) -> float:
    hi, lo = sorted((luminance(fg), luminance(bg)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def stats_line(reply: str) -> str:
    return reply.strip().splitlines()[-1]


def _stop(app) -> None:
    app.process.terminate()
    try:
        app.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        app.process.kill()
        app.process.wait()


@pytest.fixture()
def own_app(tmp_path: Path, session_data_dir: Path, smol_backend):
    """An app of its own (its model gets swapped), sharing the session's dequantized-model cache:
    hard links (or copies) of those files, so it starts in seconds instead of dequantizing again."""
    from conftest import start_app

    cache = session_data_dir / "cache"
    data = tmp_path / "data"
    data.mkdir()
    if cache.is_dir():

        def link(src: str, dst: str) -> None:
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)

        shutil.copytree(cache, data / "cache", copy_function=link)
    app = start_app(data)
    yield app
    _stop(app)


def test_load_a_4bit_model_from_settings(browser, own_app, artifacts):
    with opened(browser, own_app, viewport={"width": 1280, "height": 800}) as page:
        status = page.locator("#lc-status")
        expect(status).to_contain_text("MiB")
        before = page.evaluate(STATUS_MIB)
        assert before and before > 300, status.inner_text()  # fp32: ~513 MiB
        open_settings(page, via="header")
        set_max_new_tokens(page, 48)  # keeps the reply below (and its sampling luck) short
        open_accordion(page, "lc-model")
        four_bit_type = page.locator("#lc-model").get_by_text("4-bit type", exact=True)
        expect(four_bit_type).to_be_hidden()
        page.locator('#lc-model [data-testid="4bit-radio-label"]').click()
        expect(page.locator('#lc-model [data-testid="4bit-radio-label"] input')).to_be_checked()
        expect(four_bit_type).to_be_visible()  # the 4-bit options group appears
        page.locator("#lc-fit-check").click()  # the estimate before loading
        expect(page.locator("#lc-fit")).to_contain_text("Fits in RAM", timeout=UI_TIMEOUT)
        page.locator("#lc-get-models").get_by_text("Get more models").click()
        expect(page.locator("#lc-catalog")).to_contain_text("Qwen/Qwen2.5-0.5B-Instruct")
        expect(page.locator("#lc-catalog")).to_contain_text("fits")
        page.screenshot(path=str(artifacts / "desktop-models.png"))
        page.locator("#lc-load").click()
        info = page.locator("#lc-load-result")
        expect(info).to_contain_text("✓ Loaded in", timeout=REPLY_TIMEOUT)
        expect(info).to_contain_text("4bit")
        page.wait_for_function(f"prev => {{ const m = ({STATUS_MIB})(); return m !== null && m < prev; }}", arg=before)
        after = page.evaluate(STATUS_MIB)
        assert after < before / 2, (before, after, status.inner_text())  # 4-bit: ~159 MiB
        assert f"{after:,} MiB" in info.inner_text(), (after, info.inner_text())

        ask(page, "Name three colours of the rainbow and say one thing about each.", via="click")
        lengths = wait_for_reply(page)
        final = last_reply(page)
        assert_streamed(lengths, final)
        assert re.search(r"\d+ tokens? · [\d.]+ tok/s", stats_line(final)), final
        expect(page.locator("#lc-stop")).to_be_hidden()
        page.screenshot(path=str(artifacts / "desktop-4bit.png"))
    assert "4bit" in own_app.log_text()


def set_max_new_tokens(page, value: int) -> None:
    """Type into the number box beside the slider (Settings open); the slider must follow."""
    open_accordion(page, "lc-sampling")
    number = page.get_by_label("number input for Max new tokens")
    expect(number).not_to_have_value(str(value))
    number.fill(str(value))
    number.press("Enter")
    expect(page.get_by_label("range slider for Max new tokens")).to_have_value(str(value))


def test_max_new_tokens_takes_effect(page):
    open_settings(page, via="header")
    set_max_new_tokens(page, 5)
    ask(page, "Write a long story about a dragon.", via="enter")
    wait_for_reply(page)
    final = last_reply(page)
    stats = stats_line(final)
    assert re.match(r"5 tokens ·", stats), stats
    assert "stopped at the length limit" in stats, stats


@pytest.mark.parametrize("scheme", ["dark", "light"])
def test_colour_scheme_follows_the_system(browser, running_app, artifacts, scheme):
    size = {"width": 1280, "height": 800}
    with opened(browser, running_app, color_scheme=scheme, viewport=size) as page:
        body_bg = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
        chat_bg = page.locator("#lc-chat").evaluate(COLOURS)[1]
        if scheme == "dark":
            assert luminance(body_bg) < 0.05, body_bg
            assert luminance(chat_bg) < 0.05, chat_bg
        else:
            assert luminance(body_bg) > 0.8, body_bg
            assert luminance(chat_bg) > 0.8, chat_bg
        ask(page, "Say hello in one short sentence.", via="enter")
        wait_for_reply(page)
        readable = {  # WCAG AA: 4.5:1 for text, 3:1 for large bold text such as the Send button's
            "header status": (page.locator("#lc-status p").first, 4.5),
            "your message": (page.locator('#lc-chat [data-testid="user"]').last, 4.5),
            "reply": (page.locator('#lc-chat [data-testid="bot"]').last, 4.5),
            "input box": (page.locator("#lc-input textarea"), 4.5),
            "Send button": (page.locator("#lc-send"), 3.0),
        }
        low = {}
        for name, (element, needed) in readable.items():
            fg, bg = element.evaluate(COLOURS)
            if contrast(fg, bg) < needed:
                low[name] = (fg, bg, round(contrast(fg, bg), 2))
        assert not low, f"hard to read in {scheme} mode: {low}"
        page.screenshot(path=str(artifacts / f"desktop-{scheme}.png"))
        open_settings(page, via="header")
        open_accordion(page, "lc-model")
        page.screenshot(path=str(artifacts / f"desktop-{scheme}-settings.png"))


def test_installable_as_an_app(page, running_app):
    server = urlsplit(running_app.url)
    href = page.locator('link[rel="manifest"]').get_attribute("href")
    assert href, "no <link rel=manifest>"
    manifest_url = urljoin(page.url, href)
    assert urlsplit(manifest_url).netloc == server.netloc, manifest_url
    fetch = """async url => { const r = await fetch(url);
                 return {status: r.status, type: r.headers.get('content-type') || '', body: await r.text()}; }"""
    got = page.evaluate(fetch, manifest_url)
    assert got["status"] == 200, got
    manifest = json.loads(got["body"])
    assert manifest["name"] == "localchat", manifest
    assert manifest["display"] == "standalone", manifest
    assert manifest.get("icons"), manifest
    for icon in manifest["icons"]:
        url = urljoin(manifest_url, icon["src"])
        assert urlsplit(url).netloc == server.netloc, f"icon off this server: {url}"
        got = page.evaluate(fetch, url)
        assert got["status"] == 200, (url, got["status"])
        assert got["type"].startswith("image/"), (url, got["type"])
