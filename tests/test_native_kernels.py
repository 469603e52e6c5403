"""The compiled CPU kernels (engine/quant_kernels.c through engine.native): the block layouts
against weights they hold exactly, products against float32 arithmetic on the same weights, odd
sizes, the build kept in the data directory, and the fallback where no compiler is found."""

from __future__ import annotations

import pytest
import torch

from localchat.engine import native

pytestmark = pytest.mark.skipif(native.supported() is not None, reason=f"{native.supported()}")


@pytest.fixture(scope="module")
def kernels(tmp_path_factory) -> native.Kernels:
    found = native.kernels(tmp_path_factory.mktemp("data") / "cache" / "kernels")
    assert found is not None, "the kernels did not build on a machine that supports them"
    return found


def _q4_exact(n: int, k: int) -> torch.Tensor:
    """Weights a q4 row holds exactly: per block d * sc * q + dmin * mn, with d and dmin in fp16 per
    super-block of 256, sc and mn 8-bit per block, q spanning 0..15 in every block."""
    torch.manual_seed(1)
    nb = k // 32
    supers = -(-nb // 8)
    q = torch.randint(0, 16, (n, nb, 32)).float()
    q[..., 0], q[..., 1] = 0, 15  # min and max in every block, so packing finds its scale and minimum
    d = (torch.rand(n, supers, 1) * 1e-4 + 1e-5).half().float().repeat_interleave(8, 1)[:, :nb]
    dmin = (torch.rand(n, supers, 1) * 1e-3 + 1e-4).half().float().repeat_interleave(8, 1)[:, :nb]
    sc = torch.randint(1, 256, (n, nb, 1)).float()
    mn = torch.randint(-127, 128, (n, nb, 1)).float()
    sc[:, ::8], mn[:, ::8] = 255, -127  # each super-block's largest: packing finds its d and dmin
    return (q * d * sc + dmin * mn).reshape(n, k)


def test_q4_rows_hold_exactly_what_their_super_blocks_hold(kernels) -> None:
    k = 448  # one whole super-block and one of 6 blocks
    w = _q4_exact(24, k)
    blocks = kernels.pack("q4", w)
    assert blocks.shape == (24, 2 * 20 + k // 2)  # 4.7 bits a weight here, 4.625 in whole super-blocks
    wide = kernels.unpack("q4", blocks, k, torch.empty(24, k))
    assert torch.allclose(wide, w, rtol=1e-6, atol=1e-7)


def test_q8_blocks_round_each_weight_to_its_blocks_step(kernels) -> None:
    torch.manual_seed(2)
    w = torch.randn(40, 64)
    wide = kernels.unpack("q8", kernels.pack("q8", w), 64, torch.empty(40, 64))
    step = w.reshape(40, 2, 32).abs().amax(-1, keepdim=True) / 127
    assert ((wide - w).reshape(40, 2, 32).abs() <= step * 0.51).all()
    assert not torch.equal(wide, w)


@pytest.mark.parametrize("kind", ["q8", "q4"])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 9])
@pytest.mark.parametrize("k", [192, 256, 2048])  # 6 blocks (fewer than the 8 read at once), 8, 64
def test_products_equal_float32_arithmetic_on_the_same_weights(kernels, kind, rows, k) -> None:
    torch.manual_seed(3)
    w = torch.randn(72, k) * 0.05
    blocks = kernels.pack(kind, w)
    wide = kernels.unpack(kind, blocks, k, torch.empty(72, k))
    x = torch.randn(rows, k)
    got = kernels.matmul(kind, blocks, k, x)
    want = x @ wide.t()
    assert got.shape == (rows, 72)
    # activations are rounded to int8 per 32 for q8 (as llama.cpp's Q8_0), per 256 for q4 (Q8_K)
    error = (got - want).norm() / want.norm()
    assert error < 0.012, error
    for i in range(rows):  # each row is its own product, whatever its neighbours in the batch
        alone = kernels.matmul(kind, blocks, k, x[i : i + 1])
        if kind == "q4":  # one row sums in the same order as several: batched equals alone, bit for bit
            assert torch.equal(got[i : i + 1], alone)
        else:  # q8 sums one row in two chains (even and odd blocks), several rows in one
            assert torch.allclose(got[i : i + 1], alone, atol=1e-5)


