"""Turn LoadOptions into a loaded (model, tokenizer) pair.

Owns: resolving a model reference (folder, .gguf file, cached Hub id), the one place where
quantization options become a BitsAndBytesConfig, the dequantized-GGUF cache, and turning every
load failure into a one-line LoadError a household member can read.
Invariant: nothing here touches the previously loaded model; the caller swaps only on success.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from localchat.engine.fit import FitReport
from localchat.engine.patches import allow_saving_dequantized, gguf_reads
from localchat.types import LoadedInfo, LoadOptions
from localchat.weights.errors import LoadError
from localchat.weights.models import smollm2_path

log = logging.getLogger(__name__)

# bitsandbytes logs a warning on every int8 matmul (hundreds a token, ~16% of decode time).
logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)


@dataclass(frozen=True)
class ResolvedModel:
    """Where from_pretrained should read: a folder or Hub id, plus a GGUF file name inside it."""

    path: str
    gguf_file: str | None
    name: str


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    info: LoadedInfo


def resolve_model(ref: str) -> ResolvedModel:
    """Map what the user typed to a from_pretrained location, or raise LoadError."""
    ref = ref.strip()
    p = Path(ref).expanduser()
    if p.suffix.lower() == ".gguf" or p.is_file():
        if not p.exists():
            raise LoadError(f"Model file not found: {p}")
        if p.suffix.lower() != ".gguf":
            raise LoadError(f"{p.name} is a file but not a .gguf model; give a .gguf file or a model folder")
        return ResolvedModel(str(p.parent.resolve()), p.name, p.stem)
    if p.is_dir():
        if (p / "config.json").exists():
            return ResolvedModel(str(p.resolve()), None, p.name)
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return ResolvedModel(str(p.resolve()), ggufs[0].name, ggufs[0].stem)
        raise LoadError(f"{p} has no config.json and no single .gguf file, so it is not a model folder")
    if ref.startswith(("/", ".", "~", "\\")) or (os.sep in ref and ref.count("/") != 1) or ":" in ref:
        raise LoadError(f"Model folder or file not found: {ref}")
    if ref.count("/") == 1:
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(ref, "config.json")
        except ValueError as exc:  # HFValidationError: not a well-formed Hub id
            raise LoadError(f"{ref} is neither a model folder nor a valid Hub id") from exc
        if isinstance(cached, str):
            return ResolvedModel(ref, None, ref.split("/")[1])
        raise LoadError(
            f"{ref} is not in the local Hugging Face cache, and localchat does not download "
            "models on its own; download it first or give a local folder or .gguf file"
        )
    raise LoadError(f"Model not found: {ref} (give a folder, a .gguf file, or a Hub id like org/name)")


def pick_device(requested: str) -> str:
    cuda_ok = torch.cuda.is_available()
    if requested == "cuda" and not cuda_ok:
        raise LoadError("CUDA was asked for, but this machine has no usable NVIDIA GPU; choose auto or cpu")
    return "cuda" if requested == "cuda" or (requested == "auto" and cuda_ok) else "cpu"


def pick_dtype(requested: str, device: str) -> torch.dtype:
    """auto: fp32 on CPU (measured faster than bf16 there for small models), bf16/fp16 on CUDA."""
    if requested != "auto":
        return getattr(torch, requested)
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def four_bit_dtype(options: LoadOptions, device: str) -> torch.dtype:
    """What a 4-bit load keeps unquantized layers (embeddings, norms, output layer) in: with dtype
    auto, its compute dtype. On a 2-core CPU bf16 there decoded 1.23x faster than fp32 (58.2 vs 47.3
    tok/s, SmolLM2) and takes half the memory; an explicit dtype is kept."""
    if options.dtype != "auto":
        return getattr(torch, options.dtype)
    config = quantization_config(replace(options, quantization="4bit"), device)
    return config.bnb_4bit_compute_dtype


def quantization_config(options: LoadOptions, device: str) -> Any | None:
    """The only place LoadOptions become a BitsAndBytesConfig."""
    if options.quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    if options.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = options.compute_dtype
    if compute == "auto":
        # bf16 compute measured fastest for 4-bit on CPU; fp16 on GPUs without bf16.
        use_bf16 = device == "cpu" or torch.cuda.is_bf16_supported()
        compute = "bfloat16" if use_bf16 else "float16"
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=options.quant_type_4bit,
        bnb_4bit_compute_dtype=getattr(torch, compute),
        bnb_4bit_use_double_quant=options.double_quant,
    )


def _gguf_cache_dir(resolved: ResolvedModel, cache_root: Path) -> Path:
    f = Path(resolved.path) / (resolved.gguf_file or "")
    st = f.stat()
    key = hashlib.sha256(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_root / f"{f.stem}-{key}"


def dequantized_gguf_folder(resolved: ResolvedModel, cache_root: Path) -> Path:
    """Dequantize a GGUF once into a transformers folder, so bitsandbytes can quantize it fast."""
    target = _gguf_cache_dir(resolved, cache_root)
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with gguf_reads(resolved.gguf_file):
        tokenizer = AutoTokenizer.from_pretrained(resolved.path, gguf_file=resolved.gguf_file)
        model = AutoModelForCausalLM.from_pretrained(resolved.path, gguf_file=resolved.gguf_file, dtype=torch.float32)
    allow_saving_dequantized(model)  # the weights are already plain fp32 tensors
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    del model
    shutil.rmtree(target, ignore_errors=True)  # a leftover without config.json is incomplete
    tmp.rename(target)  # atomic: a crash mid-write never leaves a half folder under the real name
    return target


def _check_architecture(source: str) -> None:
    """Fail early and plainly for a model transformers cannot run as a chat (text-generation) model."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        config = AutoConfig.from_pretrained(source, local_files_only=True)
    except ValueError as exc:
        raise LoadError(
            f"{Path(source).name}: this model architecture is not supported by the installed transformers"
        ) from exc
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise LoadError(f"{Path(source).name}: a {config.model_type} model cannot generate text, so it cannot chat")


