"""Isolation between members with nothing faked but the model: the real app on loopback over the REAL
library service (SQLite, the indexer thread, the vector cache; FakeBackend embeds with a deterministic
hash), files added through the upload route, then every way one member could reach another's
passages: /v1 with the other's library ids, the passage a source opens, the chat's saved choice,
export, and a search after a member is removed and their ids are reused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace

import httpx
import openai
import pytest
from conftest import ServedApp, serve, sign_in
from fakes import FakeBackend

from localchat.household import SESSION_COOKIE

ANN_SECRET = "The safe in the study opens with 4-8-15-16. Ann keeps the deeds there."
ANN_LATER = "Ann's bank PIN is 2718 and the spare key is under the blue pot."
CY_NOTE = "Cy's locker code is 1234 and the bike lock is 9876."
ASK = [{"role": "user", "content": "What opens the safe in the study, and where is the key?"}]
SLIDERS = (0.0, 0.9, 40, 0.0, 1.0, 64, -1, "")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedApp]:
    """Ann (admin) has safe.md in her private library, added through the route; Bob has his own."""
    backend = FakeBackend("ok")
    served = serve(tmp_path_factory.mktemp("isolation"), backend, members={"Ann": "admin", "Bob": "member"})
    served.backend, served.libs, served.household = backend, served.app.libraries, served.app.household
    served.cookies = {name: sign_in(served.url, name) for name in ("Ann", "Bob")}
    for name, file, text in (("Ann", "safe.md", ANN_SECRET), ("Bob", "bike.md", "Bob's bike is blue.")):
        upload(served, name, file, text)
    served.keys = {name: served.household.create_api_key(member(served, name), "test") for name in ("Ann", "Bob")}
    yield served
    served.stop()


def member(app: ServedApp, name: str):
    return app.household.store.member_by_name(name)


def upload(app: ServedApp, name: str, file: str, text: str, cookie: str | None = None) -> None:
    r = httpx.post(
        app.url + "/documents/files",
        params={"library": "mine", "name": file},
        content=text.encode(),
        cookies={SESSION_COOKIE: cookie or app.cookies[name]},
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.text
    assert app.libs.wait_idle(30)


def mine(app: ServedApp, name: str) -> int:
    m = member(app, name)
    return next(lib.id for lib in app.libs.visible(m) if lib.owner_id == m.id)


def ann_chunk(app: ServedApp) -> int:
    return app.libs.search(member(app, "Ann"), None, "safe in the study")[0].chunk_id


def client(app: ServedApp, name: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=app.url + "/v1", api_key=app.keys[name], max_retries=0, timeout=30)


def prompt(app: ServedApp) -> str:
    return str(app.backend.calls[-1].messages)


def test_each_members_upload_is_searched_for_them_alone(app) -> None:
    ann, bob = member(app, "Ann"), member(app, "Bob")
    assert [p.document for p in app.libs.search(ann, None, "safe study")] == ["safe.md"]
    assert all(p.document != "safe.md" for p in app.libs.search(bob, None, "safe study"))
    done = client(app, "Ann").chat.completions.create(model="fake-small", messages=ASK, extra_body={"libraries": "all"})
    assert done.model_extra["sources"][0]["document"] == "safe.md" and "4-8-15-16" in prompt(app)


def test_the_api_ignores_another_members_library_ids(app) -> None:
    bob = client(app, "Bob")
    for libraries in ([mine(app, "Ann")], [mine(app, "Ann"), mine(app, "Bob")], "all"):
        done = bob.chat.completions.create(model="fake-small", messages=ASK, extra_body={"libraries": libraries})
        assert all(s["document"] != "safe.md" for s in done.model_extra["sources"])
        assert "4-8-15-16" not in prompt(app) and "4-8-15-16" not in json.dumps(done.model_extra)


def test_a_passage_opens_only_for_its_member(app) -> None:
    chunk = ann_chunk(app)
    url = f"{app.url}/library/passage/{chunk}"
    assert "4-8-15-16" in httpx.get(url, cookies={SESSION_COOKIE: app.cookies["Ann"]}).text
    theirs = httpx.get(url, cookies={SESSION_COOKIE: app.cookies["Bob"]})
    missing = httpx.get(f"{app.url}/library/passage/{chunk + 100000}", cookies={SESSION_COOKIE: app.cookies["Bob"]})
    assert theirs.status_code == missing.status_code == 404 and theirs.text == missing.text


def test_a_chat_saved_with_another_members_library_gives_nothing(app) -> None:
    from gradio_client import Client

    bob, handlers = member(app, "Bob"), app.app.ui.chat
    request = SimpleNamespace(username=str(bob.id), session_hash="isolation")
    chats = handlers.chats
    cid, _ = chats.add_user(bob, None, [], ASK[0]["content"])
    handlers.choose_documents(str(mine(app, "Ann")), cid, request)  # as if the page sent Ann's id
    menu = handlers.documents_menu(cid, request)
    assert menu.value == "none" and str(mine(app, "Ann")) not in {v for _, v in menu.choices}
    page = Client(app.url, verbose=False, headers={"Cookie": f"{SESSION_COOKIE}={app.cookies['Bob']}"})
    page.predict(ASK[0]["content"], api_name="/add_user")
    final = json.dumps(page.predict("", *SLIDERS, str(mine(app, "Ann")), api_name="/respond"))
    assert "library/passage" not in final and "4-8-15-16" not in final and "4-8-15-16" not in prompt(app)


def test_an_export_holds_only_the_members_own_sources(app) -> None:
    store, ann, bob = app.household.store, member(app, "Ann"), member(app, "Bob")
    chats = app.app.ui.chat.chats
    cid, _ = chats.add_user(ann, None, [], ASK[0]["content"])
    from localchat.core import Reply
    from localchat.types import SamplingParams

    list(chats.reply(ann, cid, [], "", SamplingParams(max_new_tokens=8), Reply(), libraries="all"))
    assert store.conversation(ann.id, cid).messages[-1].sources

    def export(name: str, stem: str) -> httpx.Response:
        return httpx.get(f"{app.url}/export/{stem}.json", cookies={SESSION_COOKIE: app.cookies[name]})

    assert "[1] safe.md" in export("Ann", cid).text  # sources travel as their citations
    assert export("Bob", cid).status_code == 404
    everything = export("Bob", "all")
    assert everything.status_code == 200 and "safe.md" not in everything.text and "4-8-15-16" not in everything.text
    assert all(store.conversation(bob.id, c.id) for c in store.conversations(bob.id))


def test_a_removed_members_cached_vectors_never_answer_for_the_next_member(app) -> None:
    household, libs = app.household, app.libs
    ann = member(app, "Ann")
    household.add_member("Cy", "password-Cy", "member")
    upload(app, "Cy", "locker.md", CY_NOTE, sign_in(app.url, "Cy"))
    cy = member(app, "Cy")
    cy_library = mine(app, "Cy")
    assert libs.search(cy, None, "locker code")[0].document == "locker.md"  # Cy's vectors are now cached
    household.remove_member(ann, cy.id)
    upload(app, "Ann", "later.md", ANN_LATER)  # Ann's new chunks may take the ids Cy's had
    household.add_member("Dan", "password-Dan", "member")
    dan = member(app, "Dan")
    dan_library = mine(app, "Dan")  # may be the id Cy's library had
    found = libs.search(dan, None, "bank PIN spare key locker code")
    assert found == [], f"Dan (library {dan_library}, Cy's was {cy_library}) was given {found}"
    for passage in libs.search(ann, None, "bank PIN spare key"):
        assert passage.library_id == mine(app, "Ann")
