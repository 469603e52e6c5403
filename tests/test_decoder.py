"""The lean decode step (engine.decoder) against the model's own forward: the same logits step
by step, for Llama (grouped-query heads) and Qwen2 (q/k/v biases), in float32 and in the q8/q4
formats, with and without padding; its cache grows in place; models it does not know are left
to their forward."""

from __future__ import annotations

import copy

import pytest
import torch

from localchat.engine import decoder, native
from localchat.engine.decoder import Decoder, cache_fits, decoder_for, why_not
from localchat.engine.formats import convert

compiled = pytest.mark.skipif(native.supported() is not None, reason=f"{native.supported()}")
FORMATS = ["fp32", pytest.param("q8", marks=compiled), pytest.param("q4", marks=compiled)]


def _model(family: str, fmt: str = "fp32"):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    shape = dict(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
    )  # fmt: skip
    torch.manual_seed(0)
    if family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**shape))
        for layer in model.model.layers:  # random biases, so a lost bias shows
            for p in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                p.bias.data.normal_()
    else:
        model = LlamaForCausalLM(LlamaConfig(**shape, rope_theta=10000.0))
    model.eval()
    convert(model, fmt)
    return model


def _prefill(model, rows: list[list[int]]):
    """Read left-padded prompts with the model's forward, as batch.py does: (cache, mask, next ids, positions)."""
    from transformers import DynamicCache

    length = max(map(len, rows))
    ids = torch.tensor([[0] * (length - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows])
    places = torch.tensor([[0] * (length - len(r)) + list(range(len(r))) for r in rows])
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, position_ids=places, cache=cache, use_cache=True)
    return cache, mask, out.logits[:, -1].argmax(-1), torch.tensor([len(r) for r in rows])


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("prompts", [[[5, 6, 7, 8, 9]], [[5, 6, 7, 8, 9], [11, 12]]], ids=["one", "padded"])
def test_each_step_gives_the_models_own_logits(family, fmt, prompts) -> None:
    model = _model(family, fmt)
    step = decoder_for(model)
    assert isinstance(step, Decoder)
    cache, mask, token, position = _prefill(model, prompts)
    theirs = copy.deepcopy(cache)
    ours_token, their_token = token, token
    for _ in range(6):
        mask = torch.cat([mask, torch.ones(len(prompts), 1, dtype=torch.long)], 1)
        with torch.inference_mode():
            assert cache_fits(step, cache)
            ours = step(ours_token[:, None], position[:, None], None if bool(mask.all()) else mask, cache)
            their = model(
                input_ids=their_token[:, None], attention_mask=mask, position_ids=position[:, None],
                cache=theirs, use_cache=True,
            ).logits[:, -1]  # fmt: skip
        torch.testing.assert_close(ours, their, rtol=1e-4, atol=1e-5)
        ours_token, their_token, position = ours.argmax(-1), their.argmax(-1), position + 1
        assert torch.equal(ours_token, their_token)
    for a, b in zip(cache.layers, theirs.layers, strict=True):
        torch.testing.assert_close(a.keys, b.keys, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a.values, b.values, rtol=1e-4, atol=1e-5)


def test_the_cache_grows_in_place_and_moves_once_per_room(monkeypatch) -> None:
    monkeypatch.setattr(decoder, "ROOM", 4)
    model = _model("llama")
    step = decoder_for(model)
    cache, _, token, position = _prefill(model, [[5, 6, 7]])
    starts = []
    with torch.inference_mode():
        for _ in range(9):
            token = step(token[:, None], position[:, None], None, cache).argmax(-1)
            position = position + 1
            starts.append(cache.layers[0].keys.data_ptr())
    assert cache.get_seq_length() == 3 + 9
    # moved at the first step (the prompt's cache has no room), then after every 4 tokens
    assert [starts[i] == starts[i - 1] for i in range(1, 9)] == [True, True, True, False, True, True, True, False]
    # a cut-back cache (prefix.py's crop) keeps its buffer and writes over what was cut
    cache.crop(-2)
    kept = cache.layers[0].keys.data_ptr()
    with torch.inference_mode():
        step(token[:, None], position[:, None] - 2, None, cache)
    assert cache.layers[0].keys.data_ptr() == kept and cache.get_seq_length() == 11


def test_models_it_does_not_know_take_their_own_forward() -> None:
    from transformers import GemmaConfig, GemmaForCausalLM

    gemma = GemmaForCausalLM(GemmaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, head_dim=32))  # fmt: skip
    assert "gemma" in why_not(gemma) and decoder_for(gemma) is None
    assert "float32" in why_not(_model("llama").to(torch.bfloat16))
    wrapped = _model("llama")
    wrapped.model.layers[0].mlp.down_proj.forward = lambda x: x  # an offload hook, say
    assert "plain" in why_not(wrapped)


def test_the_engine_decodes_through_it(tiny_model) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from localchat.engine.batch import Batch

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    assert Batch(model, AutoTokenizer.from_pretrained(tiny_model), 256).decoder is not None