def fit_report(options: LoadOptions, cache_root: Path, free_bytes: int | None = None):
    """How much memory each load option of this model needs, and which fit (engine.fit)."""
    from localchat.engine import fit
    from localchat.hardware import detect

    base = adapter_base(Path(options.model).expanduser())  # an adapter adds little: estimate its base
    resolved = resolve_model(base or options.model)
    device = pick_device(options.device)
    source, gguf_file = resolved.path, resolved.gguf_file
    if gguf_file and (_gguf_cache_dir(resolved, cache_root) / "config.json").exists():
        source, gguf_file = str(_gguf_cache_dir(resolved, cache_root)), None  # reading a GGUF takes seconds
    with gguf_reads(gguf_file):
        config = fit.load_config(source, gguf_file)
    hardware = detect()
    free = hardware.free_bytes(device) if free_bytes is None else free_bytes
    bnb = hardware.bitsandbytes_cpu if device == "cpu" else bool(hardware.gpus and hardware.gpus[0].bitsandbytes)
    float32 = pick_dtype(options.dtype, device) == torch.float32
    four_bit = four_bit_dtype(options, device).itemsize
    report = fit.report(resolved.name, config, device, free, options.context_length, float32, bnb, four_bit)
    if device == "cpu" and options.dtype == "auto" and gguf_file is None and _stored_half(config) and _large(config):
        # such a model loads as stored and its layers are converted one by one (load_model), so
        # its peak is the half-precision size: 14 GB for a 7B model, which fits a 24 GB machine
        report = replace(report, unquantized="bfloat16")
    return report


def _stored_half(config: Any) -> bool:
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    return str(stored).replace("torch.", "") in ("bfloat16", "float16")


