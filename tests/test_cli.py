"""The command line: `--data-dir` works before or after any subcommand, and `python -m localchat` is the
same command line as the `localchat` script."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from localchat import cli


def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str, stdin: str = ""):
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_data_dir_after_the_users_subcommand(tmp_path: Path, monkeypatch, capsys) -> None:
    home, other = tmp_path / "home", tmp_path / "other"
    monkeypatch.setenv("LOCALCHAT_DATA_DIR", str(tmp_path / "default"))  # where a lost flag would land
    assert (
        run(monkeypatch, capsys, "users", "add", "Ann", "--data-dir", str(home), "--admin", stdin="a long password\n")[
            0
        ]
        == 0
    )
    assert run(monkeypatch, capsys, "users", "add", "Bob", "--data-dir", str(other), stdin="bob's password\n")[0] == 0
    # before the subcommand still works, and a subcommand without the flag does not reset it
    assert run(monkeypatch, capsys, "users", "--data-dir", str(home), "list")[1] == "Ann\tadmin\n"
    assert run(monkeypatch, capsys, "users", "list", "--data-dir", str(other))[1] == "Bob\tmember\n"
    assert run(monkeypatch, capsys, "users", "role", "Bob", "admin", "--data-dir", str(other))[0] == 0
    assert run(monkeypatch, capsys, "users", "list", "--data-dir", str(other))[1] == "Bob\tadmin\n"
    # after the subcommand wins over one before it, as the last flag does anywhere else
    assert (
        run(monkeypatch, capsys, "users", "--data-dir", str(home), "list", "--data-dir", str(other))[1]
        == "Bob\tadmin\n"
    )
    assert not (tmp_path / "default").exists()


def test_data_dir_after_the_models_subcommand(tmp_path: Path, monkeypatch, capsys) -> None:
    (tmp_path / "models" / "my-model").mkdir(parents=True)
    code, out, _ = run(monkeypatch, capsys, "models", "--data-dir", str(tmp_path))
    assert code == 0 and out.startswith("my-model\t")


def test_python_dash_m_localchat_is_the_cli(tmp_path: Path) -> None:
    def module(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "localchat", *args], capture_output=True, text=True, cwd=ROOT, timeout=120
        )

    added = subprocess.run(
        [sys.executable, "-m", "localchat", "users", "add", "Ann", "--data-dir", str(tmp_path)],
        input="a long password\n", capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    listed = module("users", "list", "--data-dir", str(tmp_path))
    assert listed.returncode == 0 and listed.stdout == "Ann\tmember\n"
    helped = module("--help")
    assert helped.returncode == 0 and "--data-dir" in helped.stdout
