"""Loading: model references, device/dtype choice, bitsandbytes config, and clear failures."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

from localchat.backend import ModelLoadFailed
from localchat.engine.loading import LoadError, load_model, pick_device, pick_dtype, quantization_config, resolve_model
from localchat.types import GenerationRequest, LoadOptions, Message, SamplingParams


def test_resolve_folder_gguf_file_and_gguf_folder(tmp_path: Path, tiny_model: Path):
    assert resolve_model(str(tiny_model)).gguf_file is None
    gguf = tmp_path / "m" / "model.Q4.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    r = resolve_model(str(gguf))
    assert (r.path, r.gguf_file, r.name) == (str(gguf.parent.resolve()), "model.Q4.gguf", "model.Q4")
    assert resolve_model(str(gguf.parent)).gguf_file == "model.Q4.gguf"  # a folder with one .gguf


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("/nope/model.gguf", "not found"),
        ("/nope/folder/", "not found"),
        ("someone/not-downloaded", "not in the local Hugging Face cache"),
        ("justaword", "Model not found"),
        ("/models", "not found"),
        ("not a/valid id", "nor a valid Hub id"),
    ],
)
def test_resolve_errors_are_one_clear_line(ref: str, message: str, tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(LoadError, match=message) as err:
        resolve_model(ref)
    assert "\n" not in str(err.value)


def test_resolve_rejects_non_model_files_and_folders(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(LoadError, match="not a .gguf"):
        resolve_model(str(tmp_path / "notes.txt"))
    with pytest.raises(LoadError, match="not a model folder"):
        resolve_model(str(tmp_path))


def test_hub_id_from_local_cache_loads_offline(tmp_path: Path, tiny_model: Path, monkeypatch):
    hub = tmp_path / "hub"
    snap = hub / "models--family--tiny" / "snapshots" / "0123abc"
    shutil.copytree(tiny_model, snap)
    (hub / "models--family--tiny" / "refs").mkdir()
    (hub / "models--family--tiny" / "refs" / "main").write_text("0123abc")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    loaded = load_model(LoadOptions(model="family/tiny", device="cpu"), tmp_path / "cache")
    assert loaded.info.name == "tiny" and loaded.info.context_length == 512


def test_device_and_dtype_choice():
    assert pick_device("cpu") == "cpu"
    assert pick_dtype("auto", "cpu") == torch.float32  # measured faster than bf16 on CPU
    assert pick_dtype("bfloat16", "cpu") == torch.bfloat16
    if not torch.cuda.is_available():
        assert pick_device("auto") == "cpu"
        with pytest.raises(LoadError, match="CUDA was asked for"):
            pick_device("cuda")


def test_quantization_config_is_built_in_one_place():
    assert quantization_config(LoadOptions("m"), "cpu") is None
    q8 = quantization_config(LoadOptions("m", quantization="8bit"), "cpu")
    assert q8.load_in_8bit and not q8.load_in_4bit
    q4 = quantization_config(LoadOptions("m", quantization="4bit", quant_type_4bit="fp4", double_quant=False), "cpu")
    assert q4.load_in_4bit and q4.bnb_4bit_quant_type == "fp4" and not q4.bnb_4bit_use_double_quant
    assert q4.bnb_4bit_compute_dtype == torch.bfloat16
    q4b = quantization_config(LoadOptions("m", quantization="4bit", compute_dtype="float32"), "cpu")
    assert q4b.bnb_4bit_compute_dtype == torch.float32 and q4b.bnb_4bit_quant_type == "nf4"


def test_corrupt_gguf_gives_a_clear_error(tmp_path: Path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"this is not a gguf file at all" * 100)
    with pytest.raises(LoadError, match="broken.gguf looks damaged or is not a valid model file") as err:
        load_model(LoadOptions(model=str(bad), device="cpu"), tmp_path / "cache")
    assert "\n" not in str(err.value)


def test_unsupported_architecture_gives_a_clear_error(tmp_path: Path):
    folder = tmp_path / "alien"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "alien-net-9000"}))
    with pytest.raises(LoadError, match="not supported"):
        load_model(LoadOptions(model=str(folder), device="cpu"), tmp_path / "cache")


def test_context_length_option_caps_the_window(tmp_path: Path, tiny_model: Path):
    loaded = load_model(LoadOptions(model=str(tiny_model), device="cpu", context_length=128), tmp_path)
    assert loaded.info.context_length == 128


def test_failed_load_keeps_the_previous_model(tiny_backend, tmp_path: Path):
    before = tiny_backend.loaded()
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"\x00" * 1000)
    with pytest.raises(ModelLoadFailed, match="broken.gguf"):
        tiny_backend.load(LoadOptions(model=str(bad), device="cpu"))
    assert tiny_backend.loaded() == before
    chunks = list(
        tiny_backend.stream(
            GenerationRequest((Message("user", "hi"),), SamplingParams(temperature=0, max_new_tokens=5))
        )
    )
    assert chunks[-1].usage.completion_tokens == 5


@pytest.mark.parametrize("quant", ["8bit", "4bit"])
def test_bitsandbytes_on_cpu_with_a_tiny_model(tmp_path: Path, tiny_model: Path, quant: str):
    loaded = load_model(LoadOptions(model=str(tiny_model), device="cpu", quantization=quant), tmp_path)
    assert loaded.info.quantization == quant
    names = {type(m).__name__ for m in loaded.model.modules()}
    assert ("Linear8bitLt" if quant == "8bit" else "Linear4bit") in names
    assert "NarrowLinear" not in names and "products" not in loaded.info.extra  # bitsandbytes keeps its kernels


def test_out_of_memory_is_explained_in_one_line():
    from localchat.engine.loading import ResolvedModel, _explain

    resolved = ResolvedModel("/models", "big.gguf", "big")
    for exc in (MemoryError(), torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")):
        text = _explain(exc, resolved)
        assert text.startswith("Not enough memory to load big.gguf") and "4-bit" in text and "\n" not in text


# -- library patches: each fails here when upstream changes what it patches -------------------
def test_every_patch_is_on_a_tested_version_of_its_library() -> None:
    from localchat.engine.patches import GGUF_PLAIN_ARRAYS, SAVE_DEQUANTIZED

    for patch in (GGUF_PLAIN_ARRAYS, SAVE_DEQUANTIZED):
        assert patch.supported(), f"{patch.package} {patch.installed()}: check {patch.what}, then widen its range"


def test_the_gguf_reader_still_maps_its_file_with_numpy_memmap() -> None:
    import inspect

    import gguf.gguf_reader as reader
    import numpy as np

    assert reader.np is np  # the module attribute gguf_reads swaps
    assert "np.memmap(" in inspect.getsource(reader.GGUFReader.__init__)  # the call it makes a plain view


def test_gguf_reads_puts_numpy_back_and_skips_an_untested_gguf(monkeypatch, caplog) -> None:
    import gguf.gguf_reader as reader
    import numpy as np

    from localchat.engine import patches

    with patches.gguf_reads("model.gguf"):
        assert reader.np is not np  # swapped while reading
    assert reader.np is np
    monkeypatch.setattr(patches, "GGUF_PLAIN_ARRAYS", patches.Patch("gguf", "0", "0.1", "test"))
    with caplog.at_level("WARNING"), patches.gguf_reads("model.gguf"):
        assert reader.np is np  # outside the tested range: left alone
    assert "outside 0..0.1" in caplog.text


def test_a_load_parses_each_gguf_once(tmp_path: Path) -> None:
    import inspect

    import gguf
    import numpy as np
    from transformers import modeling_gguf_pytorch_utils

    from localchat.engine import patches

    # transformers looks the reader up on the gguf module at every call: what the sharing swaps
    assert "from gguf import GGUFReader" in inspect.getsource(modeling_gguf_pytorch_utils.load_gguf_checkpoint)
    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_uint32("llama.block_count", 2)
    writer.add_tensor("token_embd.weight", np.arange(32, dtype=np.float32).reshape(4, 8))
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file()
    writer.close()
    stock = gguf.GGUFReader
    with patches.shared_gguf_reads():
        with patches.gguf_reads(path.name):
            first = gguf.GGUFReader(path)
        with patches.gguf_reads(path.name), patches.gguf_reads(path.name):  # scopes nest
            again = gguf.GGUFReader(str(tmp_path / "." / "tiny.gguf"))
        assert again is first and first.fields["llama.block_count"].contents() == 2
        assert np.array_equal(first.tensors[0].data.reshape(-1), np.arange(32))

        def read_elsewhere() -> None:  # another thread (a fit estimate for the settings panel)
            with patches.gguf_reads(path.name):
                elsewhere.append(gguf.GGUFReader(path))

        elsewhere: list = []
        thread = threading.Thread(target=read_elsewhere, daemon=True)
        thread.start(), thread.join(timeout=30)
        assert not thread.is_alive()  # the load's scope holds no lock
        assert elsewhere[0] is not first and elsewhere[0].fields["llama.block_count"].contents() == 2
    assert gguf.GGUFReader is stock
    with patches.gguf_reads(path.name):
        assert gguf.GGUFReader(path) is not gguf.GGUFReader(path)  # no load scope: nothing is kept


def test_save_pretrained_still_refuses_a_model_by_its_hf_quantizer(tiny_model: Path, tmp_path: Path) -> None:
    import inspect

    from transformers import AutoModelForCausalLM, PreTrainedModel

    from localchat.engine.patches import allow_saving_dequantized

    source = inspect.getsource(PreTrainedModel.save_pretrained)
    assert 'getattr(self, "hf_quantizer", None)' in source and "is_serializable" in source

    class Marker:  # what a GGUF load leaves: a quantizer that cannot be serialized
        is_serializable = False

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    model.hf_quantizer = Marker()
    model.config.quantization_config = {"quant_method": "gguf"}
    allow_saving_dequantized(model)
    model.save_pretrained(tmp_path / "saved")
    assert "quantization_config" not in json.loads((tmp_path / "saved" / "config.json").read_text())


def test_models_and_loading_import_one_way() -> None:
    import ast

    import localchat.weights.models as models

    tree = ast.parse(Path(models.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "localchat.engine.loading" not in imported  # loading imports models, never the reverse
    assert models.LoadError is LoadError
