"""Memory estimates against real loads (tiny random models and the bundled SmolLM2), the choice
quantization=auto makes, the hardware report and `localchat doctor`."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import ROOT

from localchat.engine import fit
from localchat.engine.loading import LoadError, choose_quantization, fit_report, load_model
from localchat.hardware import detect
from localchat.types import LoadOptions
from localchat.weights.models import materialize

CASES = [
    ("float32", "none", "float32"),
    ("bfloat16", "none", "bfloat16"),
    ("8bit", "8bit", "auto"),
    ("4bit", "4bit", "auto"),
]


@pytest.mark.parametrize(("option", "quantization", "dtype"), CASES)
def test_the_estimate_matches_a_real_load_of_a_tiny_model(
    tiny_model: Path, tmp_path: Path, option, quantization, dtype
):
    loaded = load_model(
        LoadOptions(model=str(tiny_model), device="cpu", dtype=dtype, quantization=quantization), tmp_path
    )
    report = fit_report(LoadOptions(model=str(tiny_model), device="cpu"), tmp_path, free_bytes=2**34)
    estimate = next(e for e in report.estimates if e.option == option)
    real = loaded.info.memory_bytes
    error = abs(estimate.weights_bytes - real) / real
    print(f"tiny {option}: estimate {estimate.weights_bytes} B, real {real} B, error {error:.1%}")
    assert error < 0.05


@pytest.mark.model
def test_the_estimate_matches_the_bundled_model(smol_backend, session_data_dir: Path) -> None:
    info = smol_backend.loaded()
    real = replace(info.options, model=materialize(info.options.model, session_data_dir))
    report = fit_report(real, session_data_dir / "cache" / "gguf-dequantized", free_bytes=2**34)
    fp32 = next(e for e in report.estimates if e.option == "float32")
    error = abs(fp32.weights_bytes - info.memory_bytes) / info.memory_bytes
    print(f"SmolLM2 fp32: estimate {fp32.weights_bytes / 2**20:.1f} MiB, real {info.memory_bytes / 2**20:.1f} MiB")
    assert error < 0.01
    assert report.context == info.context_length  # the KV cache is sized for the real window


def test_auto_picks_the_most_accurate_option_that_fits(tiny_model: Path, tmp_path: Path) -> None:
    options = LoadOptions(model=str(tiny_model), device="cpu", quantization="auto")
    report = fit_report(options, tmp_path, free_bytes=2**34)
    need = {e.option: e.total_bytes for e in report.estimates}
    assert need["float32"] > need["8bit"] > need["4bit"]

    def chosen(free: float) -> str:
        return choose_quantization(options, tmp_path, free_bytes=int(free)).quantization

    assert chosen(2**34) == "none"
    assert chosen((need["float32"] - 1) / fit.HEADROOM) == "8bit"
    assert chosen((need["8bit"] - 1) / fit.HEADROOM) == "4bit"
    with pytest.raises(LoadError, match="Does not fit"):
        chosen(need["4bit"] / 2)
    loaded = load_model(options, tmp_path)  # on this machine it fits unquantized
    assert loaded.info.quantization == "none"


def test_the_report_says_plainly_what_fits(tiny_model: Path, tmp_path: Path) -> None:
    report = fit_report(LoadOptions(model=str(tiny_model), device="cpu"), tmp_path, free_bytes=2**34)
    text = report.describe()
    assert text.startswith("**Fits in RAM in fp32**") and "4-bit" in text and "512-token context" in text
    small = fit.FitReport(report.name, "cuda", 1, report.context, report.estimates).describe()
    assert small.startswith("**Does not fit** on the GPU") and "can be used" in small


def test_hardware_is_read_from_this_machine() -> None:
    hw = detect()
    assert hw.cores >= 1 and hw.ram_total_bytes > hw.ram_free_bytes > 0
    assert "RAM:" in hw.describe() and "bitsandbytes" in hw.describe()


@pytest.mark.model
def test_doctor_reports_the_machine_and_the_fit(session_data_dir: Path, smol_backend) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "localchat.cli", "doctor", "--data-dir", str(session_data_dir)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "CPU:" in out.stdout and "RAM:" in out.stdout and "Fits in RAM" in out.stdout
    from localchat.engine.native import supported

    kernels = "yes" if supported() is None else f"no: {supported()}"
    assert f"Compiled CPU kernels for q8/q4 weights: {kernels}" in out.stdout


@pytest.mark.parametrize("quantization", ["none", "8bit", "4bit"])
def test_every_load_checks_its_estimate(tmp_path: Path, tiny_model: Path, quantization: str) -> None:
    from localchat.engine.backend import TransformersBackend

    backend = TransformersBackend(tmp_path)
    try:
        info = backend.load(LoadOptions(model=str(tiny_model), device="cpu", quantization=quantization))
        error = float(info.extra["estimate_error"].rstrip("%")) / 100
        assert abs(error) < 0.05, info.extra
    finally:
        backend.close()
