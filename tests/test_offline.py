"""Offline mode: the audit-hook guard, the no-packet offline detection, and the app running offline.

No test here sends a packet anywhere but loopback: blocked connections are raised as audit
events (exactly what socket.connect raises before it connects), never attempted for real.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from localchat.privacy import _guard, has_default_route, is_local

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.1", "::1", "[::1]", "localhost", "LOCALHOST", None, ""])
def test_loopback_is_local(host):
    assert is_local(host)


@pytest.mark.parametrize("host", ["93.184.216.34", "10.0.0.1", "192.168.1.20", "huggingface.co", "fe80::1", 42])
def test_other_hosts_are_not_local(host):
    assert not is_local(host)


def test_guard_blocks_outbound_and_allows_loopback_and_unix_sockets():
    with pytest.raises(PermissionError, match="offline: blocked a network connection to huggingface.co"):
        _guard("socket.getaddrinfo", ("huggingface.co", 443, 0, 1, 6))
    with pytest.raises(PermissionError, match="93.184.216.34"):
        _guard("socket.connect", (None, ("93.184.216.34", 443)))
    with pytest.raises(PermissionError):
        _guard("socket.sendto", (None, ("8.8.8.8", 53)))
    _guard("socket.connect", (None, ("127.0.0.1", 7860)))
    _guard("socket.connect", (None, ("::1", 7860, 0, 0)))
    _guard("socket.connect", (None, "/run/some.sock"))
    _guard("socket.getaddrinfo", ("localhost", 7860, 0, 1, 6))
    _guard("open", ("/etc/hosts", "r", 0))  # other events pass


def test_offline_detection_reads_the_route_table(tmp_path: Path):
    header = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n"
    table = tmp_path / "route"
    table.write_text(header + "eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n")
    assert not has_default_route(table)  # only a local subnet: no way out
    table.write_text(header + "eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\n")
    assert has_default_route(table)
    assert has_default_route(tmp_path / "missing")  # cannot tell: assume online


def test_once_offline_every_library_is_blocked_in_that_process():
    code = (
        "import sys, localchat\n"
        "from localchat.privacy import go_offline\n"
        "go_offline(); go_offline()\n"
        "for host in ('huggingface.co', '93.184.216.34'):\n"
        "    try:\n"
        "        sys.audit('socket.getaddrinfo', host, 443, 0, 1, 6)\n"
        "        print('allowed', host)\n"
        "    except PermissionError as e:\n"
        "        print('blocked', host)\n"
        "sys.audit('socket.connect', None, ('127.0.0.1', 9))\n"
        "import os; print(os.environ['HF_HUB_OFFLINE'], os.environ['TRANSFORMERS_OFFLINE'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split("\n")[:3] == ["blocked huggingface.co", "blocked 93.184.216.34", "1 1"]


@pytest.mark.model
def test_the_app_chats_offline(session_data_dir: Path, smol_backend):
    from conftest import message_text, output_chat, start_app
    from gradio_client import Client

    app = start_app(session_data_dir, "--offline")
    try:
        with urllib.request.urlopen(app.url + "/health", timeout=10) as r:
            assert json.loads(r.read())["offline"] is True
        client = Client(app.url, verbose=False)
        client.predict("What is the capital of France?", api_name="/add_user")
        job = client.submit("", 0, 1.0, 0, 0.0, 1.0, 24, -1, "", api_name="/respond")
        last = list(job)[-1]
        text = message_text(output_chat(last)[-1])
        assert "Paris" in text
        assert "blocked a network connection" not in app.log_text()
    finally:
        app.process.kill()
        app.process.wait(10)
