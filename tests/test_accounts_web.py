"""Accounts through the real app on loopback, served the way `localchat` serves it (cli.server_config):
password resets and removals revoke API keys, admins review and revoke members' keys, a guesser
cannot lock a member out, and X-Forwarded-For is believed only from a configured proxy."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import openai
import pytest
from conftest import free_port, sign_in
from fakes import FAST_HASHER, FakeBackend

from localchat.cli import server_config
from localchat.household import DEVICE_COOKIE, SESSION_COOKIE, Household, LoginLimiter
from localchat.server import build_app
from localchat.settings import Settings
from localchat.store import Store

MEMBERS = {"Ann": "admin", "Bob": "member", "Cat": "member", "Dan": "member", "Eve": "member", "Fay": "member"}


class CliServed:
    """build_app on a real uvicorn server configured by cli.server_config, on a loopback port."""

    def __init__(self, data_dir: Path, trusted_proxies: str = ""):
        import uvicorn

        self.household = Household(Store(data_dir / "localchat.db"), listen=True, hasher=FAST_HASHER)
        for name, role in MEMBERS.items():
            self.household.add_member(name, f"password-{name}", role)
        settings = Settings(data_dir=data_dir, load_on_start=False, listen="0.0.0.0", trusted_proxies=trusted_proxies)
        self.app = build_app(settings, backend=FakeBackend("Hello"), household=self.household)
        served = replace(settings, listen="127.0.0.1", port=free_port())  # the same config, on loopback only
        self.url = f"http://127.0.0.1:{served.port}"
        self.server = uvicorn.Server(server_config(self.app.api, served))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the app did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(5)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(15)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliServed]:
    served = CliServed(tmp_path_factory.mktemp("accounts"))
    yield served
    served.stop()


@pytest.fixture(autouse=True)
def fresh_limits(request: pytest.FixtureRequest) -> None:
    """Each test starts with no failed sign-ins counted (the app is shared by the module)."""
    if "app" in request.fixturenames:
        request.getfixturevalue("app").household.limiter = LoginLimiter()


def from_address(address: str) -> httpx.Client:
    """A client whose connections come from another loopback address: another device to the server."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address))


def api_works(app: CliServed, key: str) -> bool:
    client = openai.OpenAI(base_url=app.url + "/v1", api_key=key, max_retries=0, timeout=30)
    try:
        client.models.list()
    except openai.AuthenticationError:
        return False
    return True


def gradio(app: CliServed, cookie: str, api_name: str, *data, tab: str = "tab") -> httpx.Response:
    """Fire a page event as the browser does (run/predict by fn_index), found by its api_name."""
    cookies = {SESSION_COOKIE: cookie}
    config = httpx.get(app.url + "/config", cookies=cookies).json()
    fn = next(d["id"] for d in config["dependencies"] if d.get("api_name") == api_name)
    body = {"data": list(data), "fn_index": fn, "session_hash": f"{cookie[:8]}-{tab}"}
    return httpx.post(app.url + "/gradio_api/run/predict", json=body, cookies=cookies, timeout=30)


def new_key(app: CliServed, name: str) -> tuple[str, int]:
    member = app.household.store.member_by_name(name)
    key = app.household.create_api_key(member, f"{name}'s editor")
    return key, app.household.store.api_keys(member.id)[-1].id


# -- API keys follow the account ----------------------------------------------------------------
def test_an_admins_password_reset_revokes_the_members_api_keys(app: CliServed) -> None:
    key, _ = new_key(app, "Bob")
    bob_session = sign_in(app.url, "Bob")
    assert api_works(app, key)
    ann = sign_in(app.url, "Ann")
    assert gradio(app, ann, "refresh").status_code == 200  # the panel opens: fills the member list
    r = gradio(app, ann, "reset_password", "Bob", "a brand new password")
    assert r.status_code == 200, r.text
    assert not api_works(app, key)  # whoever had the account had its keys too
    assert "API keys are revoked" in r.json()["data"][0]
    assert httpx.get(app.url + "/export/all.json", cookies={SESSION_COOKIE: bob_session}).status_code == 401
    assert sign_in(app.url, "Bob", "a brand new password")


def test_removing_a_member_revokes_their_api_keys(app: CliServed) -> None:
    key, _ = new_key(app, "Eve")
    assert api_works(app, key)
    ann = sign_in(app.url, "Ann")
    gradio(app, ann, "refresh")
    r = gradio(app, ann, "remove", "Eve")
    assert r.status_code == 200, r.text
    assert not api_works(app, key)  # (the keys' rows go with the member's: this held before too)
    assert "API keys" in r.json()["data"][0]


