"""The chat page in Chromium on a phone viewport (FakeBackend, FakeLibraries, single-user): the
Documents choice is in sight above the message box, and a reply from documents shows numbered
sources whose link opens the passage in a new tab; axe-core finds nothing serious on either page."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import ServedApp, free_port
from fake_library import FakeLibraries
from fakes import FakeBackend
from test_accessibility import assert_axe_clean, axe_source  # noqa: F401 - fixture
from test_browser import CHROMIUM, CHROMIUM_ARGS, LOCAL_HOSTS, UI_TIMEOUT, expect, playwright_api

from localchat.household import Household
from localchat.server import build_app
from localchat.settings import Settings
from localchat.store import Store

pytestmark = [pytest.mark.browser]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedApp]:
    data = tmp_path_factory.mktemp("rag-browser")
    household = Household(Store(data / "localchat.db"), listen=False)
    me = household.store.builtin_member()
    libs = FakeLibraries()
    mine = libs.visible(me)[0].id
    libs.add_text(me, mine, "home-network.md", [("Guest Wi-Fi", "The guest Wi-Fi password is marigold-7731.")])
    backend = FakeBackend(lambda messages: "It is marigold-7731 [1]." if "marigold" in messages[0].content else "?")
    settings = Settings(data_dir=data, load_on_start=False)
    served = ServedApp(build_app(settings, backend=backend, household=household, libraries=libs), free_port())
    yield served
    served.stop()


def test_on_a_phone_documents_are_chosen_and_a_source_opens_its_passage(app, axe_source) -> None:  # noqa: F811
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
        context.set_default_timeout(UI_TIMEOUT)
        page = context.new_page()
        requests: list[str] = []
        context.on("request", lambda r: requests.append(r.url))
        try:
            page.goto(app.url + "/")
            choice = page.locator("#lc-documents input")
            expect(choice).to_be_visible()
            assert choice.bounding_box()["width"] <= 390
            choice.click()
            page.get_by_role("option", name="All my documents").click()
            page.locator("#lc-input textarea").fill("What is the guest Wi-Fi password?")
            page.locator("#lc-send").click()
            source = page.locator("#lc-chat a.lc-source").first
            expect(source).to_have_text("[1] home-network.md, Guest Wi-Fi")
            assert_axe_clean(page, axe_source, "a reply with sources and the Documents choice")
            with context.expect_page() as opened:
                source.click()
            passage = opened.value
            passage.wait_for_load_state()
            assert "/library/passage/" in passage.url
            expect(passage.locator("#lc-passage-text")).to_have_text("The guest Wi-Fi password is marigold-7731.")
            expect(passage.locator("#lc-passage-where")).to_have_text("Guest Wi-Fi")
            assert_axe_clean(passage, axe_source, "a cited passage")
        finally:
            context.close()
            browser.close()
    outside = sorted({r for r in requests if urlsplit(r).hostname not in LOCAL_HOSTS})
    assert not outside, "the page made requests off this machine:\n" + "\n".join(outside)
