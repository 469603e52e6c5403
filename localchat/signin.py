"""Sign-in limits: failed sign-ins are counted so that a guesser slows only itself.

Owns: the errors a sign-in can end in, the pattern of a member's name, and LoginLimiter (in memory,
per process). Invariant: every attempt is counted before the password is checked, and only a right
password takes it back.
"""

from __future__ import annotations

import ipaddress
import re
import threading
import time
from collections import deque
from collections.abc import Callable

NAME_PATTERN = re.compile(r"^[\w][\w .'-]{0,31}$")


class AccessDenied(PermissionError):
    """Not allowed for this member; the message says why."""


class LoginRefused(AccessDenied):
    pass


class RateLimited(LoginRefused):
    def __init__(self, retry_after: float):
        self.retry_after = max(1, int(retry_after + 0.999))
        super().__init__(f"Too many failed sign-ins. Try again in {self.retry_after} s.")


class LoginLimiter:
    """Failed sign-ins within a sliding window, counted so that a guesser slows only itself:
    - per client (an address; IPv6 by its /64): `per_client` failures on any names, then it waits;
    - per client and name: `per_pair` failures, then that client waits for that name;
    - per name, across clients: past `per_name` failures the name is slowed, never locked: a client
      that has failed on it waits `delay` seconds after its own last failure (doubling with each
      further failure on the name, at most `max_delay`), and a client that has not failed on it
      (the member's own device) is not slowed at all.
    Every attempt counts until it succeeds, so parallel guesses cannot slip between check and count.
    A known device (a browser the name signed in from before, vouched for by the caller) is a client
    of its own whatever its address, so guesses from other browsers at that address never block it,
    and its own misses still count against it.
    """

    def __init__(
        self,
        per_client: int = 20,
        per_pair: int = 5,
        per_name: int = 10,
        window: float = 900.0,
        delay: float = 2.0,
        max_delay: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.per_client, self.per_pair, self.per_name = per_client, per_pair, per_name
        self.window, self.delay, self.max_delay = window, delay, max_delay
        self.clock = clock
        # ("client", address) / ("pair", address, name) -> times; ("name", name) -> (time, address)
        self._failures: dict[tuple[str, ...], deque] = {}
        self._swept = clock()
        self._lock = threading.Lock()

    @staticmethod
    def client_key(address: str) -> str:
        """IPv6 hosts get a whole /64 each, so one device could otherwise take a fresh address per guess."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return address[:64]
        if isinstance(ip, ipaddress.IPv6Address):
            if ip.ipv4_mapped is not None:
                return str(ip.ipv4_mapped)
            if not ip.is_loopback:
                return str(ipaddress.ip_network(f"{ip}/64", strict=False))
        return str(ip)

    def _who(self, client: str, device: str | None) -> str:
        return f"device {device}" if device else self.client_key(client)

    def _recent(self, key: tuple[str, ...]) -> deque:
        entries = self._failures.get(key, deque())
        start = self.clock() - self.window
        while entries and (entries[0][0] if key[0] == "name" else entries[0]) <= start:
            entries.popleft()
        if not entries:
            self._failures.pop(key, None)
        return entries

    def _sweep(self) -> None:
        """Forget clients and names that stopped trying, so the table stays as small as the window's traffic."""
        if self.clock() - self._swept >= self.window:
            self._swept = self.clock()
            for key in list(self._failures):
                self._recent(key)

    def attempt(self, name: str, client: str, device: str | None = None) -> None:
        """Count an attempt, or raise RateLimited (the client is checked first, so a blocked client
        cannot grow the table with new names). `device`: the id of a device known for this name."""
        with self._lock:
            self._sweep()
            now, client = self.clock(), self._who(client, device)
            tried = self._recent(("client", client))
            if len(tried) >= self.per_client:
                raise RateLimited(tried[0] + self.window - now)
            keys: list[tuple[str, ...]] = [("client", client)]
            if NAME_PATTERN.match(name):
                name = name.lower()
                pair, on_name = self._recent(("pair", client, name)), self._recent(("name", name))
                if len(pair) >= self.per_pair:
                    raise RateLimited(pair[0] + self.window - now)
                beyond = len(on_name) - self.per_name
                if pair and beyond >= 0:  # a name under attack: only clients that failed on it wait
                    wait = min(self.delay * 2 ** min(beyond, 32), self.max_delay)  # a float cannot hold 2**1024
                    if now < pair[-1] + wait:
                        raise RateLimited(pair[-1] + wait - now)
                keys.append(("pair", client, name))
                self._failures.setdefault(("name", name), deque()).append((now, client))
            for key in keys:
                self._failures.setdefault(key, deque()).append(now)

    def succeeded(self, name: str, client: str, device: str | None = None) -> None:
        """The attempt was right: it is not a failure, and this client's misses on the name are forgiven."""
        with self._lock:
            client, name = self._who(client, device), name.lower()
            tried = self._failures.get(("client", client))
            if tried:
                tried.pop()
            self._failures.pop(("pair", client, name), None)
            on_name = self._failures.get(("name", name))
            for entry in reversed(on_name or ()):
                if entry[1] == client:
                    on_name.remove(entry)  # type: ignore[union-attr]
                    break
