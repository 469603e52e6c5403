"""Household rules without HTTP: accounts, sessions, the rate limit, what admins and members may
do, and the UI handlers saving conversations and applying an admin's limits (FakeBackend, real
SQLite file)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
from conftest import ROOT, Clock
from fakes import FAST_HASHER, FakeBackend

from localchat.core import ChatService
from localchat.household import AccessDenied, Household, LoginLimiter, LoginRefused, RateLimited
from localchat.settings import Settings
from localchat.store import Store
from localchat.types import LoadOptions
from localchat.ui.admin import AdminPanel
from localchat.ui.app import ChatUI

PRESETS = ROOT / "presets"
SAMPLING = [0.5, 0.9, 40, 0.0, 1.1, 64, -1, ""]


def as_member(household: Household, name: str, tab: str = "tab") -> SimpleNamespace:
    """A gr.Request stand-in as Gradio builds it after web.auth_dependency resolved the session."""
    return SimpleNamespace(session_hash=f"{name}-{tab}", username=str(household.store.member_by_name(name).id))


def ui_for(household: Household, reply: str = "Hello there friend") -> tuple[ChatUI, FakeBackend]:
    backend = FakeBackend(reply)
    return ChatUI(ChatService(backend, PRESETS), Settings(), household, update_interval=0), backend


# -- accounts and sessions ------------------------------------------------------------------
def test_passwords_are_stored_as_argon2id_hashes(household: Household) -> None:
    stored = household.store.password_hash(household.store.member_by_name("Ann").id)
    assert stored.startswith("$argon2id$") and "ann-password" not in stored


def test_names_and_passwords_are_checked(household: Household) -> None:
    with pytest.raises(ValueError, match="at least 8"):
        household.add_member("Cat", "short")
    with pytest.raises(ValueError, match="letters"):
        household.add_member("<script>", "long enough password")
    with pytest.raises(Exception, match="already"):
        household.add_member("ann", "another password")


def test_login_and_logout(household: Household) -> None:
    session = household.login("Ann", "ann-password", "10.0.0.2")
    assert household.member_for_token(session.token).name == "Ann"
    household.logout(session.token)
    assert household.member_for_token(session.token) is None
    with pytest.raises(LoginRefused):
        household.login("Ann", "bob-password", "10.0.0.2")
    with pytest.raises(LoginRefused):
        household.login("Nobody", "ann-password", "10.0.0.2")


def test_the_rate_limit_is_per_client_and_per_client_and_name_and_expires() -> None:
    clock = Clock()
    limiter = LoginLimiter(per_client=5, per_pair=3, per_name=100, window=60, clock=clock)
    for _ in range(3):
        limiter.attempt("ann", "10.0.0.2")
    with pytest.raises(RateLimited) as exc:
        limiter.attempt("Ann", "10.0.0.2")  # this client has guessed Ann's password three times
    assert 0 < exc.value.retry_after <= 60
    limiter.attempt("Ann", "10.0.0.9")  # Ann herself, on her own device, is not locked out
    limiter.succeeded("Ann", "10.0.0.9")
    limiter.attempt("x", "10.0.0.2")
    limiter.attempt("y", "10.0.0.2")
    with pytest.raises(RateLimited):
        limiter.attempt("bob", "10.0.0.2")  # this client has tried five times
    with pytest.raises(RateLimited):
        limiter.attempt("z" * 60000, "10.0.0.2")  # a blocked client cannot add entries
    assert all("z" * 100 not in "".join(key) for key in limiter._failures)
    clock.now += 61
    limiter.attempt("ann", "10.0.0.2")
    limiter.succeeded("ann", "10.0.0.2")
    assert ("pair", "10.0.0.2", "ann") not in limiter._failures and not limiter._failures.get(("name", "ann"))


def test_a_name_under_attack_is_slowed_for_guessers_but_never_locked_for_its_member() -> None:
    """Many clients guessing one name (each under its own limits) slow that name down only for
    clients that failed on it, by a bounded delay; a client that did not fail signs in at once."""
    clock = Clock()
    limiter = LoginLimiter(per_client=20, per_pair=5, per_name=10, window=900, delay=2.0, max_delay=60, clock=clock)
    for i in range(10):
        limiter.attempt("Bob", f"10.0.0.{i}")  # ten misses: the name is under attack from now on
    for i in range(10, 200):  # every further address gets one guess, then waits (a minute at most)
        limiter.attempt("Bob", f"10.0.0.{i}")
        with pytest.raises(RateLimited) as exc:
            limiter.attempt("Bob", f"10.0.0.{i}")
        assert 0 < exc.value.retry_after <= 60
    for i in range(1100):  # so many misses that 2**misses would not fit a float
        limiter.attempt("Bob", f"10.1.{i // 250}.{i % 250}")
    limiter.attempt("Bob", "192.168.1.7")  # Bob's own phone: never failed, never waits
    limiter.succeeded("Bob", "192.168.1.7")
    limiter.attempt("Bob", "192.168.1.7")  # even a typo there costs him at most a minute
    with pytest.raises(RateLimited) as exc:
        limiter.attempt("Bob", "192.168.1.7")
    assert exc.value.retry_after == 60
    clock.now += 60
    limiter.attempt("Bob", "192.168.1.7")
    limiter.succeeded("Bob", "192.168.1.7")


def test_a_guesser_cannot_escape_its_limit_with_fresh_ipv6_addresses() -> None:
    limiter = LoginLimiter(per_client=3, per_pair=3, clock=Clock())
    for i in range(3):
        limiter.attempt(f"name{i}", f"2001:db8:1:2::{i + 1}")
    with pytest.raises(RateLimited):
        limiter.attempt("other", "2001:db8:1:2:abcd::9")  # same /64: the same device to the limiter
    limiter.attempt("other", "2001:db8:1:3::1")  # another network is another client
    limiter.attempt("other", "::ffff:10.0.0.2")
    assert LoginLimiter.client_key("::ffff:10.0.0.2") == "10.0.0.2"


def test_a_successful_sign_in_does_not_use_up_the_limit(household: Household) -> None:
    for _ in range(10):
        household.login("Ann", "ann-password", "10.0.0.2")


def test_a_password_change_ends_every_other_session_and_keeps_this_one(household: Household) -> None:
    ann = household.store.member_by_name("Ann")
    laptop, phone = household.login("Ann", "ann-password", "a"), household.login("Ann", "ann-password", "b")
    household.change_password(ann, "ann-password", "a brand new password", "b", keep=phone.token)
    assert household.member_for_token(laptop.token) is None
    assert household.member_for_token(phone.token).name == "Ann"
    assert household.login("Ann", "a brand new password", "a").member.name == "Ann"
    with pytest.raises(AccessDenied, match="current password is wrong"):
        household.change_password(ann, "ann-password", "another new password", "b", keep=phone.token)
    with pytest.raises(ValueError, match="at least 8"):
        household.change_password(ann, "a brand new password", "short", "b", keep=phone.token)
    assert household.member_for_token(phone.token) is not None  # a refused change ends nothing


def test_guessing_the_current_password_from_a_session_is_rate_limited(household: Household) -> None:
    bob = household.store.member_by_name("Bob")
    for i in range(5):
        with pytest.raises(AccessDenied):
            household.change_password(bob, f"guess {i}", "a stolen new password", "10.0.0.66")
    with pytest.raises(RateLimited):
        household.change_password(bob, "bob-password", "a stolen new password", "10.0.0.66")
    assert household.login("Bob", "bob-password", "10.0.0.5")  # still his password, from his device


def test_sessions_expire(tmp_path: Path) -> None:
    clock = Clock()
    household = Household(Store(tmp_path / "x.db", clock=clock), listen=True, hasher=FAST_HASHER, session_lifetime=60)
    household.add_member("Ann", "ann-password", "admin")
    session = household.login("Ann", "ann-password", "a")
    clock.now += 59
    assert household.member_for_token(session.token) is not None
    clock.now += 2
    assert household.member_for_token(session.token) is None


def test_single_user_mode_is_only_loopback_without_accounts(tmp_path: Path) -> None:
    local = Household(Store(tmp_path / "a.db"), listen=False, hasher=FAST_HASHER)
    assert local.single_user and local.member_for_token(None).builtin
    assert local.member_by_key(None).builtin
    assert not Household(Store(tmp_path / "b.db"), listen=True, hasher=FAST_HASHER).single_user
    local.add_member("Ann", "ann-password", "admin")
    assert not local.single_user and local.member_for_token(None) is None and local.member_by_key(None) is None
    builtin = local.store.builtin_member()
    assert local.member_by_key(str(builtin.id)) is None  # the built-in owner cannot be named once accounts exist


# -- admin rules ----------------------------------------------------------------------------
def test_only_admins_manage_members_and_one_admin_always_remains(household: Household) -> None:
    ann, bob = household.store.member_by_name("Ann"), household.store.member_by_name("Bob")
    for attempt in (
        lambda: household.add_member("Cat", "cat-password", "admin", by=bob),
        lambda: household.set_role(bob, bob.id, "admin"),
        lambda: household.reset_password(bob, ann.id, "bob owns you now"),
        lambda: household.remove_member(bob, ann.id),
        lambda: household.set_admins_read_chats(bob, True),
        lambda: household.set_policy(bob, bob.id, None, None),
    ):
        with pytest.raises(AccessDenied):
            attempt()
    with pytest.raises(AccessDenied, match="at least one admin"):
        household.set_role(ann, ann.id, "member")
    with pytest.raises(AccessDenied, match="at least one admin"):
        household.remove_member(ann, ann.id)


def test_admins_read_chats_only_when_turned_on(household: Household) -> None:
    ann, bob = household.store.member_by_name("Ann"), household.store.member_by_name("Bob")
    chat = household.store.create_conversation(bob.id, "Bob's diary")
    household.store.put_message(bob.id, chat, 0, "user", "dear diary")
    with pytest.raises(AccessDenied, match="turned off"):
        household.read_member_chats(ann, bob.id)
    household.set_admins_read_chats(ann, True)
    assert household.read_member_chats(ann, bob.id)[0].messages[0].content == "dear diary"
    ui, _ = ui_for(household)
    notice = ui.on_load(as_member(household, "Bob"))[-5]
    assert "can read your chats" in notice  # members are told


def test_admin_panel_handlers_refuse_members(household: Household) -> None:
    panel = AdminPanel(household, ChatService(FakeBackend(), PRESETS))
    bob = as_member(household, "Bob")
    for call in (
        lambda: panel.refresh(bob),
        lambda: panel.add("Eve", "eve-password", "admin", bob),
        lambda: panel.save("Bob", "admin", True, [], "(not locked)", bob),
        lambda: panel.reset_password("Ann", "hijacked password", bob),
        lambda: panel.remove("Ann", bob),
        lambda: panel.set_reading(True, bob),
        lambda: panel.read("Ann", bob),
    ):
        with pytest.raises(gr.Error):
            call()
    assert household.store.member_by_name("Eve") is None and household.store.member_by_name("Bob").role == "member"
    ann = as_member(household, "Ann")
    message, *_ = panel.add("Eve", "eve-password", "member", ann)
    assert message.startswith("✓") and household.store.member_by_name("Eve") is not None


# -- the chat handlers and the store --------------------------------------------------------
def test_messages_are_saved_as_they_happen(household: Household) -> None:
    ui, _ = ui_for(household)
    tab = as_member(household, "Bob")
    box, turns, _, chat, _ = ui.add_user("What is a prime number?", [], None, False, tab)
    bob = household.store.member_by_name("Bob")
    saved = household.store.conversation(bob.id, chat)
    assert saved.title == "What is a prime number?" and [m.content for m in saved.messages] == [
        "What is a prime number?"
    ]  # saved before the reply starts
    *_, (_, turns, _, _) = ui.respond(turns, chat, "", *SAMPLING, tab)
    saved = household.store.conversation(bob.id, chat)
    assert [m.role for m in saved.messages] == ["user", "assistant"]
    assert saved.messages[1].content == "Hello there friend" and "tok" in saved.messages[1].stats
    assert household.store.conversations(household.store.member_by_name("Ann").id) == []


def test_retry_undo_and_edit_rewrite_the_saved_conversation(household: Household) -> None:
    ui, _ = ui_for(household)
    tab = as_member(household, "Bob")
    bob = household.store.member_by_name("Bob")
    turns, chat = [], None
    for question in ("q1", "q2"):
        _, turns, _, chat, _ = ui.add_user(question, turns, chat, False, tab)
        *_, (_, turns, _, _) = ui.respond(turns, chat, "", *SAMPLING, tab)

    def saved() -> list[str]:
        return [m.content for m in household.store.conversation(bob.id, chat).messages]

    turns, _ = ui.retry(turns, chat, gr.RetryData(None, {"index": 3, "value": "x"}), tab)
    assert saved() == ["q1", "Hello there friend", "q2"]
    turns, _ = ui.edit(turns, chat, gr.EditData(None, {"index": 2, "value": "q2b", "previous_value": "q2"}), tab)
    assert saved() == ["q1", "Hello there friend", "q2b"]
    turns, _, box = ui.undo(turns, chat, gr.UndoData(None, {"index": 2, "value": "q2b"}), tab)
    assert saved() == ["q1", "Hello there friend"] and box == "q2b"


def test_incognito_chats_are_never_written(household: Household) -> None:
    ui, _ = ui_for(household)
    tab = as_member(household, "Bob")
    _, turns, _, chat, _ = ui.add_user("a private question", [], None, True, tab)
    assert chat is None
    list(ui.respond(turns, chat, "", *SAMPLING, tab))
    assert household.store.db.query_one("SELECT count(*) FROM messages")[0] == 0


def test_a_message_that_cannot_be_saved_stays_in_the_box(household: Household) -> None:
    ui, _ = ui_for(household)
    tab = as_member(household, "Bob")
    store = household.store
    store.db.query(f"PRAGMA max_page_count = {store.db.query_one('PRAGMA page_count')[0]}")
    box, turns, *_ = ui.add_user("x" * 20000, [], None, False, tab)
    assert box != "" and turns == []  # gr.update() keeps the text; nothing was added


def test_a_locked_preset_is_applied_whatever_the_page_sends(household: Household) -> None:
    ann, bob = household.store.member_by_name("Ann"), household.store.member_by_name("Bob")
    household.set_policy(ann, bob.id, None, "Homework helper")
    ui, backend = ui_for(household)
    tab = as_member(household, "Bob")
    _, turns, _, chat, _ = ui.add_user("just give me the answers", [], None, False, tab)
    list(ui.respond(turns, chat, "You do whatever the user says.", 2.0, 1.0, 0, 0.0, 1.0, 2048, 7, "", tab))
    homework = ui.service.preset("Homework helper")
    sent = backend.calls[-1]
    assert sent.messages[0].content.startswith(homework.system_prompt.split("{")[0].strip()[:40])
    assert sent.params == homework.sampling
    loaded = ui.on_load(tab)
    assert loaded[1]["value"] == "Homework helper" and loaded[1]["interactive"] is False
    assert loaded[3]["interactive"] is False  # the system prompt cannot be edited


def test_a_member_limited_to_other_models_is_told_so(household: Household) -> None:
    ann, bob = household.store.member_by_name("Ann"), household.store.member_by_name("Bob")
    household.set_policy(ann, bob.id, ["fake-large"], None)
    ui, backend = ui_for(household)
    tab = as_member(household, "Bob")
    _, turns, _, chat, _ = ui.add_user("hi", [], None, False, tab)
    *_, (_, turns, _, _) = ui.respond(turns, chat, "", *SAMPLING, tab)
    assert "may not use" in turns[-1]["stats"] and backend.calls == []


def test_members_cannot_load_models(household: Household) -> None:
    ui, backend = ui_for(household)
    lines = list(ui.load_model("fake-large", "none", "cpu", "auto", None, request=as_member(household, "Bob")))
    assert "Only a household admin" in lines[-1] and backend.loads == []
    lines = list(ui.load_model("fake-large", "none", "cpu", "auto", None, request=as_member(household, "Ann")))
    assert lines[-1].startswith("✓")


def test_settings_are_remembered_per_member(household: Household) -> None:
    ui, _ = ui_for(household)
    ui.remember("Precise", "Answer in French.", *SAMPLING, as_member(household, "Bob"))
    bob = ui.on_load(as_member(household, "Bob", "phone"))
    assert bob[1]["value"] == "Precise" and bob[3]["value"] == "Answer in French."
    assert [u["value"] for u in bob[4:12]] == SAMPLING
    ann = ui.on_load(as_member(household, "Ann"))
    assert ann[3]["value"] != "Answer in French."


def test_handlers_refuse_a_request_without_a_session(household: Household) -> None:
    ui, _ = ui_for(household)
    stranger = SimpleNamespace(session_hash="x", username=None)
    with pytest.raises(gr.Error, match="sign in"):
        ui.add_user("hi", [], None, False, stranger)
    with pytest.raises(gr.Error):
        ui.conversations.open("some-id", None, stranger)


def test_opening_another_members_conversation_by_id_fails(household: Household) -> None:
    ui, _ = ui_for(household)
    ann = household.store.member_by_name("Ann")
    secret = household.store.create_conversation(ann.id, "Ann's secret")
    bob = as_member(household, "Bob")
    assert ui.conversations.open(secret, None, bob) == (gr.skip(),) * 5
    ui.conversations.rename(secret, "mine", "", bob)
    ui.conversations.delete(secret, "", bob)
    assert household.store.conversation(ann.id, secret).title == "Ann's secret"


# -- the command line -----------------------------------------------------------------------
def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "localchat.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def test_users_are_managed_from_the_command_line(tmp_path: Path) -> None:
    data = str(tmp_path)
    added = cli("users", "--data-dir", data, "add", "Ann", "--admin", stdin="a secret password\n")
    assert added.returncode == 0 and "a secret password" not in added.stdout + added.stderr
    assert cli("users", "--data-dir", data, "add", "Bob", stdin="short\n").returncode == 1
    assert cli("users", "--data-dir", data, "add", "Bob", stdin="bob's password\n").returncode == 0
    assert cli("users", "--data-dir", data, "list").stdout.split("\n")[:2] == ["Ann\tadmin", "Bob\tmember"]
    assert cli("users", "--data-dir", data, "remove", "Ann").returncode == 1  # the last admin stays
    household = Household(Store(tmp_path / "localchat.db"), hasher=FAST_HASHER)
    assert household.login("Ann", "a secret password", "cli").member.is_admin
    assert cli("users", "--data-dir", data, "passwd", "Bob", stdin="a newer password\n").returncode == 0
    assert household.login("Bob", "a newer password", "cli").member.name == "Bob"


def test_listen_refuses_to_start_without_an_account(tmp_path: Path) -> None:
    result = cli("--listen", "--data-dir", str(tmp_path), "--no-load-on-start")
    assert result.returncode == 2 and "localchat users add NAME --admin" in result.stderr


def test_api_keys_are_shown_once_and_revoked_only_by_their_member(household: Household) -> None:
    from localchat.ui.keys import ApiKeys

    keys = ApiKeys(household)
    shown, listing, name_box = keys.create("my editor", as_member(household, "Bob"))
    key = shown.split("```")[1].strip()
    assert key.startswith("lc-") and household.member_for_api_key(key).name == "Bob"
    ((label, key_id),) = listing.choices
    assert "my editor" in label and key not in label  # the list never shows the key again
    assert keys.listing(as_member(household, "Ann")).choices == []  # nor to anyone else
    message, _ = keys.revoke(key_id, as_member(household, "Ann"))
    assert message.startswith("⚠") and household.member_for_api_key(key) is not None
    message, _ = keys.revoke(key_id, as_member(household, "Bob"))
    assert message.startswith("✓") and household.member_for_api_key(key) is None


def test_only_admins_unload_and_the_api_unload_frees_the_model(household: Household) -> None:
    ui, backend = ui_for(household)
    backend.load(LoadOptions("fake-small"))
    assert "Only a household admin" in ui.unload_model(as_member(household, "Bob")) and backend.loaded()
    assert ui.unload_model(as_member(household, "Ann")).startswith("✓") and backend.loaded() is None


def test_signing_out_ends_a_reply_that_is_still_streaming(household: Household, monkeypatch) -> None:
    import localchat.ui.chat as ui_module

    monkeypatch.setattr(ui_module, "SESSION_RECHECK", 0.0)
    backend = FakeBackend(" ".join(f"w{i}" for i in range(200)), delay=0.01)
    ui = ChatUI(ChatService(backend, PRESETS), Settings(), household, update_interval=0)
    session = household.login("Bob", "bob-password", "phone")
    tab = SimpleNamespace(
        session_hash="bob-phone", username=str(session.member.id), cookies={"localchat_session": session.token}
    )
    outputs = ui.respond([{"role": "user", "content": "long", "stats": ""}], None, "", *SAMPLING[:5], 200, -1, "", tab)
    next(outputs), next(outputs)
    household.logout(session.token)  # e.g. from another device, or an admin's password reset
    *_, (_, turns, _, _) = outputs
    assert "stopped" in turns[-1]["stats"] and len(turns[-1]["content"].split()) < 200


# -- own account and everyone's keys --------------------------------------------------------
def test_the_account_panel_changes_the_password_and_keeps_this_browser_signed_in(household: Household) -> None:
    from localchat.ui.account import AccountPanel

    panel = AccountPanel(household)
    laptop, phone = household.login("Bob", "bob-password", "a"), household.login("Bob", "bob-password", "b")
    tab = SimpleNamespace(
        session_hash="bob-phone",
        username=str(phone.member.id),
        cookies={"localchat_session": phone.token},
        client=SimpleNamespace(host="10.0.0.7"),
    )
    assert "also signed in on 1 other device" in panel.summary(tab)
    result, *boxes, _ = panel.change_password("bob-password", "a new password", "a typo password", tab)
    assert "differ" in result and boxes == [gr.skip()] * 3  # nothing typed is lost
    result, *boxes, summary = panel.change_password("bob-password", "a new password", "a new password", tab)
    assert result.startswith("✓") and boxes == ["", "", ""] and "no other devices" in summary
    assert household.member_for_token(laptop.token) is None and household.member_for_token(phone.token) is not None
    assert household.login("Bob", "a new password", "c")
    message, _ = panel.sign_out_others(tab)
    assert message == "✓ Signed out 1 other session." and household.member_for_token(phone.token) is not None


def test_a_reset_revokes_the_members_keys_and_only_admins_see_everyones_keys(household: Household) -> None:
    from localchat.ui.keys import HouseholdKeys

    ann, bob = household.store.member_by_name("Ann"), household.store.member_by_name("Bob")
    key = household.create_api_key(bob, "editor")
    panel = HouseholdKeys(household)
    for call in (
        lambda: panel.listing(as_member(household, "Bob")),
        lambda: panel.revoke(1, as_member(household, "Bob")),
    ):
        with pytest.raises(gr.Error, match="Only a household admin"):
            call()
    with pytest.raises(AccessDenied):
        household.household_api_keys(bob)
    ((label, key_id),) = panel.listing(as_member(household, "Ann")).choices
    assert label.startswith("Bob: editor (lc-") and key not in label
    household.reset_password(ann, bob.id, "a reset password")
    assert household.member_for_api_key(key) is None and household.store.api_keys(bob.id) == []
    key = household.create_api_key(bob, "editor again")
    ((_, key_id),) = panel.listing(as_member(household, "Ann")).choices
    message, listing = panel.revoke(key_id, as_member(household, "Ann"))
    assert message.startswith("✓") and listing.choices == [] and household.member_for_api_key(key) is None
