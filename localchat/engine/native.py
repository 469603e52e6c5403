"""The compiled CPU kernels of quant_kernels.c: built once per machine with the C compiler, loaded
with ctypes, and absent (None) wherever they cannot be, so every caller has a torch fallback.

Owns: finding a compiler, building the library into the data directory's cache (or, with none
given, a temporary folder removed once the library is loaded), and calling it on torch tensors.
Invariants: built only where the CPU has AVX2 with FMA and F16C (x86-64 from 2013 on) and a C
compiler answers; one attempt per process (a failed build is logged once, never retried); torch is
imported before the library loads, so its OpenMP runtime (libgomp.so.1) is the one the kernels
use and the two share one thread pool.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("quant_kernels.c")
FLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-fPIC", "-shared", "-std=c11"]
BLOCK = 32  # weights per block (QK in the C source)
KINDS = {"q8": 8, "q4": 4}
# q8: 34 bytes per block of 32; q4: super-blocks of 8 blocks, 20 bytes of scales each, and half a
# byte a weight (the last super-block may be short: rows of a multiple of 64)
ROW_MULTIPLE = {"q8": BLOCK, "q4": 2 * BLOCK}


def row_bytes(kind: str, k: int) -> int:
    """Bytes of one packed row of k weights (lc_row_bytes in the C source)."""
    if kind == "q4":
        return -(-k // 256) * 20 + k // 2
    return k // BLOCK * 34


def fits(kind: str, k: int) -> bool:
    """Can rows of k weights take this kind?"""
    return k > 0 and k % ROW_MULTIPLE[kind] == 0


_lock = threading.Lock()
_loaded: dict[str, Kernels | None] = {}


class KernelError(RuntimeError):
    """The compiled kernels could not be built or loaded here."""


def supported() -> str | None:
    """Why this machine cannot use the kernels, or None when it can."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"the kernels need an x86-64 CPU (this is {platform.machine()})"
    if sys.platform == "win32":
        return "the kernels are built with gcc, which Windows lacks"
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return "the kernels need AVX2"
    if _compiler() is None:
        return "no C compiler (cc or gcc) was found"
    return None


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _key(compiler: str) -> str:
    digest = hashlib.sha256(SOURCE.read_bytes())
    digest.update(" ".join([compiler, *FLAGS]).encode())
    return digest.hexdigest()[:16]


