"""Range checks of SamplingParams and LoadOptions, and the user-facing wording of the value types."""

from __future__ import annotations

import dataclasses

import pytest

from localchat.types import ContextFit, InvalidValue, LoadedInfo, LoadOptions, SamplingParams


def test_defaults_are_valid() -> None:
    params = SamplingParams()
    assert params.validate() is params
    options = LoadOptions(model="some/model")
    assert options.validate() is options


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"temperature": -0.1}, "temperature must be between 0 and 5"),
        ({"temperature": 5.01}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p must be above 0"),
        ({"top_p": 1.01}, "top_p"),
        ({"top_k": -1}, "top_k must be between 0 (off) and 1000"),
        ({"top_k": 1001}, "top_k"),
        ({"min_p": -0.01}, "min_p"),
        ({"min_p": 1.0}, "min_p must be at least 0 and below 1"),
        ({"repetition_penalty": 0.4}, "repetition_penalty must be between 0.5 and 2.5"),
        ({"repetition_penalty": 2.6}, "repetition_penalty"),
        ({"max_new_tokens": 0}, "max_new_tokens must be between 1 and 32768"),
        ({"max_new_tokens": 32769}, "max_new_tokens"),
        ({"seed": -1}, "seed must be empty or a non-negative integer"),
        ({"stop": ("",)}, "stop strings must be non-empty text"),
        ({"stop": ("ok", 3)}, "stop strings"),
    ],
)
def test_sampling_rejects_each_bad_value(changes: dict, words: str) -> None:
    with pytest.raises(InvalidValue) as info:
        dataclasses.replace(SamplingParams(), **changes).validate()
    assert words in str(info.value)
    with pytest.raises(InvalidValue):
        SamplingParams().with_(**changes)


@pytest.mark.parametrize(
    "changes",
    [
        {"temperature": 0.0},
        {"temperature": 5.0},
        {"top_p": 1.0},
        {"top_k": 0},
        {"min_p": 0.99},
        {"repetition_penalty": 0.5},
        {"repetition_penalty": 2.5},
        {"max_new_tokens": 1},
        {"max_new_tokens": 32768},
        {"seed": 0},
        {"stop": ("\n\n", "User:")},
    ],
)
def test_sampling_accepts_the_edges(changes: dict) -> None:
    params = SamplingParams().with_(**changes)
    for key, value in changes.items():
        assert getattr(params, key) == value


def test_with_returns_a_new_value() -> None:
    base = SamplingParams()
    changed = base.with_(temperature=0.2)
    assert changed.temperature == 0.2 and base.temperature == 0.7


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"model": ""}, "choose a model to load"),
        ({"model": "   "}, "choose a model to load"),
        ({"device": "tpu"}, "device must be one of auto, cuda, cpu"),
        ({"dtype": "int8"}, "dtype must be one of auto, float32, bfloat16, float16"),
        ({"quantization": "3bit"}, "quantization must be one of auto, none, 8bit, 4bit"),
        ({"quant_type_4bit": "int4"}, "4-bit type must be nf4 or fp4"),
        ({"compute_dtype": "float64"}, "compute dtype must be one of"),
        ({"context_length": 63}, "context length must be at least 64 tokens"),
        ({"context_length": 0}, "context length"),
    ],
)
def test_load_options_reject_each_bad_value(changes: dict, words: str) -> None:
    with pytest.raises(InvalidValue) as info:
        dataclasses.replace(LoadOptions(model="m"), **changes).validate()
    assert words in str(info.value)


def test_load_options_accept_good_values() -> None:
    options = LoadOptions(
        model="m",
        device="cpu",
        dtype="bfloat16",
        quantization="4bit",
        quant_type_4bit="fp4",
        compute_dtype="float16",
        context_length=64,
    )
    assert options.validate() is options


def test_invalid_value_is_a_value_error() -> None:
    assert issubclass(InvalidValue, ValueError)


@pytest.mark.parametrize(
    ("fit", "text"),
    [
        (ContextFit(), ""),
        (ContextFit(1), "To fit the model's context window, the oldest message was left out."),
        (ContextFit(3), "To fit the model's context window, the 3 oldest messages were left out."),
        (ContextFit(0, True), "To fit the model's context window, the start of your message was cut."),
        (
            ContextFit(2, True),
            "To fit the model's context window, the 2 oldest messages were left out "
            "and the start of your message was cut.",
        ),
    ],
)
def test_context_fit_describe(fit: ContextFit, text: str) -> None:
    assert fit.describe() == text
    assert fit.trimmed == bool(text)


def _info(**changes: object) -> LoadedInfo:
    base = LoadedInfo(
        options=LoadOptions(model="m"),
        name="SmolLM2-135M",
        device="cpu",
        dtype="float32",
        quantization="none",
        memory_bytes=512 * 2**20,
        context_length=8192,
        load_seconds=1.234,
        has_chat_template=True,
    )
    return dataclasses.replace(base, **changes)


def test_loaded_info_describe() -> None:
    assert _info().describe() == "SmolLM2-135M · cpu · float32 · 512 MiB · 8,192-token context"


def test_loaded_info_describe_shows_quantization() -> None:
    text = _info(quantization="4bit", memory_bytes=3 * 2**30, device="cuda", dtype="bfloat16").describe()
    assert text.startswith("SmolLM2-135M · cuda · bfloat16 · 4bit · 3,072 MiB · ")