def choose_quantization(
    options: LoadOptions, cache_root: Path, free_bytes: int | None = None, report: FitReport | None = None
) -> LoadOptions:
    """quantization=auto -> the most accurate option that fits this machine (none, 8bit, 4bit).
    `report`: a fit report already made for these options (it is not made again)."""
    if options.quantization != "auto":
        return options
    from localchat.engine.fit import QUANT_OF

    report = report or fit_report(options, cache_root, free_bytes)
    best = report.best()
    if best is None:
        raise LoadError(report.describe().splitlines()[0].replace("**", "") + " Choose a smaller model.")
    log.info("quantization auto: %s for %s", best.option, report.name)
    return replace(options, quantization=QUANT_OF[best.option])


def _cache_fits(resolved: ResolvedModel, cache_root: Path) -> bool:
    """A dequantized copy is ~4-8x the GGUF; keep it only where the disk has plenty of room."""
    if _gguf_cache_dir(resolved, cache_root).exists():
        return True
    size = (Path(resolved.path) / (resolved.gguf_file or "")).stat().st_size
    probe = cache_root
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free > 20 * size


def _explain(exc: BaseException, resolved: ResolvedModel | None) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    low = text.lower()
    what = resolved.gguf_file or resolved.name if resolved else "the model"
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in low:
        return f"Not enough memory to load {what}; try 4-bit or 8-bit quantization or a smaller model"
    if "architecture" in low and ("not supported" in low or "unknown" in low or "unrecognized" in low):
        return f"{what}: this model architecture is not supported by the installed transformers ({text})"
    if "does not recognize this architecture" in low or "model_type" in low:
        return f"{what}: this model architecture is not supported by the installed transformers ({text})"
    if "gguf" in low or "magic" in low or "safetensor" in low or "header" in low or "corrupt" in low:
        return f"{what} looks damaged or is not a valid model file ({text})"
    return f"Could not load {what}: {text}"


# Hub ids of the bundled models, so an adapter trained on one finds it here.
BUNDLED_HUB_IDS = {"huggingfacetb/smollm2-135m-instruct": "smollm2"}


def adapter_base(folder: Path) -> str | None:
    """For a PEFT (LoRA) adapter folder: where its base model is on this machine; else None."""
    if not (folder.is_dir() and (folder / "adapter_config.json").exists() and not (folder / "config.json").exists()):
        return None
    try:
        base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError) as exc:
        raise LoadError(f"{folder.name}: its adapter_config.json cannot be read ({exc})") from exc
    if not base:
        raise LoadError(f"{folder.name}: the adapter does not say which base model it belongs to")
    if BUNDLED_HUB_IDS.get(str(base).lower()) == "smollm2":
        bundled = smollm2_path()
        if bundled is not None:
            return str(bundled)
    for candidate in (Path(base).expanduser(), folder.parent / base, folder.parent / str(base).rsplit("/", 1)[-1]):
        if candidate.exists():
            return str(candidate)
    return str(base)  # a Hub id: found in the local cache, or a clear error from resolve_model


def load_adapter(options: LoadOptions, cache_root: Path, folder: Path, base: str) -> Loaded:
    """Load the base model with the user's options, then apply the adapter (merged when the base
    is not quantized: same outputs, no per-token cost)."""
    loaded = load_model(replace(options, model=base), cache_root)
    try:
        from peft import PeftModel

        model = PeftModel.from_pretrained(loaded.model, str(folder), is_trainable=False)
        if loaded.info.quantization == "none":
            model = model.merge_and_unload()
        model.eval()
    except Exception as exc:  # noqa: BLE001 - one line for the user
        log.exception("adapter %s failed", folder)
        del loaded  # the base model's memory goes back before the caller frees memory
        raise LoadError(f"{folder.name}: the adapter does not fit its base model ({exc})".splitlines()[0]) from None
    info = replace(
        loaded.info,
        options=options,
        name=f"{loaded.info.name} + {folder.name}",
        memory_bytes=int(model.get_memory_footprint()),
    )
    return Loaded(model=model, tokenizer=loaded.tokenizer, info=info)


