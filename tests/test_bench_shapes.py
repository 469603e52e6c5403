"""bench/shapes.py: a shape's folder (random weights, the bundled tokenizer) is what localchat's
loader reads like any model, with exactly the shape's config; built once, then reused."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

from localchat.engine.loading import load_model
from localchat.types import LoadOptions

BENCH = Path(__file__).resolve().parent.parent / "bench" / "shapes.py"


def _shapes():
    spec = importlib.util.spec_from_file_location("bench_shapes", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def test_tiny_shape_builds_once_and_loads_with_its_config(tmp_path: Path) -> None:
    shapes = _shapes()
    shape = shapes.SHAPES["tiny"]
    folder = shapes.build("tiny", tmp_path)
    weights = folder / "model.safetensors"
    written = weights.stat().st_mtime_ns
    assert shapes.resolve("tiny", tmp_path) == folder and weights.stat().st_mtime_ns == written  # reused
    assert not list(tmp_path.glob("*.partial"))

    config = json.loads((folder / "config.json").read_text())
    assert {k: config[k] for k in shape.config_fields()} == shape.config_fields()
    assert config["rope_parameters"]["rope_theta"] == shape.rope_theta

    loaded = load_model(LoadOptions(model=str(folder), device="cpu"), tmp_path / "cache")
    assert loaded.info.context_length == shape.context
    assert sum(p.numel() for p in loaded.model.parameters()) == shape.parameters()
    tokenizer = loaded.tokenizer
    assert len(tokenizer) == shape.vocab and tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template

    ids = tokenizer("The lighthouse keeper and the cat", return_tensors="pt")
    with torch.inference_mode():
        out = loaded.model.generate(**ids, max_new_tokens=6, do_sample=False)
    new = out[0, ids["input_ids"].shape[1] :].tolist()
    assert len(new) == 6 and not set(new) & set(tokenizer.all_special_ids)  # never ends a timed reply early