def test_an_admin_lists_and_revokes_a_members_key_and_a_member_cannot(app: CliServed) -> None:
    cat_key, cat_key_id = new_key(app, "Cat")
    ann_key, ann_key_id = new_key(app, "Ann")
    cat = sign_in(app.url, "Cat")
    r = gradio(app, cat, "refresh")
    assert "lc-" not in r.text and "Only a household admin" in r.text, r.text
    r = gradio(app, cat, "revoke_household_key", ann_key_id)
    assert "✓" not in r.text and "lc-" not in r.text, r.text
    assert api_works(app, ann_key)
    ann = sign_in(app.url, "Ann")
    listing = gradio(app, ann, "refresh").json()["data"][-1]
    labels = {value: label for label, value in listing["choices"]}
    assert labels[cat_key_id].startswith("Cat: Cat's editor (lc-") and cat_key not in str(listing)
    assert labels[ann_key_id].startswith("Ann: ")
    r = gradio(app, ann, "revoke_household_key", cat_key_id)
    assert r.json()["data"][0].startswith("✓"), r.text
    assert not api_works(app, cat_key) and api_works(app, ann_key)
    assert cat_key_id not in [value for _, value in r.json()["data"][1]["choices"]]


def test_a_member_changes_their_own_password_and_other_devices_are_signed_out(app: CliServed) -> None:
    laptop, phone = sign_in(app.url, "Fay"), sign_in(app.url, "Fay")
    r = gradio(app, phone, "change_password", "wrong password", "a new long password", "a new long password")
    assert "current password is wrong" in r.text
    r = gradio(app, phone, "change_password", "password-Fay", "a new long password", "a new long password")
    assert r.json()["data"][0].startswith("✓"), r.text
    assert httpx.get(app.url + "/export/all.json", cookies={SESSION_COOKIE: laptop}).status_code == 401
    assert httpx.get(app.url + "/export/all.json", cookies={SESSION_COOKIE: phone}).status_code == 200
    assert sign_in(app.url, "Fay", "a new long password")


# -- sign-in limits -----------------------------------------------------------------------------
def test_wrong_passwords_from_one_device_do_not_lock_the_member_out_of_another(app: CliServed) -> None:
    with from_address("127.0.0.2") as guesser:
        codes = [
            guesser.post(app.url + "/login", data={"name": "Dan", "password": f"g{i}"}).status_code for i in range(8)
        ]
        assert codes[:5] == [401] * 5 and set(codes[5:]) == {429}  # the guessing device waits
    with from_address("127.0.0.1") as own:
        r = own.post(app.url + "/login", data={"name": "Dan", "password": "password-Dan"})
    assert r.status_code == 303 and r.cookies.get(SESSION_COOKIE)  # Dan, from his own device, signs in


def test_a_guesser_on_the_same_computer_does_not_lock_out_a_browser_the_member_used_before(app: CliServed) -> None:
    """Same address (one PC, or one NAT): the member's browser carries the device cookie it got at
    its last sign-in, and is counted apart from the other browser that fails on the name."""
    with httpx.Client(base_url=app.url) as own, httpx.Client(base_url=app.url) as guesser:
        r = own.post("/login", data={"name": "Dan", "password": "password-Dan"})
        assert r.status_code == 303 and own.cookies.get(DEVICE_COOKIE)
        device = next(c for c in r.headers.get_list("set-cookie") if c.startswith(DEVICE_COOKIE + "="))
        assert all(part in device.lower() for part in ("httponly", "samesite=lax", "path=/", "max-age="))
        own.post("/logout")
        codes = [guesser.post("/login", data={"name": "Dan", "password": f"g{i}"}).status_code for i in range(8)]
        assert codes[:5] == [401] * 5 and set(codes[5:]) == {429}  # the guessing browser waits
        guesser.cookies.set(DEVICE_COOKIE, "made-up")
        assert guesser.post("/login", data={"name": "Dan", "password": "password-Dan"}).status_code == 429
        r = own.post("/login", data={"name": "Dan", "password": "password-Dan"})
        assert r.status_code == 303 and r.cookies.get(SESSION_COOKIE)  # Dan's own browser signs in


def test_forwarded_for_from_a_loopback_client_does_not_pick_its_address(app: CliServed) -> None:
    app.household.limiter = LoginLimiter(per_client=3)
    codes = [
        httpx.post(
            app.url + "/login",
            data={"name": f"nobody{i}", "password": "x"},
            headers={"X-Forwarded-For": f"10.9.{i}.1"},
        ).status_code
        for i in range(5)
    ]
    assert codes == [401, 401, 401, 429, 429]  # counted as the one real client: 127.0.0.1


def test_forwarded_for_is_believed_from_a_configured_proxy(tmp_path: Path) -> None:
    proxied = CliServed(tmp_path, trusted_proxies="127.0.0.1")
    try:
        proxied.household.limiter = LoginLimiter(per_client=3)
        for i in range(5):  # five people behind the proxy, one guess each: nobody is limited
            r = httpx.post(
                proxied.url + "/login",
                data={"name": f"nobody{i}", "password": "x"},
                headers={"X-Forwarded-For": f"10.9.{i}.1"},
            )
            assert r.status_code == 401
    finally:
        proxied.stop()
