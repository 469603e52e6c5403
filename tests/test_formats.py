"""CPU weight formats (engine.formats): each format's products against float32, the switch of a
real (tiny) model, and `auto`'s measured choice through the real loading code."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from localchat.engine import formats, native
from localchat.engine.formats import BF16Linear, Int4Linear, Int8Linear, Q4Linear, Q8Linear, choose, convert

compiled = pytest.mark.skipif(native.supported() is not None, reason=f"{native.supported()}")


def _linear(n: int = 128, k: int = 256, bias: bool = True) -> nn.Linear:
    torch.manual_seed(0)
    layer = nn.Linear(k, n, bias=bias)
    return layer


@pytest.mark.parametrize(
    ("kind", "tolerance"),
    [
        (BF16Linear, 0.02),
        (Int8Linear, 0.03),
        (Int4Linear, 0.2),
        pytest.param(Q8Linear, 0.03, marks=compiled),
        pytest.param(Q4Linear, 0.2, marks=compiled),
    ],
    ids=["bf16", "int8", "int4", "q8", "q4"],
)
@pytest.mark.parametrize("rows", [1, 3, 40, formats.BLOCK_ROWS + 5], ids=["one", "batch", "short-prompt", "prompt"])
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
    if native.kernels() is not None:
        assert size(Q8Linear(layer)) == fp32 * 34 // 128
        assert size(Q4Linear(layer)) == fp32 * 148 // 1024  # a super-block of 256: 148 bytes


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
    monkeypatch.setattr(native, "kernels", lambda *a, **k: pytest.fail("kernels built for a small model"))
    small = load_model(LoadOptions(model=str(folder), device="cpu"), tmp_path / "cache")
    assert len(picked) == 1 and "format" not in small.info.extra  # small models keep float32 unmeasured


@pytest.mark.parametrize(
    "fmt", ["int8", "int4", pytest.param("q8", marks=compiled), pytest.param("q4", marks=compiled)]
)
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


@compiled
def test_a_large_model_loads_as_stored_in_bf16_and_computes_in_float32(tiny_model, tmp_path, monkeypatch) -> None:
    """A checkpoint stored in bf16 loads in bf16 (half the float32 peak), its linear layers take
    the chosen format, embeddings keep bf16 storage, and everything else is float32 again."""
    import shutil

    from transformers import AutoModelForCausalLM

    from localchat.engine.loading import load_model
    from localchat.types import LoadOptions

    folder = tmp_path / "tiny-bf16"
    shutil.copytree(tiny_model, folder)
    AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16).save_pretrained(folder)
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    monkeypatch.setattr(formats, "MEASURED_FROM", 0)  # the tiny model stands in for a 1B+ one
    monkeypatch.setattr(formats, "FOUR_BIT_FROM", 0)
    seen = []

    def pick_q8(model, allowed):
        seen.append(({m.weight.dtype for m in model.modules() if formats.eligible(m)}, tuple(allowed)))
        return formats.Choice("q8", {"fp32": 2.0, "q8": 1.0})

    monkeypatch.setattr(formats, "choose", pick_q8)
    monkeypatch.setattr(native, "_loaded", {})  # as in a new engine process: nothing built yet
    loaded = load_model(LoadOptions(model=str(folder), device="cpu"), tmp_path / "data" / "cache" / "gguf")
    # loaded as stored; q4 allowed, float32 not (it would double the 16-bit weights' memory)
    assert seen == [({torch.bfloat16}, tuple(f for f in (*formats.EQUAL_QUALITY, "q4") if f != "fp32"))]
    model = loaded.model
    assert isinstance(model.model.embed_tokens, formats.WideEmbedding)
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert all(isinstance(m, Q8Linear) for m in model.modules() if type(m) is torch.nn.Linear) or not [
        m for m in model.modules() if type(m) is torch.nn.Linear
    ]
    others = {p.dtype for n, p in model.named_parameters() if "embed_tokens" not in n}
    assert others == {torch.float32}, others
    assert loaded.info.dtype == "float32"
    from localchat.engine.loading import fit_report

    options = LoadOptions(model=str(folder), device="cpu")
    assert fit_report(options, tmp_path / "c", free_bytes=2**34).unquantized == "bfloat16"  # its load's peak
    assert fit_report(LoadOptions(model=str(tiny_model), device="cpu"), tmp_path / "c", 2**34).unquantized == "float32"
    from localchat.engine.batch import batchable

    assert batchable(model)  # replies still share forward passes
    assert list((tmp_path / "data" / "cache" / "kernels").glob("quant_kernels-*.so"))  # built in the data dir
    ids = torch.tensor([[256, 72, 101, 108, 108, 111]])
    with torch.inference_mode():
        got, want = model(ids).logits, reference(ids).logits
    assert got.dtype == torch.float32
    assert (got - want).norm() / want.norm() < 0.05  # q8 weights, int8 activations: rounding only


def test_a_half_load_never_doubles_into_float32(tiny_model, monkeypatch) -> None:
    """Even where float32 decodes fastest, a model loaded as stored in bf16 keeps 16-bit or smaller
    weights, and a layer no format takes becomes float32 alone, not the whole model."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16)
    monkeypatch.setattr(formats, "MEASURED_FROM", 0)
    # as formats.measure: float32 always timed; here the fastest
    monkeypatch.setattr(formats, "measure", lambda weights, fmts: {"fp32": 1.0, **{f: 3.0 for f in fmts}})
    note = formats.use_fastest_format(model)
    assert note is not None and "format fp32" not in note  # the smallest of the equally fast others
    assert not any(type(m) is torch.nn.Linear for m in model.modules())  # every layer took that format
    assert any(isinstance(m, formats.WeightOnlyLinear) for m in model.modules())
    assert isinstance(model.model.embed_tokens, formats.WideEmbedding)
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert formats.computes_in_float32(model)

    odd = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16)
    formats.widen(odd)  # nothing converted: each linear layer becomes float32 on its own
    assert all(m.weight.dtype == torch.float32 for m in odd.modules() if type(m) is torch.nn.Linear)
    assert odd.model.embed_tokens.weight.dtype == torch.bfloat16 and formats.computes_in_float32(odd)


