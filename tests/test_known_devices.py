"""Known devices and the sign-in limiter, without HTTP (real SQLite file): a browser a member signed
in from before is counted apart from its address, so another person at the same address (the same
PC, the same NAT or proxy) cannot lock the member out by failing on their name; an invented device
cookie earns nothing, and a known device's own misses still count against it."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Clock
from fakes import FAST_HASHER

from localchat.household import DEVICE_LIFETIME, Household, LoginLimiter, LoginRefused, RateLimited, hash_token
from localchat.store import Store

PC = "127.0.0.1"  # one computer (or one NAT / proxy) shared by the member and a guesser


def fail(household: Household, name: str, times: int, device: str | None = None) -> list[str]:
    """`times` wrong passwords for `name` from PC; what each ended in."""
    results = []
    for i in range(times):
        with pytest.raises(LoginRefused) as exc:
            household.login(name, f"wrong {i}", PC, device)
        results.append(type(exc.value).__name__)
    return results


def test_the_limiter_counts_a_known_device_apart_from_its_address() -> None:
    limiter = LoginLimiter(per_client=20, per_pair=3, clock=Clock())
    for _ in range(3):
        limiter.attempt("ann", PC)
    with pytest.raises(RateLimited):
        limiter.attempt("Ann", PC)  # the address waits for this name
    limiter.attempt("Ann", PC, device="d1")  # Ann's own browser at that address does not
    limiter.succeeded("Ann", PC, device="d1")
    for _ in range(3):
        limiter.attempt("Ann", PC, device="d1")  # its own misses count against it
    with pytest.raises(RateLimited):
        limiter.attempt("Ann", PC, device="d1")
    limiter.attempt("Ann", PC, device="d2")  # another known device is yet another client


def test_a_member_signs_in_from_her_own_browser_while_another_at_the_same_address_guesses(
    household: Household,
) -> None:
    ann = household.login("Ann", "ann-password", PC)
    assert ann.device and household.known_device(ann.device, "ann")
    assert fail(household, "Ann", 8) == ["LoginRefused"] * 5 + ["RateLimited"] * 3  # the guesser waits
    with pytest.raises(RateLimited):
        household.login("Ann", "ann-password", PC, "an invented device")  # no cookie-less escape either
    bob = household.login("Bob", "bob-password", "10.0.0.9")
    with pytest.raises(RateLimited):
        household.login("Ann", "ann-password", PC, bob.device)  # known, but not for Ann
    again = household.login("Ann", "ann-password", PC, ann.device)  # Ann's browser: not blocked
    assert again.member.name == "Ann" and again.device == ann.device  # and it keeps its cookie


def test_a_known_devices_own_wrong_passwords_still_count(household: Household) -> None:
    ann = household.login("Ann", "ann-password", PC)
    assert fail(household, "Ann", 7, ann.device) == ["LoginRefused"] * 5 + ["RateLimited"] * 2
    with pytest.raises(RateLimited):
        household.login("Ann", "ann-password", PC, ann.device)  # a stolen cookie guesses no faster
    assert household.login("Ann", "ann-password", "10.0.0.7").member.name == "Ann"  # elsewhere she can


def test_an_unknown_cookie_is_replaced_and_never_becomes_known(household: Household) -> None:
    invented = "chosen-by-someone-else"
    session = household.login("Ann", "ann-password", PC, invented)
    assert session.device != invented and household.known_device(invented, "Ann") is None
    assert household.known_device(session.device, "Ann") == hash_token(session.device)
    assert household.known_device(session.device, "Bob") is None
    shared = household.login("Bob", "bob-password", PC, session.device)  # one browser, two members
    assert shared.device == session.device and household.known_device(session.device, "Bob")


def test_the_password_change_is_not_blocked_by_a_guesser_at_the_same_address(household: Household) -> None:
    bob = household.login("Bob", "bob-password", PC)
    fail(household, "Bob", 6)
    member = household.store.member_by_name("Bob")
    household.change_password(member, "bob-password", "a brand new password", PC, bob.token, bob.device)
    assert household.login("Bob", "a brand new password", PC, bob.device).member.name == "Bob"


def test_known_devices_are_kept_in_the_store_bounded_and_forgotten(tmp_path: Path) -> None:
    clock = Clock()
    store = Store(tmp_path / "x.db", clock=clock)
    household = Household(store, listen=True, hasher=FAST_HASHER)
    ann = household.add_member("Ann", "ann-password", "admin")
    device = household.login("Ann", "ann-password", PC).device
    reopened = Household(Store(tmp_path / "x.db", clock=clock), listen=True, hasher=FAST_HASHER)
    assert reopened.known_device(device, "Ann")  # a restart forgets nothing
    for i in range(3):
        clock.now += 1
        store.remember_device(f"hash{i}", ann.id, DEVICE_LIFETIME, most=2)
    assert not store.known_device(hash_token(device), DEVICE_LIFETIME, "Ann")  # only the 2 most recent stay
    assert store.known_device("hash2", DEVICE_LIFETIME, "ann") and not store.known_device("hash0", DEVICE_LIFETIME)
    clock.now += DEVICE_LIFETIME
    assert not store.known_device("hash2", DEVICE_LIFETIME, "Ann")  # unused for the cookie's lifetime
    bob = household.add_member("Bob", "bob-password")
    store.remember_device("bob-device", bob.id, DEVICE_LIFETIME)
    household.remove_member(None, bob.id)
    assert not store.known_device("bob-device", DEVICE_LIFETIME)  # it goes with the member
