"""Household mode through the real app on a loopback port: sign-in, sessions, the Host/Origin
policy, export/import, and every cross-member access failing (HTTP routes and Gradio handlers)."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from conftest import serve, sign_in
from gradio_client import Client

from localchat.household import SESSION_COOKIE


def get(url: str, cookie: str | None = None, **kw) -> httpx.Response:
    cookies = {SESSION_COOKIE: cookie} if cookie else None
    return httpx.get(url, cookies=cookies, follow_redirects=False, **kw)


def ann_chat(app, text: str = "Ann's secret: the party is on Friday") -> str:
    store = app.app.household.store
    ann = store.member_by_name("Ann")
    chat = store.create_conversation(ann.id, text)
    store.put_message(ann.id, chat, 0, "user", text)
    store.put_message(ann.id, chat, 1, "assistant", "Noted!", "2 tokens")
    return chat


# -- modes ----------------------------------------------------------------------------------
def test_single_user_on_loopback_needs_no_sign_in(tmp_path: Path) -> None:
    app = serve(tmp_path, listen=False)
    try:
        page = get(app.url + "/", headers={"Accept": "text/html"})
        assert page.status_code == 200 and "<gradio-app" in page.text.lower() or "gradio" in page.text.lower()
        assert get(app.url + "/login").headers["location"] == "/"
        assert get(app.url + "/setup").status_code == 200  # the first-run page, from this computer
    finally:
        app.stop()


def test_the_first_run_page_creates_the_admin_who_keeps_earlier_chats(tmp_path: Path) -> None:
    app = serve(tmp_path, listen=False)
    try:
        store = app.app.household.store
        own = store.builtin_member()
        early = store.create_conversation(own.id, "made before accounts existed")
        r = httpx.post(app.url + "/setup", data={"name": "Ann", "password": "correct horse"})
        assert r.status_code == 303 and r.cookies.get(SESSION_COOKIE)
        ann = store.member_by_name("Ann")
        assert ann.is_admin and [c.id for c in store.conversations(ann.id)] == [early]
        assert get(app.url + "/setup").status_code == 404  # once an account exists, never again
        assert get(app.url + "/", headers={"Accept": "text/html"}).status_code == 303  # now everyone signs in
    finally:
        app.stop()


def test_household_mode_shows_the_sign_in_page_to_strangers(household_app) -> None:
    page = get(household_app.url + "/", headers={"Accept": "text/html"})
    assert page.status_code == 303 and page.headers["location"] == "/login"
    assert get(household_app.url + "/gradio_api/info").status_code == 401
    assert get(household_app.url + "/config").status_code == 401
    assert get(household_app.url + "/export/all.json").status_code == 401
    login = get(household_app.url + "/login")
    assert login.status_code == 200 and 'name="password"' in login.text
    assert get(household_app.url + "/health").status_code == 200


# -- sign-in and sessions -------------------------------------------------------------------
def test_wrong_password_is_refused_without_saying_which_part_was_wrong(household_app) -> None:
    for name, password in (("Ann", "wrong"), ("Nobody", "password-Nobody")):
        r = httpx.post(household_app.url + "/login", data={"name": name, "password": password})
        assert r.status_code == 401 and "Wrong name or password" in r.text
        assert SESSION_COOKIE not in r.cookies


def test_sign_in_sets_an_http_only_cookie_and_opens_the_app(household_app) -> None:
    r = httpx.post(household_app.url + "/login", data={"name": "ann", "password": "password-Ann", "next": "/"})
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "path=/" in cookie
    assert get(household_app.url + "/", r.cookies[SESSION_COOKIE], headers={"Accept": "text/html"}).status_code == 200
    stored = sqlite3.connect(household_app.app.household.store.db.path).execute("SELECT token_hash FROM sessions")
    assert r.cookies[SESSION_COOKIE] not in [row[0] for row in stored]  # only a hash is kept


def test_repeated_wrong_passwords_are_rate_limited(household_app) -> None:
    url = household_app.url + "/login"
    codes = [httpx.post(url, data={"name": "Bob", "password": f"guess{i}"}).status_code for i in range(6)]
    assert codes[:5] == [401] * 5 and codes[5] == 429
    r = httpx.post(url, data={"name": "Bob", "password": "password-Bob"})  # even the right one waits now
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0 and "Too many" in r.text
    assert httpx.post(url, data={"name": "Ann", "password": "password-Ann"}).status_code == 303  # others are unaffected


def test_an_expired_session_must_sign_in_again(household_app) -> None:
    cookie = sign_in(household_app.url, "Bob")
    household_app.app.household.store.db.execute("UPDATE sessions SET expires_at = 0")
    assert get(household_app.url + "/", cookie, headers={"Accept": "text/html"}).headers["location"] == "/login"


def test_a_session_survives_a_restart(tmp_path: Path) -> None:
    first = serve(tmp_path, members={"Ann": "admin"})
    cookie = sign_in(first.url, "Ann")
    first.stop()
    first.app.household.store.close()
    second = serve(tmp_path)
    try:
        assert get(second.url + "/export/all.json", cookie).status_code == 200
    finally:
        second.stop()


def test_sign_out_and_a_password_change_end_sessions(household_app) -> None:
    url = household_app.url
    laptop, phone = sign_in(url, "Bob"), sign_in(url, "Bob")
    httpx.post(url + "/logout", cookies={SESSION_COOKIE: laptop})
    assert get(url + "/export/all.json", laptop).status_code == 401
    assert get(url + "/export/all.json", phone).status_code == 200
    household = household_app.app.household
    bob = household.store.member_by_name("Bob")
    household.reset_password(household.store.member_by_name("Ann"), bob.id, "a new password")
    assert get(url + "/export/all.json", phone).status_code == 401
    assert sign_in(url, "Bob", "a new password")


# -- Host and Origin policy -----------------------------------------------------------------
def test_a_lan_host_with_a_foreign_origin_gets_no_cors_grant(household_app) -> None:
    cookie = sign_in(household_app.url, "Ann")
    lan = {"Host": f"192.168.1.20:{household_app.port}"}
    foreign = {**lan, "Origin": "http://evil.example"}
    for path in ("/gradio_api/info", "/config", "/export/all.json"):
        r = get(household_app.url + path, cookie, headers=foreign)
        assert not any(h.lower().startswith("access-control-") for h in r.headers), (path, r.headers)
    preflight = httpx.options(
        household_app.url + "/gradio_api/queue/join",
        headers={**foreign, "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 403 and "access-control-allow-origin" not in preflight.headers
    post = httpx.post(household_app.url + "/import", content=b"[]", cookies={SESSION_COOKIE: cookie}, headers=foreign)
    assert post.status_code == 403
    same = {**lan, "Origin": f"http://192.168.1.20:{household_app.port}", "Content-Type": "application/json"}
    ok = httpx.post(
        household_app.url + "/import",
        content=json.dumps([{"role": "user", "content": "hi"}]),
        cookies={SESSION_COOKIE: cookie},
        headers=same,
    )
    assert ok.status_code == 200 and ok.json()["imported"] == 1


def test_an_unknown_host_name_is_refused(household_app) -> None:
    """DNS rebinding: a page on evil.example whose name now points at this machine."""
    r = get(household_app.url + "/health", headers={"Host": "evil.example"})
    assert r.status_code == 421
    assert get(household_app.url + "/health", headers={"Host": "localhost:7860"}).status_code == 200


def test_gradio_uploads_recordings_and_fetches_are_turned_off(household_app) -> None:
    cookie = sign_in(household_app.url, "Ann")
    files = {"files": ("chat.txt", b"Ann's chat", "text/plain")}
    for path in ("/gradio_api/upload", "/gradio_api/process_recording"):
        r = httpx.post(household_app.url + path, files=files, cookies={SESSION_COOKIE: cookie})
        assert r.status_code == 403, path
    assert get(household_app.url + "/gradio_api/file=https://example.com/x", cookie).status_code == 403


def test_gradio_keeps_no_run_history_in_the_browser(household_app) -> None:
    config = get(household_app.url + "/config", sign_in(household_app.url, "Ann")).json()
    assert config["run_history"] is False


def test_other_cookies_on_the_same_host_do_not_break_the_session(household_app) -> None:
    cookie = sign_in(household_app.url, "Ann")
    header = f'theme={{"a":1}}; x[1]=2; {SESSION_COOKIE}={cookie}; other=a b'
    r = httpx.get(household_app.url + "/export/all.json", headers={"Cookie": header})
    assert r.status_code == 200


def test_export_of_a_title_in_any_script(household_app) -> None:
    chat = ann_chat(household_app, "Привет, как дела? 你好")
    r = get(household_app.url + f"/export/{chat}.md", sign_in(household_app.url, "Ann"))
    assert r.status_code == 200 and "Привет" in r.text


# -- export and import ----------------------------------------------------------------------
def test_export_and_import_round_trip(household_app) -> None:
    chat = ann_chat(household_app)
    cookie = sign_in(household_app.url, "Ann")
    md = get(household_app.url + f"/export/{chat}.md", cookie)
    assert md.status_code == 200 and "attachment" in md.headers["content-disposition"]
    assert "**You:**" in md.text and "the party is on Friday" in md.text and "Noted!" in md.text
    exported = get(household_app.url + "/export/all.json", cookie)
    assert exported.json()["conversations"][0]["messages"][1] == {
        "role": "assistant",
        "content": "Noted!",
        "stats": "2 tokens",
    }
    r = httpx.post(
        household_app.url + "/import",
        content=exported.content,
        headers={"Content-Type": "application/json"},
        cookies={SESSION_COOKIE: cookie},
    )
    assert r.status_code == 200 and r.json()["imported"] == 1
    multipart = httpx.post(
        household_app.url + "/import",
        files={"file": ("chats.json", exported.content, "application/json")},
        cookies={SESSION_COOKIE: cookie},
    )
    assert multipart.status_code == 400  # no temporary upload files outside the data dir
    store = household_app.app.household.store
    ann = store.member_by_name("Ann")
    chats = [store.conversation(ann.id, c.id) for c in store.conversations(ann.id)]
    assert len(chats) == 2 and chats[0].messages == chats[1].messages


def test_a_bad_import_file_changes_nothing_and_says_why(household_app) -> None:
    cookie = sign_in(household_app.url, "Ann")
    bad = {
        "format": "localchat.conversations",
        "version": 1,
        "conversations": [
            {"title": "ok", "messages": [{"role": "user", "content": "fine"}]},
            {"title": "broken", "messages": [{"role": "robot", "content": 3}]},
        ],
    }
    r = httpx.post(
        household_app.url + "/import",
        content=json.dumps(bad),
        headers={"Content-Type": "application/json"},
        cookies={SESSION_COOKIE: cookie},
    )
    assert r.status_code == 400 and "Conversation 2, message 1" in r.json()["error"]["message"]
    ann = household_app.app.household.store.member_by_name("Ann")
    assert household_app.app.household.store.conversations(ann.id) == []


# -- isolation between members --------------------------------------------------------------
def test_a_member_cannot_export_another_members_conversation(household_app) -> None:
    chat = ann_chat(household_app)
    bob = sign_in(household_app.url, "Bob")
    for path in (f"/export/{chat}.json", f"/export/{chat}.md"):
        r = get(household_app.url + path, bob)
        assert r.status_code == 404 and "party" not in r.text
    assert json.loads(get(household_app.url + "/export/all.json", bob).text)["conversations"] == []
    assert "party" not in get(household_app.url + "/export/all.md", bob).text


def test_gradio_handlers_never_reach_another_members_conversation(household_app) -> None:
    chat = ann_chat(household_app)
    bob = Client(
        household_app.url, verbose=False, headers={"Cookie": f"{SESSION_COOKIE}={sign_in(household_app.url, 'Bob')}"}
    )
    try:
        result = bob.predict(chat, api_name="/open_conversation")
    except Exception as exc:  # noqa: BLE001 - refused outright is as good as refused quietly
        result = str(exc)
    assert "party" not in json.dumps(result, default=str)
    for name in ("/rename_conversation", "/delete_conversation"):  # these act on Bob's own open chat only
        try:
            bob.predict("stolen title", "", api_name=name) if "rename" in name else bob.predict("", api_name=name)
        except Exception:  # noqa: BLE001
            pass
    store = household_app.app.household.store
    ann = store.member_by_name("Ann")
    assert store.conversation(ann.id, chat).title.startswith("Ann's secret")
    lines = bob.predict("how are you?", api_name="/add_user")
    assert "party" not in json.dumps(lines, default=str)


def test_a_member_cannot_read_another_members_stream_by_its_session_hash(household_app) -> None:
    ann, bob = sign_in(household_app.url, "Ann"), sign_in(household_app.url, "Bob")
    body = {"data": [], "fn_index": 0, "session_hash": "ann-tab-1", "event_data": None, "trigger_id": None}
    httpx.post(household_app.url + "/gradio_api/queue/join", json=body, cookies={SESSION_COOKIE: ann})
    r = get(household_app.url + "/gradio_api/queue/data?session_hash=ann-tab-1", bob)
    assert r.status_code == 403
    body["session_hash"] = "ann-tab-1"
    r = httpx.post(household_app.url + "/gradio_api/queue/join", json=body, cookies={SESSION_COOKIE: bob})
    assert r.status_code == 403
    assert get(household_app.url + "/gradio_api/heartbeat/ann-tab-1", bob).status_code == 403
    # a second, innocent-looking value in front must not hide the victim's hash
    r = get(household_app.url + "/gradio_api/queue/data?session_hash=bob-tab&session_hash=ann-tab-1", bob)
    assert r.status_code == 403
    for path in ("/gradio_api/run/predict", "/gradio_api/call/respond", "/gradio_api/cancel"):
        r = httpx.post(household_app.url + path, json={"data": [], "fn_index": 1, "session_hash": "ann-tab-1"},
                       cookies={SESSION_COOKIE: bob})  # fmt: skip
        assert r.status_code == 403, path


def test_only_admins_load_models(household_app) -> None:
    bob = Client(
        household_app.url, verbose=False, headers={"Cookie": f"{SESSION_COOKIE}={sign_in(household_app.url, 'Bob')}"}
    )
    out = bob.predict("fake-large", "none", "cpu", "auto", 0, "nf4", "auto", True, api_name="/load_model")
    assert "Only a household admin" in out
    assert household_app.app.backend.loaded() is None or household_app.app.backend.loaded().name != "fake-large"
    ann = Client(
        household_app.url, verbose=False, headers={"Cookie": f"{SESSION_COOKIE}={sign_in(household_app.url, 'Ann')}"}
    )
    assert "Loaded" in ann.predict("fake-large", "none", "cpu", "auto", 0, "nf4", "auto", True, api_name="/load_model")


@pytest.mark.parametrize("path", ["/", "/login", "/setup"])
def test_the_first_run_page_is_never_offered_on_the_network(household_app, path: str) -> None:
    r = get(household_app.url + path, headers={"Host": f"192.168.1.20:{household_app.port}"})
    assert "Create admin account" not in r.text


def test_a_streaming_reply_ends_when_its_session_is_signed_out(tmp_path: Path, monkeypatch) -> None:
    from fakes import FakeBackend

    import localchat.ui.chat as ui_module

    monkeypatch.setattr(ui_module, "SESSION_RECHECK", 0.0)
    slow = FakeBackend(" ".join(f"w{i}" for i in range(300)), model="fake-small", delay=0.02)
    app = serve(tmp_path, backend=slow, members={"Ann": "admin"})
    try:
        cookie = sign_in(app.url, "Ann")
        ann = Client(app.url, verbose=False, headers={"Cookie": f"{SESSION_COOKIE}={cookie}"})
        ann.predict("tell me a long story", api_name="/add_user")
        job = ann.submit("", 0.5, 0.9, 40, 0.0, 1.0, 300, -1, "", api_name="/respond")
        while len(job.outputs()) < 3:
            time.sleep(0.02)
        httpx.post(app.url + "/logout", cookies={SESSION_COOKIE: cookie})
        job.result(timeout=30)
        final = json.dumps(job.outputs()[-1])
        assert "stopped" in final and "w299" not in final
    finally:
        app.stop()