@compiled
def test_grouped_siblings_give_exactly_their_own_products(tiny_model) -> None:
    """q, k and v (and gate and up) share one kernel call per decode step; every output row is
    computed alone, so grouped products equal each layer's own, bit for bit."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    convert(model, "q4")  # rows of 32 weights: q4 needs 64, so each layer takes q8 instead
    attention = model.model.layers[0].self_attn
    assert isinstance(attention.q_proj, Q8Linear)
    groups = {id(m.group) for m in model.modules() if isinstance(m, Q8Linear) and m.group is not None}
    assert len(groups) == 2 * len(model.model.layers)  # attention and MLP of every layer
    assert attention.k_proj.blocks.data_ptr() == attention.q_proj.blocks.data_ptr() + attention.q_proj.blocks.nbytes
    ids = torch.tensor([[256, 72, 101, 108, 108, 111]])
    with torch.inference_mode():
        grouped = [model(ids[:, : i + 1]).logits[:, -1] for i in range(ids.shape[1])]
        for m in model.modules():
            if isinstance(m, Q8Linear) and m.group is not None:
                m.group.enabled = False
        alone = [model(ids[:, : i + 1]).logits[:, -1] for i in range(ids.shape[1])]
    for a, b in zip(grouped, alone, strict=True):
        assert torch.equal(a, b)


@compiled
def test_a_group_whose_layers_take_different_inputs_switches_itself_off() -> None:
    class Odd(nn.Module):  # calls its projections with different tensors, unlike transformers' models
        def __init__(self) -> None:
            super().__init__()
            self.q_proj, self.k_proj, self.v_proj = (nn.Linear(64, 64, bias=False) for _ in range(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.q_proj(x) + self.k_proj(x * 2) + self.v_proj(x * 3)

    torch.manual_seed(0)
    model = Odd()
    x = torch.randn(1, 64)
    with torch.inference_mode():
        want = model(x)
        convert(model, "q8")
        group = model.q_proj.group
        got = [model(x) for _ in range(3)]
    assert group is not None and not group.enabled
    for g in got:
        assert (g - want).norm() / want.norm() < 0.03  # right all along, only slower until switched off
