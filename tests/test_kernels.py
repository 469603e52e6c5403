"""Narrow products (engine/kernels.py): the same arithmetic as nn.Linear up to float rounding, only
where they apply, and the real model's greedy replies unchanged by them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import nn

from localchat.engine import kernels
from localchat.engine.kernels import NARROW_ROWS, NarrowLinear, narrow_product, use_narrow_products


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 7, NARROW_ROWS])
@pytest.mark.parametrize("bias", [False, True])
def test_a_narrow_product_equals_linear(rows: int, bias: bool) -> None:
    torch.manual_seed(rows)
    layer = nn.Linear(64, 48, bias=bias)
    x = torch.randn(1, rows, 64)  # [batch, tokens, features], as a decoder layer passes it
    out = narrow_product(x, layer.weight, layer.bias)
    assert out.shape == (1, rows, 48) and out.is_contiguous()
    torch.testing.assert_close(out, layer(x), rtol=1e-5, atol=1e-5)


def test_narrow_linear_keeps_nn_linear_for_many_rows() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(16, 8)
    many = torch.randn(2, NARROW_ROWS, 16)  # a prompt: 20 rows
    expected = nn.functional.linear(many, layer.weight, layer.bias)
    layer.__class__ = NarrowLinear
    assert torch.equal(layer(many), expected)  # bit for bit: the very same call
    few = many[:1, :3]
    torch.testing.assert_close(layer(few), expected[:1, :3], rtol=1e-5, atol=1e-5)


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 32)
        self.inner = nn.Linear(32, 32)
        self.bf16 = nn.Linear(32, 32).to(torch.bfloat16)
        self.head = nn.Linear(32, 100, bias=False)
        self.head.weight = self.embed.weight


def test_only_plain_float32_linear_layers_change(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "measure", lambda weights, rows: (3.0, 1.0))  # narrow measured 3x faster
    model = Tied()
    weight = model.embed.weight
    note = use_narrow_products(model)
    assert note == "faster CPU decoding on: narrow products, measured at load 3.0x for one reply, 3.0x for four"
    assert type(model.inner) is NarrowLinear and type(model.head) is NarrowLinear
    assert type(model.bf16) is nn.Linear  # bf16 keeps its own kernels
    assert model.inner.narrow_rows == NARROW_ROWS == 8
    assert model.head.weight is weight is model.embed.weight  # nothing copied; still tied


def test_narrow_products_stop_at_4_rows_where_8_measured_slower(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "measure", lambda weights, rows: (3.0, 1.0) if rows < 8 else (1.0, 1.5))
    model = Tied()
    assert use_narrow_products(model) is not None and model.inner.narrow_rows == 4
    x = torch.randn(1, 6, 32)  # 6 rows: past the limit, so nn.Linear's own call
    assert torch.equal(model.inner(x), nn.functional.linear(x, model.inner.weight, model.inner.bias))


def test_the_measured_weights_are_the_largest_and_enough_others_to_leave_the_caches() -> None:
    layers = [nn.Linear(512, 512, bias=False) for _ in range(80)] + [nn.Linear(512, 4096, bias=False)]
    weights = kernels.sample(layers)
    assert weights[0].shape == (4096, 512)  # the largest first
    others = [w.nbytes for w in weights[1:]]
    assert sum(others) >= kernels.SAMPLE_BYTES > sum(others[:-1])


def test_nothing_changes_where_narrow_products_are_not_clearly_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "measure", lambda weights, rows: (1.1, 1.0))  # within noise
    model = Tied()
    assert use_narrow_products(model) is None
    assert type(model.inner) is nn.Linear and type(model.head) is nn.Linear


@contextmanager
def products(model: nn.Module, kind: type[nn.Linear]) -> Iterator[None]:
    """Run the model's float32 linear layers as `kind` for a while."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear) and m.weight.dtype == torch.float32]
    before = [type(m) for m in layers]
    for m in layers:
        m.__class__ = kind
    try:
        yield
    finally:
        for m, cls in zip(layers, before, strict=True):
            m.__class__ = cls


@pytest.mark.model
def test_the_real_model_answers_the_same_with_narrow_products(smol_backend) -> None:
    current = smol_backend._current
    model, tokenizer = current.model, current.tokenizer
    messages = [{"role": "user", "content": "Write a short poem about the sea."}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)

    def greedy() -> list[int]:
        with torch.inference_mode():
            return smol_backend.worker.call(
                lambda: model.generate(**ids, max_new_tokens=48, do_sample=False)[0].tolist()
            )

    with products(model, nn.Linear):
        stock = greedy()
    with products(model, NarrowLinear):
        narrow = greedy()
    assert narrow == stock
    assert len(stock) > ids["input_ids"].shape[1] + 20  # a real reply, not an immediate end


@pytest.mark.model
def test_the_bundled_model_loads_with_narrow_products_where_they_are_faster(smol_backend) -> None:
    info = smol_backend.loaded()
    model = smol_backend._current.model
    narrow = sum(type(m) is NarrowLinear for m in model.modules())
    if "products" in info.extra:  # measured faster on this machine (on a 2-core EPYC: 2-3x)
        assert narrow == 30 * 7 + 1 and "for one reply" in info.extra["products"]
    else:
        assert narrow == 0
