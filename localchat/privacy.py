"""Offline mode: once switched on, this process can open no network connection except to itself.

Owns: deciding whether the machine is offline (without sending a packet) and the guard that makes
offline absolute. Invariant: the guard is a Python audit hook, so it covers every library
(transformers, huggingface_hub, gradio, bitsandbytes' kernel fetcher) and cannot be undone.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}


class OfflineError(PermissionError):
    pass


def has_default_route(route_table: Path = Path("/proc/net/route")) -> bool:
    """True if Linux has a default route (so the network may be reachable); read, never probed.

    Elsewhere (no /proc) we cannot tell without sending a packet, so we assume online.
    """
    try:
        lines = route_table.read_text().splitlines()[1:]
    except OSError:
        return True
    for line in lines:
        cols = line.split()
        if len(cols) > 2 and cols[1] == "00000000" and cols[0] != "lo":
            return True
    return False


def is_local(host: Any) -> bool:
    """Loopback names and addresses, and unix sockets, are local; everything else is not."""
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if not isinstance(host, str):
        return False
    name = host.strip("[]").lower()
    if name in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(name.split("%")[0]).is_loopback
    except ValueError:
        return False


def _guard(event: str, args: tuple) -> None:
    if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
        address = args[1] if len(args) > 1 else None
        if isinstance(address, (str, bytes)):  # a unix socket path
            return
        host = address[0] if isinstance(address, tuple) and address else address
    elif event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr"):
        host = args[0] if args else None
    else:
        return
    if not is_local(host):
        raise OfflineError(f"localchat is offline: blocked a network connection to {host}")


_installed = False


def go_offline() -> None:
    """Block every outbound connection of this process, for good; idempotent."""
    global _installed  # noqa: PLW0603 - an audit hook is process-wide by nature; install it once
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[name] = "1"
    if not _installed:
        sys.addaudithook(_guard)
        _installed = True
        log.info("offline: no connection to any other host is possible from this process")


def is_offline() -> bool:
    return _installed
