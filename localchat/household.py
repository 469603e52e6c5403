"""Household: accounts, login sessions, the rules an admin sets, and each member's conversations.

Owns: password hashing (argon2id), session tokens (random, stored as SHA-256, with an expiry), the
sign-in (counted by localchat.signin's limiter; a known device apart from its address), who may do
what (admins manage members and models; a member may be limited to some models and a locked
preset), and the mode: single-user (loopback, no accounts, no login) or
household (accounts exist or the server listens on the network: login required).
Invariant: every conversation operation takes the Member resolved from the request's session; no
caller can name a member by id.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from dataclasses import dataclass, replace

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from localchat.signin import NAME_PATTERN, AccessDenied, LoginLimiter, LoginRefused, RateLimited
from localchat.store import ApiKeyInfo, Member, Store, StoreError

SESSION_COOKIE = "localchat_session"
SESSION_LIFETIME = 30 * 24 * 3600.0
# A browser's own random id: where a member signed in before, the sign-in limiter counts it apart.
DEVICE_COOKIE = "localchat_device"
DEVICE_LIFETIME = 400 * 24 * 3600.0  # the longest a browser keeps a cookie
MIN_PASSWORD = 8
ADMINS_READ_CHATS = "admins_can_read_chats"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_name(name: str) -> str:
    name = " ".join((name or "").split())
    if not NAME_PATTERN.match(name):
        raise ValueError("A name is 1-32 letters, digits, spaces, dots, dashes or apostrophes")
    return name


def check_password(password: str) -> str:
    if len(password or "") < MIN_PASSWORD:
        raise ValueError(f"A password needs at least {MIN_PASSWORD} characters")
    return password


@dataclass(frozen=True)
class Session:
    token: str
    member: Member
    device: str = ""  # the device cookie to set (see remember_device)


class Household:
    def __init__(
        self,
        store: Store,
        listen: bool = False,
        hasher: PasswordHasher | None = None,
        limiter: LoginLimiter | None = None,
        session_lifetime: float = SESSION_LIFETIME,
    ):
        self.store = store
        self.listen = listen
        self.hasher = hasher or PasswordHasher()  # argon2id with the library's recommended cost
        self.limiter = limiter or LoginLimiter()
        self.session_lifetime = session_lifetime
        self._dummy_hash = self.hasher.hash(secrets.token_hex(8))
        self._accounts_lock = threading.RLock()

    # -- mode ---------------------------------------------------------------------------------
    @property
    def single_user(self) -> bool:
        """Loopback and no accounts: one person, no login, chats owned by the built-in member."""
        return not self.listen and self.store.count_accounts() == 0

    def member_for_token(self, token: str | None) -> Member | None:
        """The member a session cookie belongs to; in single-user mode, the built-in member."""
        if self.single_user:
            return self.store.builtin_member()
        if not token:
            return None
        return self.store.session_member(hash_token(token))

    def member_by_key(self, key: str | None) -> Member | None:
        """Resolve the key the web layer attached to a request (see web.auth_dependency)."""
        if key is None:
            return self.store.builtin_member() if self.single_user else None
        try:
            member = self.store.member(int(key))
        except ValueError:
            return None
        if member is None or (member.builtin and not self.single_user):
            return None
        return member

    # -- accounts -----------------------------------------------------------------------------
    def add_member(self, name: str, password: str, role: str = "member", by: Member | None = None) -> Member:
        if by is not None:
            self.require_admin(by)
        with self._accounts_lock:
            first_admin = role == "admin" and self._admin_count() == 0
            member = self.store.add_member(check_name(name), self.hasher.hash(check_password(password)), role)
            if first_admin:  # the first admin takes over the chats of the single-user app
                self.store.adopt(self.store.builtin_member().id, member.id)
        return member

    def add_first_admin(self, name: str, password: str) -> Member:
        """The first-run page: only while no account exists (checked again under the lock)."""
        with self._accounts_lock:
            if self.store.count_accounts():
                raise AccessDenied("The household already has an account")
            return self.add_member(name, password, "admin")

    def known_device(self, device: str | None, name: str) -> str | None:
        """The limiter's id of this device cookie if `name` signed in from it before, else None
        (an unknown or invented cookie earns nothing)."""
        if not device or len(device) > 100 or not NAME_PATTERN.match(name):
            return None
        token_hash = hash_token(device)
        return token_hash if self.store.known_device(token_hash, DEVICE_LIFETIME, name) else None

    def remember_device(self, member: Member, device: str | None) -> str:
        """After a right password: the device cookie to (re)set. The browser's own is kept if any member
        signed in from it before; otherwise it gets a new one, so a cookie nobody was given stays unknown."""
        if not device or len(device) > 100 or not self.store.known_device(hash_token(device), DEVICE_LIFETIME):
            device = secrets.token_urlsafe(32)
        self.store.remember_device(hash_token(device), member.id, DEVICE_LIFETIME)
        return device

    def login(self, name: str, password: str, client: str, device: str | None = None) -> Session:
        """`device`: the browser's device cookie, if it sent one."""
        name = " ".join((name or "").split())
        known = self.known_device(device, name)
        self.limiter.attempt(name, client, known)
        member = self.store.member_by_name(name) if NAME_PATTERN.match(name) else None
        stored = self.store.password_hash(member.id) if member else None
        try:
            self.hasher.verify(stored or self._dummy_hash, password or "")  # same cost for unknown names
            ok = stored is not None
        except (VerificationError, InvalidHashError):
            ok = False
        if not ok or member is None:
            raise LoginRefused("Wrong name or password")
        self.limiter.succeeded(name, client, known)
        if self.hasher.check_needs_rehash(stored):  # type: ignore[arg-type]
            self.store.set_password_hash(member.id, self.hasher.hash(password))
        return replace(self.start_session(member), device=self.remember_device(member, device))

    def start_session(self, member: Member) -> Session:
        token = secrets.token_urlsafe(32)
        self.store.add_session(hash_token(token), member.id, self.session_lifetime)
        return Session(token, member)

    def logout(self, token: str | None) -> None:
        if token:
            self.store.delete_session(hash_token(token))

    def change_password(
        self, member: Member, old: str, new: str, client: str, keep: str | None = None, device: str | None = None
    ) -> None:
        """The member's own change. The current password is checked like a sign-in (counted by the
        limiter, so a borrowed session cannot guess it faster); every other session of the member
        ends, the one whose token is `keep` (the browser that asked) stays signed in."""
        check_password(new)
        known = self.known_device(device, member.name)
        self.limiter.attempt(member.name, client, known)
        try:
            self.hasher.verify(self.store.password_hash(member.id) or self._dummy_hash, old or "")
        except (VerificationError, InvalidHashError):
            raise AccessDenied("The current password is wrong") from None
        self.limiter.succeeded(member.name, client, known)
        self.store.set_password_hash(member.id, self.hasher.hash(new), keep_session=hash_token(keep) if keep else None)

    def end_other_sessions(self, member: Member, keep: str | None) -> int:
        """Sign the member out everywhere but the browser holding `keep`; returns how many ended."""
        return self.store.delete_sessions(member.id, keep=hash_token(keep) if keep else None)

    # -- API keys ------------------------------------------------------------------------------
    def create_api_key(self, member: Member, name: str) -> str:
        """A new key for this member; the only time the whole key is ever shown."""
        if member.builtin:
            raise AccessDenied("API keys belong to household accounts; without accounts the API needs no key")
        name = " ".join((name or "").split())[:60] or "API key"
        prefix = secrets.token_hex(6)
        key = f"lc-{prefix}-{secrets.token_urlsafe(32)}"
        self.store.add_api_key(member.id, name, prefix, hash_token(key))
        return key

    def member_for_api_key(self, key: str | None) -> Member | None:
        """The member a bearer key belongs to; in single-user mode any caller is the built-in member."""
        if self.single_user:
            return self.store.builtin_member()
        parts = (key or "").split("-", 2)
        if len(parts) != 3 or parts[0] != "lc":
            return None
        found = self.store.api_key_by_prefix(parts[1])
        if found is None or not hmac.compare_digest(found[0], hash_token(key or "")):
            return None
        self.store.touch_api_key(parts[1])
        return found[1]

    def revoke_api_key(self, by: Member, key_id: int) -> None:
        """A member revokes their own keys; an admin revokes anyone's."""
        if by.is_admin and not by.builtin:
            self.store.revoke_any_api_key(key_id)
        else:
            self.store.revoke_api_key(by.id, key_id)

    def household_api_keys(self, by: Member) -> list[tuple[str, ApiKeyInfo]]:
        """Every member's keys as (member name, key), for the household panel: admins only."""
        self.require_admin(by)
        return self.store.all_api_keys()

    # -- admin --------------------------------------------------------------------------------
    def require_admin(self, member: Member | None) -> Member:
        if member is None or not member.is_admin:
            raise AccessDenied("Only a household admin can do that")
        return member

    def _target(self, by: Member | None, member_id: int) -> Member:
        """The member an admin acts on. `by=None`: someone at this machine's console (the
        `localchat users` command), who may do what an admin may."""
        if by is not None:
            self.require_admin(by)
        target = self.store.member(member_id)
        if target is None or target.builtin:
            raise AccessDenied("There is no such household member")
        return target

    def reset_password(self, by: Member | None, member_id: int, password: str) -> None:
        """An admin's reset assumes the account may be in the wrong hands: it also ends every session
        and revokes every API key of the member."""
        target = self._target(by, member_id)
        self.store.set_password_hash(target.id, self.hasher.hash(check_password(password)), revoke_keys=True)

    def set_role(self, by: Member | None, member_id: int, role: str) -> None:
        target = self._target(by, member_id)
        if target.is_admin and role != "admin" and self._admin_count() == 1:
            raise AccessDenied("The household needs at least one admin")
        self.store.set_role(target.id, role)

    def set_policy(self, by: Member, member_id: int, allowed: list[str] | None, locked_preset: str | None) -> None:
        target = self._target(by, member_id)
        self.store.set_policy(target.id, allowed, locked_preset)

    def remove_member(self, by: Member | None, member_id: int) -> None:
        target = self._target(by, member_id)
        if target.is_admin and self._admin_count() == 1:
            raise AccessDenied("The household needs at least one admin")
        self.store.remove_member(target.id)  # its sessions and API keys go with it

    def _admin_count(self) -> int:
        return sum(m.is_admin for m in self.store.members())

    @property
    def admins_read_chats(self) -> bool:
        return self.store.setting(ADMINS_READ_CHATS) == "1"

    def set_admins_read_chats(self, by: Member, on: bool) -> None:
        self.require_admin(by)
        self.store.set_setting(ADMINS_READ_CHATS, "1" if on else "0")

    def read_member_chats(self, by: Member, member_id: int):
        """An admin reading another member's chats: only when that setting is on (members see it)."""
        target = self._target(by, member_id)
        if not self.admins_read_chats:
            raise AccessDenied("Reading members' chats is turned off in the household settings")
        return [self.store.conversation(target.id, c.id) for c in self.store.conversations(target.id)]

    # -- what a member may use ----------------------------------------------------------------
    def check_model(self, member: Member, model: str) -> None:
        if not member.may_use(model):
            raise AccessDenied(f"Your account may not use {model}. Ask an admin of the household.")

    def may_load_models(self, member: Member | None) -> bool:
        return member is not None and member.is_admin


__all__ = [
    "AccessDenied",
    "DEVICE_COOKIE",
    "Household",
    "LoginLimiter",
    "LoginRefused",
    "RateLimited",
    "SESSION_COOKIE",
    "Session",
    "StoreError",
]
