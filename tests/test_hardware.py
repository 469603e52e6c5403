"""hardware.py reads memory and cores through psutil (the same on Linux, macOS and Windows, where /proc
is absent and free RAM read as 0), and the CPU's name the way each OS gives it."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from localchat import hardware


def test_free_ram_comes_from_psutil_not_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    # What Windows or macOS report: /proc is not read, so these numbers must reach the report as they are.
    fake = SimpleNamespace(total=64 * 2**30, available=40 * 2**30)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: fake)
    hw = hardware.detect(gpus=False)
    assert (hw.ram_total_bytes, hw.ram_free_bytes) == (64 * 2**30, 40 * 2**30)
    assert hw.free_bytes("cpu") == 40 * 2**30
    assert "RAM: 40.0 GB free of 64.0 GB" in hw.describe()


def test_this_machine_matches_psutil() -> None:
    hw = hardware.detect(gpus=False)
    mem = psutil.virtual_memory()
    assert hw.ram_total_bytes == mem.total and 0 < hw.ram_free_bytes <= mem.total
    assert hw.cores == psutil.cpu_count() == os.cpu_count()
    assert hw.cpu and hw.cpu != "unknown"


def test_a_failing_psutil_is_reported_as_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> None:
        raise OSError("no access")

    monkeypatch.setattr(psutil, "virtual_memory", broken)
    hw = hardware.detect(gpus=False)
    assert (hw.ram_total_bytes, hw.ram_free_bytes) == (0, 0)


def test_macos_names_its_cpu_through_sysctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tool = tmp_path / "sysctl"
    tool.write_text('#!/bin/sh\n[ "$2" = machdep.cpu.brand_string ] && echo "Apple M3 Pro"\n')
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert hardware._cpu_name("Darwin") == "Apple M3 Pro"


def test_an_os_without_a_cpu_name_falls_back_to_the_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")  # no sysctl: the Darwin branch fails, the fallback answers
    assert hardware._cpu_name("Darwin") not in ("", None)
    assert hardware._cpu_name("Windows") not in ("", None)  # no winreg here: the fallback too