def _build(compiler: str, target: Path) -> None:
    """Build into `target`; without OpenMP (one thread) when the compiler has none (clang without
    libomp), since the kernels are correct either way."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    try:
        for flags in (FLAGS, [f for f in FLAGS if f != "-fopenmp"]):
            done = subprocess.run(
                [compiler, *flags, str(SOURCE), "-o", str(partial), "-lm"],
                capture_output=True,
                text=True,
                timeout=120,
            )
            if done.returncode == 0:
                if flags is not FLAGS:
                    log.warning("the CPU kernels were built without OpenMP: they use one core")
                os.replace(partial, target)  # atomic: another process building at once finds a whole file
                return
        raise KernelError(f"building the CPU kernels failed: {done.stderr.strip()[-400:]}")
    finally:
        partial.unlink(missing_ok=True)


def kernels(build_dir: Path | None = None) -> Kernels | None:
    """The loaded kernels, building them on first use; None where they cannot be (logged once).
    `build_dir`: where the built library is kept between runs (the data directory's cache)."""
    key = str(build_dir)
    with _lock:
        if _loaded:  # one attempt per process: a library loaded from elsewhere, or a failed build
            return next(iter(_loaded.values()))
        reason = supported()
        found: Kernels | None = None
        if reason:
            log.info("compiled CPU kernels off: %s", reason)
        else:
            compiler = _compiler()
            assert compiler is not None
            try:
                found = _load(compiler, build_dir)
            except (KernelError, OSError, subprocess.SubprocessError) as exc:
                log.warning("compiled CPU kernels off: %s", exc)
        _loaded[key] = found
        return found


def _load(compiler: str, build_dir: Path | None) -> Kernels:
    name = f"quant_kernels-{_key(compiler)}.so"
    if build_dir is not None:
        target = Path(build_dir) / name
        if not target.is_file():
            _build(compiler, target)
        return Kernels(ctypes.CDLL(str(target)))
    with tempfile.TemporaryDirectory(prefix="localchat-kernels-") as tmp:
        target = Path(tmp) / name
        _build(compiler, target)
        return Kernels(ctypes.CDLL(str(target)))  # stays mapped after its folder is removed


class Kernels:
    """Typed calls into the library; tensors must be contiguous, on the CPU, in the stated dtypes."""

    def __init__(self, lib: ctypes.CDLL):
        self.lib = lib
        i64, ptr = ctypes.c_int64, ctypes.c_void_p
        lib.lc_pack.argtypes = [ctypes.c_int, ptr, i64, i64, ptr]
        lib.lc_pack.restype = None
        lib.lc_unpack.argtypes = [ctypes.c_int, ptr, i64, i64, ptr]
        lib.lc_unpack.restype = None
        lib.lc_matmul.argtypes = [ctypes.c_int, ptr, i64, i64, ptr, i64, ptr]
        lib.lc_matmul.restype = ctypes.c_int
        lib.lc_row_bytes.argtypes = [ctypes.c_int, i64]
        lib.lc_row_bytes.restype = ctypes.c_int
        for kind in KINDS:
            for k in (64, 256, 960):
                if lib.lc_row_bytes(KINDS[kind], k) != row_bytes(kind, k):
                    raise KernelError(f"the built kernels' {kind} rows of {k} are not {row_bytes(kind, k)} bytes")

    def pack(self, kind: str, weight: torch.Tensor) -> torch.Tensor:
        """Blocks (uint8, one row of bytes per output row) for an n x k weight (fits(kind, k))."""
        w = weight.detach().to(device="cpu", dtype=torch.float32).contiguous()
        if w.dim() != 2 or not fits(kind, w.shape[1]):
            raise ValueError(
                f"{kind} weights need 2 dimensions and rows of a multiple of {ROW_MULTIPLE[kind]}: {tuple(w.shape)}"
            )
        n, k = w.shape
        out = torch.empty(n, row_bytes(kind, k), dtype=torch.uint8)
        self.lib.lc_pack(KINDS[kind], w.data_ptr(), n, k, out.data_ptr())
        return out

    def unpack(self, kind: str, blocks: torch.Tensor, k: int, out: torch.Tensor) -> torch.Tensor:
        """The weights as float32 into `out` (n x k, contiguous float32)."""
        self._check(kind, blocks, k)
        if out.dtype != torch.float32 or not out.is_contiguous() or tuple(out.shape) != (blocks.shape[0], k):
            raise ValueError(f"unpacking needs a contiguous float32 {blocks.shape[0]} x {k} tensor")
        self.lib.lc_unpack(KINDS[kind], blocks.data_ptr(), blocks.shape[0], k, out.data_ptr())
        return out

    def matmul(self, kind: str, blocks: torch.Tensor, k: int, x: torch.Tensor) -> torch.Tensor:
        """x (m x k) times the weights transposed: m x n float32."""
        self._check(kind, blocks, k)
        x = x.to(dtype=torch.float32).contiguous()
        if x.dim() != 2 or x.shape[1] != k:
            raise ValueError(f"the activations are {tuple(x.shape)}, not rows of {k}")
        n, m = blocks.shape[0], x.shape[0]
        y = torch.empty(m, n, dtype=torch.float32)  # never the default dtype: a load may change it
        if m and self.lib.lc_matmul(KINDS[kind], blocks.data_ptr(), n, k, x.data_ptr(), m, y.data_ptr()):
            raise MemoryError("no memory for the activations' blocks")
        return y

    @staticmethod
    def _check(kind: str, blocks: torch.Tensor, k: int) -> None:
        """What C would read past the end of, or misread, is refused here."""
        if not fits(kind, k):
            raise ValueError(f"rows of {k} weights are not a multiple of {ROW_MULTIPLE[kind]}")
        width = row_bytes(kind, k)
        if blocks.dtype != torch.uint8 or blocks.dim() != 2 or blocks.shape[1] != width or not blocks.is_contiguous():
            raise ValueError(f"{kind} blocks for rows of {k} must be contiguous uint8 rows of {width} bytes")