def test_the_build_is_kept_in_the_data_directory_and_reused(tmp_path, monkeypatch) -> None:
    build_dir = tmp_path / "cache" / "kernels"
    monkeypatch.setattr(native, "_loaded", {})
    assert native.kernels(build_dir) is not None
    built = list(build_dir.glob("quant_kernels-*.so"))
    assert len(built) == 1 and not list(build_dir.glob("*.partial"))
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setattr(native, "_build", lambda *a: pytest.fail("rebuilt although the library was there"))
    assert native.kernels(build_dir) is not None
    assert built[0].stat().st_mtime_ns == stamp


def test_without_a_compiler_the_kernels_are_off_and_formats_fall_back(tmp_path, monkeypatch) -> None:
    from torch import nn

    from localchat.engine import formats

    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setattr(native, "_compiler", lambda: None)
    assert "compiler" in native.supported()
    assert native.kernels(tmp_path / "kernels") is None
    assert formats.available(formats.FORMATS) == ["fp32", "bf16", "int8", "int4"]
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64))
    assert formats.convert(model, "q4") == 0  # nothing changes, the model still runs in float32
    assert not (tmp_path / "kernels").exists()


def test_a_failed_build_is_one_clear_line_and_no_kernels(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setattr(native, "FLAGS", [*native.FLAGS, "-mno-such-flag"])
    with caplog.at_level("WARNING"):
        assert native.kernels(tmp_path / "kernels") is None
    assert "building the CPU kernels failed" in caplog.text
    assert not list((tmp_path / "kernels").glob("*"))


def test_the_wrappers_refuse_what_c_would_misread(kernels) -> None:
    """Checked before every call: the C code trusts sizes and dtypes (a bf16 x once read past its end)."""
    blocks = kernels.pack("q4", torch.randn(8, 64))
    with pytest.raises(ValueError, match="rows of 64"):
        kernels.matmul("q4", blocks, 64, torch.randn(2, 32))
    with pytest.raises(ValueError, match="multiple of 64"):
        kernels.matmul("q4", blocks, 96, torch.randn(2, 96))
    with pytest.raises(ValueError, match="uint8 rows"):
        kernels.matmul("q8", blocks, 64, torch.randn(2, 64))  # q4 blocks read as q8
    with pytest.raises(ValueError, match="multiple of 32"):
        kernels.pack("q8", torch.randn(3, 40))
    with pytest.raises(ValueError, match="float32"):
        kernels.unpack("q4", blocks, 64, torch.empty(8, 64, dtype=torch.bfloat16))
    x = torch.randn(3, 64)
    want = kernels.matmul("q4", blocks, 64, x)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # as transformers does during a load
    try:
        got = kernels.matmul("q4", blocks, 64, x.to(torch.bfloat16).float())
        assert got.dtype == torch.float32
        assert kernels.matmul("q4", blocks, 64, x.to(torch.bfloat16)).dtype == torch.float32
    finally:
        torch.set_default_dtype(previous)
    assert torch.allclose(got, want, rtol=0.05, atol=0.05)
    assert kernels.matmul("q4", blocks, 64, torch.empty(0, 64)).shape == (0, 8)


def test_one_build_attempt_per_process(tmp_path, monkeypatch) -> None:
    attempts = []

    def failing(compiler, target):
        attempts.append(target)
        raise native.KernelError("building the CPU kernels failed: no")

    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setattr(native, "_build", failing)
    assert native.kernels(tmp_path / "kernels") is None
    assert native.kernels() is None and native.kernels(tmp_path / "other") is None
    assert len(attempts) == 1  # not once per caller: a compiler that hangs would hang every load


def test_a_compiler_without_openmp_still_builds_them_for_one_core(tmp_path, monkeypatch, caplog) -> None:
    import shutil

    cc = tmp_path / "cc-without-openmp"
    real = shutil.which("cc") or shutil.which("gcc")
    cc.write_text(f'#!/bin/sh\nfor a in "$@"; do [ "$a" = -fopenmp ] && exit 1; done\nexec {real} "$@"\n')
    cc.chmod(0o755)
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setattr(native, "_compiler", lambda: str(cc))
    with caplog.at_level("WARNING"):
        found = native.kernels(tmp_path / "kernels")
    assert found is not None and "without OpenMP" in caplog.text
    w, x = torch.randn(16, 64), torch.randn(2, 64)
    blocks = found.pack("q8", w)
    want = x @ found.unpack("q8", blocks, 64, torch.empty(16, 64)).t()
    got = found.matmul("q8", blocks, 64, x)
    assert (got - want).norm() / want.norm() < 0.012  # int8 activations' rounding, as with OpenMP
