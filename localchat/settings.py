"""One Settings object built from, in rising priority: defaults, a YAML config file, LOCALCHAT_*
environment variables, and command-line flags.

Invariant: every setting is declared once in SETTINGS as (name, default, help); the CLI flags, the
environment names and the config-file keys are all derived from that table.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from localchat.types import InvalidValue, LoadOptions


def default_data_dir() -> Path:
    """Per-platform user data folder: XDG on Linux, Application Support on macOS, LOCALAPPDATA."""
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local")) / "localchat"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "localchat"
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "localchat"


LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 7860
    listen: str | None = None  # share on the LAN: bind this address (--listen alone: all interfaces)
    allowed_hosts: str = ""  # extra host names the server answers to, comma separated
    trusted_proxies: str = ""  # reverse proxies (addresses or networks) whose X-Forwarded-For is believed
    data_dir: Path | None = None
    models_dir: Path | None = None
    presets_dir: Path | None = None
    model: str = "bundled:smollm2-135m-instruct"
    device: str = "auto"
    dtype: str = "auto"
    quantization: str = "auto"
    quant_type_4bit: str = "nf4"
    compute_dtype: str = "auto"
    double_quant: bool = True
    context_length: int | None = None
    preset: str = "Balanced"
    max_waiting: int = 32
    max_batch: int = 8  # replies that decode together, sharing each forward pass; 1: one at a time
    idle_unload: int = 10  # minutes without a request before the model's memory is given back; 0: never
    engine: str = "transformers"  # or "openai": an OpenAI-compatible server does the generating
    engine_url: str | None = None
    engine_key: str | None = None
    load_on_start: bool = True
    offline: bool | None = None  # None: offline when the machine has no network route
    log_level: str = "info"

    @property
    def data(self) -> Path:
        return (self.data_dir or default_data_dir()).expanduser()

    @property
    def bind_host(self) -> str:
        return self.listen or self.host

    @property
    def household_mode(self) -> bool:
        """Reachable from other machines: accounts and sign-in are required."""
        return self.bind_host not in ("127.0.0.1", "localhost", "::1")

    @property
    def extra_hosts(self) -> frozenset[str]:
        return frozenset(h.strip().lower() for h in self.allowed_hosts.split(",") if h.strip())

    @property
    def proxies(self) -> tuple[str, ...]:
        """Addresses whose X-Forwarded-For names the real client; none by default, so no client,
        not even one on this machine, can choose the address the sign-in limits count it under."""
        return tuple(p.strip() for p in self.trusted_proxies.split(",") if p.strip())

    @property
    def database(self) -> Path:
        return self.data / "localchat.db"

    @property
    def models(self) -> Path:
        return (self.models_dir or self.data / "models").expanduser()

    @property
    def presets(self) -> Path:
        return (self.presets_dir or Path(__file__).resolve().parent.parent / "presets").expanduser()

    def validate(self) -> Settings:
        checks = [
            (0 < self.port < 65536, "port must be between 1 and 65535"),
            (self.max_waiting >= 1, "max waiting must be at least 1"),
            (1 <= self.max_batch <= 64, "max batch must be between 1 and 64"),
            (self.idle_unload >= 0, "idle unload must be 0 (never) or a number of minutes"),
            (self.log_level.lower() in LOG_LEVELS, f"log level must be one of {', '.join(LOG_LEVELS)}"),
            (self.engine in ("transformers", "openai"), "engine must be transformers or openai"),
            (self.engine != "openai" or bool(self.engine_url), "--engine openai needs --engine-url URL"),
        ]
        for ok, why in checks:
            if not ok:
                raise InvalidValue(why)
        for proxy in self.proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise InvalidValue(f"trusted proxies must be IP addresses or networks, not {proxy!r}") from None
        self.load_options()  # the model settings are checked where LoadOptions checks them
        return self

    def load_options(self) -> LoadOptions:
        """The model to load at start, as configured."""
        return LoadOptions(
            model=self.model,
            device=self.device,  # type: ignore[arg-type]
            dtype=self.dtype,
            quantization=self.quantization,  # type: ignore[arg-type]
            quant_type_4bit=self.quant_type_4bit,
            compute_dtype=self.compute_dtype,
            double_quant=self.double_quant,
            context_length=self.context_length,
        ).validate()


HELP: dict[str, str] = {
    "host": "address to serve on; 127.0.0.1 keeps the app on this machine only",
    "listen": "share with the household on the network: bind ADDR (--listen alone: every interface, 0.0.0.0); "
    "needs at least one account (localchat users add NAME --admin) and then everyone signs in",
    "allowed_hosts": "extra host names (comma separated) people use to reach this machine, e.g. a DNS name; "
    "IP addresses, localhost and this machine's own name always work",
    "trusted_proxies": "addresses or networks (comma separated) of reverse proxies in front of localchat whose "
    "X-Forwarded-For header tells the real client's address; by default no one's is believed",
    "port": "port for the web UI (and /health)",
    "data_dir": f"where localchat keeps its data and caches (default {default_data_dir()})",
    "models_dir": "a folder of transformers model folders and .gguf files to offer (default DATA_DIR/models)",
    "presets_dir": "folder of preset YAML files (default: the presets/ folder shipped with localchat)",
    "model": "model to load at start: bundled:smollm2-135m-instruct, bundled:gemma3-270m-base, "
    "a folder, a .gguf file, or a Hub id already in the local Hugging Face cache",
    "device": "auto (CUDA when present, else CPU), cuda, or cpu",
    "dtype": "weights dtype: auto (fp32 on CPU, bf16/fp16 on CUDA), float32, bfloat16, float16",
    "quantization": "auto (the most accurate that fits this machine), none, 8bit or 4bit (bitsandbytes; CUDA and CPU)",
    "quant_type_4bit": "4-bit number format: nf4 (best for most models) or fp4",
    "compute_dtype": "dtype 4-bit layers compute in: auto (bf16 on CPU and on GPUs that have it), float32, ...",
    "double_quant": "also quantize the 4-bit scales (saves ~0.4 bit per weight; --no-double-quant to turn off)",
    "context_length": "cap the model's context window in tokens (less memory; default: the model's own)",
    "preset": "name of the preset selected when the page opens",
    "idle_unload": "minutes without a request after which the model is unloaded to give its memory back "
    "(it loads again with the next message; 0 = never; the small bundled model stays while memory is plentiful)",
    "max_waiting": "how many replies may wait for the model before new ones are told it is busy",
    "max_batch": "how many replies may be generated together, sharing each step of the model (1 = one at a time)",
    "engine": "transformers (load models here) or openai: use an OpenAI-compatible server (vLLM, llama.cpp, "
    "Ollama, another localchat) as the engine; the UI, accounts and history stay here",
    "engine_url": "base URL of that server, e.g. http://gpu-box:8000/v1",
    "engine_key": "API key for that server (prefer the LOCALCHAT_ENGINE_KEY environment variable)",
    "offline": "block every connection to other hosts (--no-offline to allow; default: offline when "
    "this machine has no network route)",
    "load_on_start": "load the model when the server starts (--no-load-on-start to pick one in the UI)",
    "log_level": "debug, info, warning or error",
}


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _coerce(name: str, value: Any) -> Any:
    kind = {f.name: f.type for f in fields(Settings)}[name]
    if (value is None or value == "") and "None" in str(kind):
        return None
    if "Path" in str(kind):
        return Path(str(value)).expanduser()
    if "int" in str(kind):
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise InvalidValue(f"{name} must be a whole number, not {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise InvalidValue(f"{name} must be a whole number, not {value!r}") from None
    if "bool" in str(kind):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text not in _TRUE + _FALSE:  # a typo must not silently turn a setting off
            raise InvalidValue(f"{name} must be true or false, not {value!r}")
        return text in _TRUE
    if value is None:
        raise InvalidValue(f"{name} must not be empty")
    return str(value)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="localchat",
        description="localchat: a private, offline chat with a local model, for you and your household. "
        "Every flag can also be set as an environment variable LOCALCHAT_<FLAG> (e.g. LOCALCHAT_PORT=8080) "
        "or as a key in the config file.",
    )
    p.add_argument("--config", type=Path, help="YAML config file (default DATA_DIR/config.yaml if it exists)")
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "listen":
            p.add_argument(flag, nargs="?", const="0.0.0.0", default=None, help=HELP[f.name], metavar="ADDR")
        elif f.type in ("bool", "bool | None"):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=HELP[f.name])
        else:
            p.add_argument(flag, default=None, help=HELP[f.name], metavar=f.name.upper())
    return p


def load_settings(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Build Settings from defaults < config file < LOCALCHAT_* env < CLI flags."""
    environ = dict(os.environ if environ is None else environ)
    args = parser().parse_args(argv)
    names = [f.name for f in fields(Settings)]
    values: dict[str, Any] = {}
    cli = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    env = {n: environ[f"LOCALCHAT_{n.upper()}"] for n in names if f"LOCALCHAT_{n.upper()}" in environ}
    data_dir = cli.get("data_dir") or env.get("data_dir")
    config_path = args.config or environ.get("LOCALCHAT_CONFIG")
    if config_path is None:
        candidate = Path(data_dir or default_data_dir()).expanduser() / "config.yaml"
        config_path = candidate if candidate.exists() else None
    if config_path is not None:
        values.update(_read_config(Path(config_path), names))
    values.update(env)
    values.update(cli)
    settings = replace(Settings(), **{k: _coerce(k, v) for k, v in values.items()})
    return settings.validate()


def _read_config(path: Path, names: list[str]) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidValue(f"config file {path}: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise InvalidValue(f"config file {path} must be a mapping of setting: value")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise InvalidValue(f"config file {path}: unknown settings {', '.join(unknown)}")
    return data
