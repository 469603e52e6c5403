"""The issue's whole path with nothing faked: on a phone viewport in Chromium, a file is added
through the Documents panel, read and embedded by the real library service (all-MiniLM-L6-v2 in the
engine), chosen for the chat, and the real bundled SmolLM2-135M (greedy) answers a question only
that file holds, citing it; the source opens its passage."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import ServedApp, free_port
from test_browser import CHROMIUM, CHROMIUM_ARGS, LOCAL_HOSTS, UI_TIMEOUT, expect, playwright_api

from localchat.household import Household
from localchat.server import build_app
from localchat.settings import Settings
from localchat.store import Store

pytestmark = [pytest.mark.browser, pytest.mark.model]
DOCUMENT = b"""# Home network

## Guest Wi-Fi

The guest Wi-Fi network is called Larkspur-Guest. Its password is marigold-7731.
The router is in the hall cupboard.

## Printer

The printer on the landing prints double-sided by default.
"""


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, smol_backend) -> Iterator[ServedApp]:
    data = tmp_path_factory.mktemp("library-e2e")
    household = Household(Store(data / "localchat.db"), listen=False)
    me = household.store.builtin_member()
    settings = Settings(data_dir=data, load_on_start=False)
    built = build_app(settings, backend=smol_backend, household=household)  # the real Libraries
    balanced = built.service.preset("Balanced").system_prompt
    built.service._now = lambda: datetime(2025, 1, 6, 9, 0)  # the system prompt's date, as in test_rag_model
    household.store.set_preferences(
        me.id,
        {
            "preset": "Deterministic",
            "system_prompt": balanced,
            "sampling": {"max_new_tokens": 32, "repetition_penalty": 1.0},
        },
    )
    served = ServedApp(built, free_port())
    yield served
    served.stop()


def test_a_phone_adds_a_file_and_the_real_model_answers_from_it_citing_it(app: ServedApp, artifacts) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    requests: list[str] = []
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
        context.set_default_timeout(UI_TIMEOUT)
        context.on("request", lambda r: requests.append(r.url))
        page = context.new_page()
        try:
            page.goto(app.url + "/")
            page.locator("#lc-input textarea").wait_for(state="visible")
            page.click("#lc-settings")
            page.locator("#lc-documents").get_by_role("button", name="Documents").first.click()
            page.locator("#lc-docs-drop input[type=file]").set_input_files(
                files=[{"name": "home-network.md", "mimeType": "text/markdown", "buffer": DOCUMENT}]
            )
            expect(page.locator("#lc-docs-files")).to_contain_text("home-network.md", timeout=60_000)
            expect(page.locator("#lc-docs-files")).to_contain_text("ready", timeout=120_000)
            page.screenshot(path=str(artifacts / "library-e2e-ready.png"))

            page.goto(app.url + "/")  # back to the chat (the Documents choice lists the library)
            choice = page.locator("#lc-documents input")
            choice.click()
            page.get_by_role("option", name="All my documents").click()
            page.locator("#lc-input textarea").fill("What is the guest Wi-Fi password?")
            page.locator("#lc-send").click()
            source = page.locator("#lc-chat a.lc-source").first
            expect(source).to_contain_text("[1] home-network.md", timeout=180_000)
            answer = page.locator("#lc-chat .message.bot, #lc-chat [data-testid=bot]").last
            expect(answer).to_contain_text("marigold-7731", timeout=60_000)
            page.screenshot(path=str(artifacts / "library-e2e-answer.png"))
            with context.expect_page() as opened:
                source.click()
            passage = opened.value
            passage.wait_for_load_state()
            expect(passage.locator("#lc-passage-text")).to_contain_text("marigold-7731")
        finally:
            context.close()
            browser.close()
    outside = sorted({r for r in requests if urlsplit(r).hostname not in LOCAL_HOSTS})
    assert not outside, outside
