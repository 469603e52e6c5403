"""LoRA adapters (PEFT) beside the models: listed in the picker, loaded on top of their base model
(found by the path or Hub id in adapter_config.json), and they change what the model says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from localchat.engine.backend import TransformersBackend
from localchat.engine.loading import LoadError, load_model
from localchat.types import GenerationRequest, LoadOptions, Message, SamplingParams
from localchat.weights.models import folder_models

HI = (Message("user", "Hello there"),)
GREEDY = SamplingParams(temperature=0, repetition_penalty=1.0, max_new_tokens=12)


def make_adapter(base: Path, target: Path) -> Path:
    """A real PEFT LoRA adapter for `base`, with random (not zero) weights so that it changes the output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(target)
    return target


@pytest.fixture()
def models_dir(tmp_path: Path, tiny_model: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    make_adapter(tiny_model, folder / "tiny-lora")
    return folder


def reply(backend: TransformersBackend) -> str:
    return "".join(c.text for c in backend.stream(GenerationRequest(HI, GREEDY)))


def test_adapters_are_listed_with_their_base(models_dir: Path, tiny_model: Path) -> None:
    (spec,) = folder_models(models_dir)
    assert spec.id == str(models_dir / "tiny-lora") and spec.note == "LoRA adapter"
    assert spec.name == f"tiny-lora (LoRA on {tiny_model.name})" and spec.size_bytes


def test_an_adapter_loads_on_its_base_and_changes_the_reply(models_dir: Path, tiny_model: Path, tmp_path: Path) -> None:
    backend = TransformersBackend(tmp_path / "data", models_dir)
    try:
        backend.load(LoadOptions(model=str(tiny_model), device="cpu"))
        base = reply(backend)
        info = backend.load(LoadOptions(model=str(models_dir / "tiny-lora"), device="cpu"))
        assert info.name == f"{tiny_model.name} + tiny-lora"
        assert reply(backend) != base
    finally:
        backend.close()


def test_an_adapter_finds_a_base_beside_it_by_name(models_dir: Path, tiny_model: Path, tmp_path: Path) -> None:
    import shutil

    shutil.copytree(tiny_model, models_dir / "tiny-llama")
    config = models_dir / "tiny-lora" / "adapter_config.json"
    data = json.loads(config.read_text())
    data["base_model_name_or_path"] = "some-org/tiny-llama"  # as if trained on the Hub copy
    config.write_text(json.dumps(data))
    loaded = load_model(LoadOptions(model=str(models_dir / "tiny-lora"), device="cpu"), tmp_path)
    assert loaded.info.name == "tiny-llama + tiny-lora"


def test_an_adapter_without_its_base_says_so(models_dir: Path, tmp_path: Path) -> None:
    config = models_dir / "tiny-lora" / "adapter_config.json"
    data = json.loads(config.read_text())
    data["base_model_name_or_path"] = "nobody/missing-base"
    config.write_text(json.dumps(data))
    with pytest.raises(LoadError, match="missing-base"):
        load_model(LoadOptions(model=str(models_dir / "tiny-lora"), device="cpu"), tmp_path)


def test_an_adapter_on_a_4bit_base(models_dir: Path, tiny_model: Path, tmp_path: Path) -> None:
    loaded = load_model(LoadOptions(model=str(models_dir / "tiny-lora"), device="cpu", quantization="4bit"), tmp_path)
    assert loaded.info.quantization == "4bit" and loaded.info.name.endswith("+ tiny-lora")