def load_model(options: LoadOptions, cache_root: Path) -> Loaded:
    """Load a model and tokenizer; raise LoadError with one clear line on any failure."""
    folder = Path(options.model).expanduser()
    base = adapter_base(folder)
    if base is not None:
        return load_adapter(options, cache_root, folder, base)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    options.validate()
    started = time.perf_counter()
    resolved: ResolvedModel | None = None
    try:
        options = choose_quantization(options, cache_root)
        resolved = resolve_model(options.model)
        device = pick_device(options.device)
        qconfig = quantization_config(options, device)
        dtype = four_bit_dtype(options, device) if options.quantization == "4bit" else pick_dtype(options.dtype, device)
        source, gguf_file = resolved.path, resolved.gguf_file
        fits = bool(gguf_file) and _cache_fits(resolved, cache_root)
        if gguf_file and qconfig is not None and not fits:
            raise LoadError(f"Not enough free disk space to prepare {gguf_file} for {options.quantization} loading")
        if gguf_file and fits:
            # Reading a GGUF costs ~16 s for the 135M starter model; its cached folder loads in <1 s.
            source, gguf_file = str(dequantized_gguf_folder(resolved, cache_root)), None
        kwargs: dict[str, Any] = {"dtype": dtype, "device_map": device}
        if device == "cpu" and qconfig is None and options.dtype == "auto" and not gguf_file and _large_folder(source):
            # as stored (bf16 for most checkpoints): half the float32 peak, and nothing is rounded;
            # engine.formats converts the linear layers and widens the rest to float32
            kwargs["dtype"] = "auto"
        if gguf_file:
            kwargs["gguf_file"] = gguf_file
        if qconfig is not None:
            kwargs["quantization_config"] = qconfig
        local_only = {"local_files_only": True}
        if gguf_file is None:
            _check_architecture(source)
        with gguf_reads(gguf_file):
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs, **local_only)
            tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file, **local_only)
        model.eval()
    except LoadError:
        raise
    except (Exception, MemoryError) as exc:  # noqa: BLE001 - every failure becomes one readable line
        log.exception("loading %s failed", options.model)
        raise LoadError(_explain(exc, resolved)) from exc
    window = _context_window(model, tokenizer)
    if options.context_length:
        window = min(window, options.context_length)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    extra = {}
    if device == "cpu" and qconfig is None:
        from localchat.engine.formats import use_fastest_format
        from localchat.engine.kernels import use_narrow_products

        if options.dtype == "auto" and dtype == torch.float32:
            # measured here: block formats decode ~3x faster than fp32 at 1.7B on an AVX2 CPU; their
            # kernels are built once per machine, into the data dir
            note = use_fastest_format(model, build_dir=cache_root.parent / "kernels")
            if note and "format fp32" not in note:
                extra["format"] = note
        note = use_narrow_products(model)  # measured here: ~1.6x faster decoding with MKL
        if note:
            extra["products"] = note
    info = LoadedInfo(
        options=options,
        name=resolved.name,
        device=device,
        dtype=str(qconfig.bnb_4bit_compute_dtype if options.quantization == "4bit" else dtype).replace("torch.", ""),
        quantization=options.quantization,
        memory_bytes=int(model.get_memory_footprint()),
        context_length=window,
        load_seconds=time.perf_counter() - started,
        has_chat_template=bool(getattr(tokenizer, "chat_template", None)),
        extra=extra,
    )
    return Loaded(model=model, tokenizer=tokenizer, info=info)


def _large(config: Any) -> bool:
    """Is this model big enough for engine.formats to measure weight formats (>= MEASURED_FROM of
    float32 linear weights)? Counted from its config alone."""
    from localchat.engine import fit
    from localchat.engine.formats import MEASURED_FROM

    return fit.count(config).quantizable * 4 >= MEASURED_FROM


def _large_folder(source: str) -> bool:
    from localchat.engine import fit

    try:
        return _large(fit.load_config(source, None))
    except Exception:  # noqa: BLE001 - the load itself reports what is wrong with the folder
        return False


def _context_window(model: Any, tokenizer: Any) -> int:
    cfg = model.config
    cfg = getattr(cfg, "get_text_config", lambda: cfg)()
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", 0)
    return limit if 0 < limit < 10**7 else 2048
