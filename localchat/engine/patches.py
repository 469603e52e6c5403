"""Every change localchat makes to a library's internals, each guarded by the versions it was
written and tested for.

Owns: the GGUF reader's faster file map, and one parse of a GGUF per load (speed-ups: skipped,
with a warning, on an untested gguf)
and clearing transformers' GGUF quantizer marker so a dequantized model can be saved (needed for
the dequantized-GGUF cache: applied on any version, with a warning outside the tested range).
Invariant: a patch changes only what it names, undoes itself where it is scoped (gguf_reads), and
tests/test_loading.py fails when upstream renames or drops the thing patched.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from packaging.version import Version

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Patch:
    """A change to `package`'s internals, written and tested for versions [low, high)."""

    package: str
    low: str
    high: str
    what: str

    def installed(self) -> str | None:
        try:
            return version(self.package)
        except PackageNotFoundError:
            return None

    def supported(self) -> bool:
        """True inside the tested range; outside it (or not installed) False, with a warning."""
        found = self.installed()
        if found is not None and Version(self.low) <= Version(found) < Version(self.high):
            return True
        log.warning("%s %s is outside %s..%s, the versions %s was tested on", self.package, found, self.low,
                    self.high, self.what)  # fmt: skip
        return False


GGUF_PLAIN_ARRAYS = Patch("gguf", "0.16", "0.20", "gguf_reader.np (GGUFReader maps its file with np.memmap)")
SAVE_DEQUANTIZED = Patch("transformers", "4.50", "6", "PreTrainedModel.hf_quantizer (save_pretrained refuses GGUF)")


class _PlainArrays:
    """numpy as gguf's reader sees it, except that its file map is a plain array view."""

    def __init__(self, numpy: Any):
        self._numpy = numpy

    def __getattr__(self, name: str) -> Any:  # the reader's every np.<name>, once per field
        return getattr(self._numpy, name)

    def memmap(self, *args: Any, **kwargs: Any) -> Any:
        return self._numpy.memmap(*args, **kwargs).view(self._numpy.ndarray)


_reader_swap = threading.RLock()  # one swap of gguf's numpy at a time (a lock, not state)
_loads = threading.local()  # .readers: path, mode -> GGUFReader, while this thread's load is open


@contextmanager
def shared_gguf_reads() -> Iterator[None]:
    """Around a whole model load: every GGUFReader of one file made on this thread inside it is the
    same object, so the file is parsed once. A first load parses it four times otherwise (fit
    estimate, tokenizer, model config, weights): 4 x 8 s for Gemma 3's 262k-token vocabulary on a
    2-core CPU. The readers (and their views of the file map) go when the outermost scope closes;
    other threads neither wait for the load nor see its readers."""
    if getattr(_loads, "readers", None) is not None:
        yield
        return
    _loads.readers = {}
    try:
        yield
    finally:
        _loads.readers = None


def _sharing(stock: Any) -> Any:
    def reader(path: Any, mode: str = "r") -> Any:
        readers = getattr(_loads, "readers", None)
        if readers is None:
            return stock(path, mode)
        key = (os.path.realpath(path), mode)
        if key not in readers:
            readers[key] = stock(path, mode)
        return readers[key]

    return reader


@contextmanager
def gguf_reads(gguf_file: str | None) -> Iterator[None]:
    """Around from_pretrained calls that may read a GGUF (none when gguf_file is None): read it
    2.5x faster, and once per shared_gguf_reads scope. gguf's reader slices its np.memmap once per
    field and per vocabulary entry, and every memmap slice runs Python code (__getitem__,
    __array_finalize__); slices of a plain ndarray view of the same map do not. The bytes, and the
    mapping, are the same. A 262k-token vocabulary (Gemma 3) takes 20 -> 8 s per read on a 2-core CPU."""
    reader = None
    if gguf_file is not None:
        try:
            import gguf
            import gguf.gguf_reader as reader
        except ImportError:  # transformers says what is missing when it needs gguf
            pass
    if reader is None or not GGUF_PLAIN_ARRAYS.supported() or not hasattr(reader, "np"):
        yield
        return
    with _reader_swap:
        if isinstance(reader.np, _PlainArrays):  # an enclosing scope already swapped it
            yield
            return
        stock, stock_reader = reader.np, gguf.GGUFReader
        reader.np, gguf.GGUFReader = _PlainArrays(stock), _sharing(stock_reader)
        try:
            yield
        finally:
            reader.np, gguf.GGUFReader = stock, stock_reader


def allow_saving_dequantized(model: Any) -> None:
    """A model read from a GGUF holds plain fp32 weights, yet its GGUF quantizer marker makes
    save_pretrained refuse it; clear the marker (and its config entry) so the cache can be written."""
    SAVE_DEQUANTIZED.supported()  # a warning only: without this the model cannot be cached at all
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
