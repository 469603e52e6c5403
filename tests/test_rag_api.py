"""Documents through the real app on loopback (FakeBackend, FakeLibraries, a real SQLite household):
the API's `libraries` extension with the official openai client, the passage route a cited source
opens, and the chat page's Documents choice and numbered sources (gradio_client), with isolation
between two members on each."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from conftest import ServedApp, free_port, sign_in
from fake_library import FakeLibraries
from fakes import FAST_HASHER, FakeBackend

from localchat.household import Household
from localchat.server import build_app
from localchat.settings import Settings
from localchat.store import Store

WIFI = "The guest Wi-Fi password is <b>marigold-7731</b> & the router is in the hall."
ASK = [{"role": "user", "content": "What is the guest Wi-Fi password?"}]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedApp]:
    """Ann (admin) has home-network.md in her private library; Bob (member) has none."""
    data = tmp_path_factory.mktemp("rag-api")
    household = Household(Store(data / "localchat.db"), listen=True, hasher=FAST_HASHER)
    members = {name: household.add_member(name, f"password-{name}", role) for name, role in
               (("Ann", "admin"), ("Bob", "member"))}  # fmt: skip
    libs = FakeLibraries()
    ann_library = libs.visible(members["Ann"])[0].id
    libs.add_text(members["Ann"], ann_library, "home-network.md", [("Guest Wi-Fi", WIFI)])
    backend = FakeBackend(lambda messages: "See [1]." if "marigold" in messages[0].content else "I do not know.")
    settings = Settings(data_dir=data, load_on_start=False, listen="0.0.0.0")
    served = ServedApp(build_app(settings, backend=backend, household=household, libraries=libs), free_port())
    served.members, served.libs, served.backend, served.ann_library = members, libs, backend, ann_library
    served.libs_store = household.store
    served.keys = {name: household.create_api_key(m, "test") for name, m in members.items()}
    yield served
    served.stop()


def client(app: ServedApp, name: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=app.url + "/v1", api_key=app.keys[name], max_retries=0, timeout=30)


def test_the_extension_field_answers_from_documents_with_sources(app) -> None:
    done = client(app, "Ann").chat.completions.create(
        model="fake-small", messages=ASK, temperature=0, extra_body={"libraries": "all"}
    )
    assert done.choices[0].message.content == "See [1]."
    sources = done.model_extra["sources"]
    assert sources == [
        {"index": 1, "document": "home-network.md", "where": "Guest Wi-Fi", "chunk_id": sources[0]["chunk_id"],
         "text": WIFI}
    ]  # fmt: skip
    system = app.backend.calls[-1].messages[0]
    assert system.role == "system" and "[1] home-network.md, Guest Wi-Fi" in system.content


def test_without_the_field_nothing_changes(app) -> None:
    done = client(app, "Ann").chat.completions.create(model="fake-small", messages=ASK)
    assert done.choices[0].message.content == "I do not know."
    assert "sources" not in (done.model_extra or {})
    assert "marigold" not in str(app.backend.calls[-1].messages)


def test_streaming_sends_the_sources_in_the_first_chunk(app) -> None:
    chunks = list(
        client(app, "Ann").chat.completions.create(
            model="fake-small", messages=ASK, stream=True, extra_body={"libraries": [app.ann_library]}
        )
    )
    assert chunks[0].model_extra["sources"][0]["document"] == "home-network.md"
    assert all("sources" not in (c.model_extra or {}) for c in chunks[1:])
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "See [1]."


def test_another_members_library_id_is_ignored_not_reported(app) -> None:
    bob = client(app, "Bob")
    for libraries in ([app.ann_library], [app.ann_library, 999999], "all"):
        done = bob.chat.completions.create(model="fake-small", messages=ASK, extra_body={"libraries": libraries})
        assert done.model_extra["sources"] == [] and done.choices[0].message.content == "I do not know."
        assert "marigold" not in str(app.backend.calls[-1].messages)


def test_a_malformed_field_is_a_400_in_openai_shape(app) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        client(app, "Ann").chat.completions.create(
            model="fake-small", messages=ASK, extra_body={"libraries": "mine please"}
        )
    assert error.value.body["param"] == "libraries"
    with pytest.raises(openai.BadRequestError):  # raw completions have no system message to hold passages
        client(app, "Ann").completions.create(model="fake-small", prompt="Hi", extra_body={"libraries": "all"})


# -- the passage a citation opens ---------------------------------------------------------------
def test_a_cited_passage_opens_for_its_member_escaped(app) -> None:
    chunk = app.libs.search(app.members["Ann"], None, "Wi-Fi password")[0].chunk_id
    ann = sign_in(app.url, "Ann")
    page = httpx.get(f"{app.url}/library/passage/{chunk}", cookies={"localchat_session": ann})
    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    assert "home-network.md" in page.text and "Guest Wi-Fi" in page.text
    assert "&lt;b&gt;marigold-7731&lt;/b&gt; &amp; the router" in page.text and "<b>marigold" not in page.text


def test_another_members_passage_is_a_404_like_a_missing_one(app) -> None:
    chunk = app.libs.search(app.members["Ann"], None, "Wi-Fi password")[0].chunk_id
    bob = sign_in(app.url, "Bob")
    theirs = httpx.get(f"{app.url}/library/passage/{chunk}", cookies={"localchat_session": bob})
    missing = httpx.get(f"{app.url}/library/passage/987654", cookies={"localchat_session": bob})
    assert theirs.status_code == missing.status_code == 404 and theirs.text == missing.text
    assert "marigold" not in theirs.text
    assert httpx.get(f"{app.url}/library/passage/abc", cookies={"localchat_session": bob}).status_code == 404
    nobody = httpx.get(f"{app.url}/library/passage/{chunk}", follow_redirects=False)
    assert nobody.status_code in (303, 401) and "marigold" not in nobody.text


# -- the chat page: the Documents choice, the numbered sources under a reply --------------------
SLIDERS = (0.0, 0.9, 40, 0.0, 1.0, 64, -1, "")


def page(app: ServedApp, name: str):
    from gradio_client import Client

    return Client(app.url, verbose=False, headers={"Cookie": f"localchat_session={sign_in(app.url, name)}"})


def test_a_reply_from_documents_shows_numbered_sources_that_open_the_passage(app) -> None:
    ann = page(app, "Ann")
    ann.predict("What is the guest Wi-Fi password?", api_name="/add_user")
    final = json.dumps(ann.predict("", *SLIDERS, "all", api_name="/respond"))
    chunk = app.libs.search(app.members["Ann"], None, "Wi-Fi password")[0].chunk_id
    link = f'<a href="/library/passage/{chunk}" target="_blank" rel="noopener" class="lc-source">'
    assert json.dumps(link)[1:-1] in final and "[1] home-network.md, Guest Wi-Fi</a>" in final
    store = app.libs_store
    (conversation,) = [store.conversation(app.members["Ann"].id, c.id) for c in store.conversations(app.members["Ann"].id)
                       if store.conversation(app.members["Ann"].id, c.id).libraries == "all"]  # fmt: skip
    assert conversation.messages[-1].sources[0].chunk_id == chunk
    ann.predict(api_name="/clear")  # a new chat, then back to this one: read from the store
    reopened = json.dumps(ann.predict(conversation.id, api_name="/open_conversation"))
    assert json.dumps(link)[1:-1] in reopened


def test_another_members_library_chosen_on_the_page_gives_nothing(app) -> None:
    bob = page(app, "Bob")
    bob.predict("What is the guest Wi-Fi password?", api_name="/add_user")
    final = json.dumps(bob.predict("", *SLIDERS, str(app.ann_library), api_name="/respond"))
    assert "I do not know." in final and "library/passage" not in final and "marigold" not in final


def test_the_libraries_run_while_the_server_does(tmp_path: Path) -> None:
    class Recording(FakeLibraries):
        def __init__(self) -> None:
            super().__init__()
            self.events: list[str] = []

        def start(self) -> None:
            self.events.append("start")

        def close(self) -> None:
            self.events.append("close")

    libs = Recording()
    household = Household(Store(tmp_path / "localchat.db"), listen=False)
    settings = Settings(data_dir=tmp_path, load_on_start=False)
    built = build_app(settings, backend=FakeBackend(), household=household, libraries=libs)
    assert built.libraries is libs and built.service.libraries is libs and libs.events == []
    served = ServedApp(built, free_port())
    assert libs.events == ["start"]
    served.stop()
    assert libs.events == ["start", "close"]
