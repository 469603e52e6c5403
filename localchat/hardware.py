"""What this machine has: CPU, cores, RAM, each GPU with its memory, and whether bitsandbytes can
run there. RAM and cores come from psutil (the same numbers on Linux, macOS and Windows), the CPU's
name from the OS; torch is asked about GPUs only when present and wanted (`detect(gpus=False)` never
imports it: a server whose models run elsewhere).

Invariant: never fails; anything it cannot read is reported as unknown.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import psutil


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    total_bytes: int
    free_bytes: int
    capability: str
    bitsandbytes: bool


@dataclass(frozen=True)
class Hardware:
    cpu: str
    cores: int
    ram_total_bytes: int
    ram_free_bytes: int
    gpus: tuple[Gpu, ...] = field(default_factory=tuple)
    bitsandbytes_cpu: bool = False
    torch: str = ""
    engine: str = ""  # where the models run when not on this machine (a remote engine), else ""

    def free_bytes(self, device: str) -> int:
        """Memory a model can use on `device` ("cpu" or "cuda", the first GPU)."""
        if device == "cuda" and self.gpus:
            return self.gpus[0].free_bytes
        return self.ram_free_bytes

    def describe(self) -> str:
        lines = [f"Models run on {self.engine}; this server:"] if self.engine else []
        lines += [
            f"CPU: {self.cpu}, {self.cores} cores",
            f"RAM: {gib(self.ram_free_bytes)} free of {gib(self.ram_total_bytes)}",
        ]
        for g in self.gpus:
            bnb = "bitsandbytes 4/8-bit: yes" if g.bitsandbytes else "bitsandbytes 4/8-bit: no"
            lines.append(
                f"GPU {g.index}: {g.name} (compute {g.capability}), {gib(g.free_bytes)} free of "
                f"{gib(g.total_bytes)}; {bnb}"
            )
        if self.engine:
            return "\n".join(lines)  # GPUs and quantization are the engine's, not known here
        if not self.gpus:
            lines.append("GPU: none usable (CUDA not available)")
        lines.append(f"bitsandbytes on the CPU: {'yes' if self.bitsandbytes_cpu else 'no'}")
        if self.torch:
            lines.append(f"PyTorch: {self.torch}")
        return "\n".join(lines)


def gib(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:,.0f} MB"


def _memory() -> tuple[int, int]:
    """Total and available RAM. "Available" is what a new load can take without swapping (Linux's
    MemAvailable, macOS's free + inactive, Windows' available pages)."""
    try:
        mem = psutil.virtual_memory()
        return int(mem.total), int(mem.available)
    except (OSError, RuntimeError, AttributeError):
        return 0, 0


def _cores() -> int:
    try:
        return psutil.cpu_count(logical=True) or os.cpu_count() or 1
    except (OSError, RuntimeError):
        return os.cpu_count() or 1


def _cpu_name(system: str | None = None) -> str:
    """The CPU's marketing name; psutil has none, so each OS is asked its own way."""
    system = system or platform.system()
    try:
        if system == "Linux":
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
        elif system == "Darwin":
            out = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5, check=False
            )
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        elif system == "Windows":
            import winreg  # type: ignore[import-not-found]  # Windows only

            key = winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, r"HARDWARE\DESCRIPTION\System\CentralProcessor\0")
            return str(winreg.QueryValueEx(key, "ProcessorNameString")[0]).strip()
    except (OSError, subprocess.SubprocessError, ImportError):
        pass
    return platform.processor() or platform.machine() or "unknown"


def _gpus() -> tuple[tuple[Gpu, ...], str]:
    if importlib.util.find_spec("torch") is None:
        return (), ""
    import torch

    version = torch.__version__ + (f", CUDA {torch.version.cuda}" if torch.version.cuda else ", CPU build")
    if not torch.cuda.is_available():
        return (), version
    gpus = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        try:
            free, total = torch.cuda.mem_get_info(i)
        except RuntimeError:
            free, total = 0, props.total_memory
        major, minor = props.major, props.minor
        # bitsandbytes' CUDA kernels need compute capability 5.0 or newer (7.5+ for the fastest int8)
        bnb = importlib.util.find_spec("bitsandbytes") is not None and major >= 5
        gpus.append(Gpu(i, props.name, int(total), int(free), f"{major}.{minor}", bnb))
    return tuple(gpus), version


def detect(gpus: bool = True, engine: str = "") -> Hardware:
    """`gpus=False`: CPU and RAM only, without importing torch. `engine`: where the models run, when
    not here (see Hardware.engine)."""
    total, free = _memory()
    found, torch_version = _gpus() if gpus else ((), "")
    return Hardware(
        cpu=_cpu_name(),
        cores=_cores(),
        ram_total_bytes=total,
        ram_free_bytes=free,
        gpus=found,
        bitsandbytes_cpu=importlib.util.find_spec("bitsandbytes") is not None,
        torch=torch_version,
        engine=engine,
    )


def disk_free(path: Path) -> int:
    """Free bytes on the disk that holds `path` (or would, once it is created)."""
    probe = Path(path).expanduser().absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return 0
