"""The set-up script's choice of PyTorch build, and the privacy switches set before any import."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def plan(tmp_path: Path, nvidia_smi: str | None, **env: str) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if nvidia_smi is not None:
        tool = bin_dir / "nvidia-smi"
        tool.write_text(f"#!/bin/sh\n{nvidia_smi}\n")
        tool.chmod(0o755)
    path = f"{bin_dir}:/usr/bin:/bin"  # no real nvidia-smi from elsewhere on PATH
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "setup.sh")],
        env={"PATH": path, "HOME": str(tmp_path), "LOCALCHAT_SETUP_PLAN": "1", **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def test_no_gpu_gets_the_cpu_build(tmp_path: Path):
    assert plan(tmp_path, None) == "torch: cpu"


def test_a_broken_nvidia_smi_means_no_gpu(tmp_path: Path):
    assert plan(tmp_path, "echo 'NVIDIA-SMI has failed' >&2; exit 9") == "torch: cpu"


def test_a_working_gpu_gets_the_cuda_build(tmp_path: Path):
    assert plan(tmp_path, "echo 'GPU 0: NVIDIA H100 (UUID: GPU-1)'") == "torch: cuda"


def test_an_explicit_index_wins(tmp_path: Path):
    url = "https://download.pytorch.org/whl/cu128"
    assert plan(tmp_path, None, TORCH_INDEX_URL=url) == "torch: index"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in readme and "bash scripts/test.sh" in ci
    assert "bash scripts/start.sh" in readme


def test_telemetry_is_off_before_gradio_or_transformers_load():
    code = (
        "import sys, os, localchat\n"
        "assert 'gradio' not in sys.modules and 'transformers' not in sys.modules\n"
        "keys = ['GRADIO_ANALYTICS_ENABLED', 'HF_HUB_DISABLE_TELEMETRY', 'HF_HUB_OFFLINE', 'DO_NOT_TRACK']\n"
        "print(' '.join(os.environ[k] for k in keys))\n"
        "import gradio.utils as u, huggingface_hub.constants as c\n"
        "print(c.HF_HUB_OFFLINE, c.HF_HUB_DISABLE_TELEMETRY)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRADIO_", "HF_", "DO_NOT"))}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["False 1 1 1", "True True"]
