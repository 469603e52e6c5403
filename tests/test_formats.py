"""CPU weight formats (engine.formats): each format's products against float32, the switch of a
real (tiny) model, and `auto`'s measured choice through the real loading code."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from localchat.engine import formats
from localchat.engine.formats import BF16Linear, Int4Linear, Int8Linear, choose, convert


def _linear(n: int = 128, k: int = 256, bias: bool = True) -> nn.Linear:
    torch.manual_seed(0)
    layer = nn.Linear(k, n, bias=bias)
    return layer


@pytest.mark.parametrize(
    ("kind", "tolerance"), [(BF16Linear, 0.02), (Int8Linear, 0.03), (Int4Linear, 0.2)], ids=["bf16", "int8", "int4"]
)
@pytest.mark.parametrize("rows", [1, 3, formats.DECODE_ROWS + 5], ids=["one", "batch", "prompt"])
def test_each_format_multiplies_like_float32_within_its_rounding(kind, tolerance, rows) -> None:
    layer = _linear()
    x = torch.randn(2, rows, layer.in_features)
    want = layer(x)
    got = kind(layer)(x)
    assert got.shape == want.shape and got.dtype == torch.float32
    error = (got - want).norm() / want.norm()
    assert error < tolerance, f"{kind.format}: relative error {error:.4f}"
    assert error > 0  # the format really rounds: the layer did not keep float32 weights


def test_a_wider_prompt_reads_the_same_weights_as_a_decode_step() -> None:
    layer = Int8Linear(_linear(bias=False))
    x = torch.randn(formats.DECODE_ROWS + 1, layer.in_features)
    wide = layer(x)  # the prompt path: float32 product on the widened weights
    narrow = torch.cat([layer(x[i : i + 1]) for i in range(x.shape[0])])
    assert torch.allclose(wide, narrow, rtol=0.02, atol=0.02)


def test_formats_store_fewer_bytes_than_float32() -> None:
    layer = _linear(bias=False)
    fp32 = layer.weight.nbytes

    def size(m: nn.Module) -> int:
        return sum(b.nbytes for b in m.buffers())

    assert size(BF16Linear(layer)) == fp32 // 2
    assert size(Int8Linear(layer)) < fp32 // 3.5
    assert size(Int4Linear(layer)) < fp32 // 6


def test_convert_swaps_a_models_linear_layers_and_it_still_generates(tiny_model) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.inference_mode():
        want = model(ids).logits
    linears = sum(type(m) is nn.Linear for m in model.modules())
    assert convert(model, "bf16") == linears
    assert not any(type(m) is nn.Linear for m in model.modules())
    with torch.inference_mode():
        got = model(ids).logits
        model.generate(ids, max_new_tokens=3, do_sample=False)
    assert (got - want).norm() / want.norm() < 0.05


def test_choose_measures_only_the_allowed_formats_and_keeps_float32_unless_clearly_faster() -> None:
    model = nn.Sequential(_linear(256, 256), _linear(256, 256))
    only = choose(model, allowed=("fp32",))
    assert only is not None and only.format == "fp32" and set(only.seconds) == {"fp32"}
    choice = choose(model, allowed=("fp32", "bf16", "int8"))
    assert choice is not None and set(choice.seconds) == {"fp32", "bf16", "int8"}
    fastest = min(choice.seconds.values())
    if choice.format != "fp32":
        assert choice.seconds[choice.format] <= formats.TIE * fastest
        assert choice.seconds["fp32"] >= formats.MIN_GAIN * choice.seconds[choice.format]
        tied = [f for f, s in choice.seconds.items() if s <= formats.TIE * fastest]
        assert formats.BYTES_PER_WEIGHT[choice.format] == min(formats.BYTES_PER_WEIGHT[f] for f in tied)
    assert "measured at load" in choice.note()


def test_auto_on_cpu_loads_through_the_format_choice(tiny_model, tmp_path, monkeypatch) -> None:
    from localchat.engine.loading import load_model
    from localchat.types import LoadOptions

    folder = tiny_model
    picked = []

    def fake_choose(model, allowed=formats.EQUAL_QUALITY):
        picked.append(tuple(allowed))
        return formats.Choice("bf16", {"fp32": 2.0, "bf16": 1.0})

    monkeypatch.setattr(formats, "choose", fake_choose)
    monkeypatch.setattr(formats, "MEASURED_FROM", 0)  # the tiny model stands in for a 1B+ one
    loaded = load_model(LoadOptions(model=str(folder), device="cpu"), tmp_path / "cache")
    assert picked == [formats.EQUAL_QUALITY]
    assert any(isinstance(m, BF16Linear) for m in loaded.model.modules())
    assert "bf16" in loaded.info.extra["format"]
    explicit = load_model(LoadOptions(model=str(folder), device="cpu", dtype="float32"), tmp_path / "cache")
    assert len(picked) == 1  # a dtype asked for by name is kept as asked
    assert not any(isinstance(m, formats.WeightOnlyLinear) for m in explicit.model.modules())
    monkeypatch.setattr(formats, "MEASURED_FROM", 2**30)
    small = load_model(LoadOptions(model=str(folder), device="cpu"), tmp_path / "cache")
    assert len(picked) == 1 and "format" not in small.info.extra  # small models keep float32 unmeasured


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_the_engine_answers_and_batches_in_a_weight_format(fmt, tiny_model, tmp_path, monkeypatch) -> None:
    import threading

    from localchat.engine.backend import TransformersBackend
    from localchat.types import GenerationRequest, LoadOptions, SamplingParams

    monkeypatch.setattr(formats, "MEASURED_FROM", 0)
    monkeypatch.setattr(formats, "choose", lambda model, allowed=(): formats.Choice(fmt, {"fp32": 2.0, fmt: 1.0}))
    if fmt == "int4":  # the tiny model's layers are narrower than real ones: let those torch can pack through
        fits = staticmethod(lambda linear: linear.out_features % 16 == 0 and linear.in_features % 32 == 0)
        monkeypatch.setattr(formats.Int4Linear, "fits", fits)
    backend = TransformersBackend(tmp_path / "data")
    try:
        info = backend.load(LoadOptions(model=str(tiny_model), device="cpu"))
        assert fmt in info.extra["format"]
        params = SamplingParams(temperature=0, max_new_tokens=6)
        replies: list = [None, None]

        def ask(i: int) -> None:
            chunks = list(backend.stream(GenerationRequest(prompt=f"hello {i}", params=params, owner=f"m{i}")))
            replies[i] = chunks[-1].usage

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert all(u is not None and u.completion_tokens > 0 for u in replies), replies
    finally:
        backend.close()
