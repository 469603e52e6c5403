"""Preset files: load `presets/*.yaml` into `Preset` values and render their system prompts.

Owns the two file formats (native, and text-generation-webui's flat sampler files) and the mapping
from file values to `SamplingParams`. Invariant: `load_presets` never raises; every bad file becomes
a `PresetProblem` with one readable line, and every loaded preset holds validated `SamplingParams`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from localchat.types import InvalidValue, SamplingParams

DEFAULT_ORDER = 100
TGW_DESCRIPTION = "Imported text-generation-webui preset"

_NATIVE_KEYS = frozenset({"name", "description", "system_prompt", "sampling", "order"})
_SAMPLING_KEYS = frozenset(f.name for f in fields(SamplingParams))
_FLOAT_KEYS = frozenset({"temperature", "top_p", "min_p", "repetition_penalty"})
_INT_KEYS = frozenset({"top_k", "max_new_tokens"})
_TGW_KEYS = frozenset(
    {"temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_new_tokens", "seed", "do_sample"}
)

# Our own names so the prompt does not change with the server's locale.
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


@dataclass(frozen=True)
class Preset:
    name: str  # shown in the picker
    description: str  # one line
    system_prompt: str  # may be ""; may contain {date} {time} {weekday}
    sampling: SamplingParams
    source: str  # file name it came from
    locked_system_prompt: bool = False  # reserved for household mode


@dataclass(frozen=True)
class PresetProblem:
    file: str  # file name
    message: str  # one line for the user, starting with the file name
    fatal: bool  # True: preset not loaded; False: loaded with a warning


class _Bad(Exception):
    """A file-level problem that stops this preset from loading."""


def render_system_prompt(template: str, now: datetime | None = None) -> str:
    """Fill {date}, {time} and {weekday}; any other braces stay as written."""
    now = now or datetime.now()
    values = {
        "{date}": f"{now.day} {_MONTHS[now.month - 1]} {now.year}",
        "{time}": f"{now.hour:02d}:{now.minute:02d}",
        "{weekday}": _WEEKDAYS[now.weekday()],
    }
    for placeholder, value in values.items():
        template = template.replace(placeholder, value)
    return template


def load_presets(directory: Path) -> tuple[list[Preset], list[PresetProblem]]:
    """Load every *.yaml / *.yml file in `directory` (sorted by file name), sorted by order then name."""
    try:
        files = sorted(
            (
                p
                for p in Path(directory).iterdir()
                if p.suffix.lower() in (".yaml", ".yml") and not p.name.startswith(".") and p.is_file()
            ),
            key=lambda p: p.name,
        )
    except FileNotFoundError:
        return [], []
    except OSError as e:
        return [], [
            PresetProblem(
                Path(directory).name, f"{directory}: cannot read the presets folder ({e.strerror or e})", True
            )
        ]

    loaded: list[tuple[int, Preset]] = []
    problems: list[PresetProblem] = []
    seen: dict[str, str] = {}  # casefolded name -> file it came from
    for path in files:
        try:
            order, preset, ignored = _load_file(path)
        except _Bad as e:
            problems.append(PresetProblem(path.name, f"{path.name}: {e}", True))
            continue
        except Exception as e:  # noqa: BLE001 - one odd file must not take the picker down
            problems.append(PresetProblem(path.name, f"{path.name}: could not be loaded ({e})", True))
            continue
        key = preset.name.casefold()
        if key in seen:
            problems.append(
                PresetProblem(
                    path.name, f"{path.name}: skipped, {seen[key]} already has the name {preset.name!r}", False
                )
            )
            continue
        seen[key] = path.name
        if ignored:
            problems.append(
                PresetProblem(
                    path.name,
                    f"{path.name}: ignored settings localchat does not support: {', '.join(sorted(ignored))}",
                    False,
                )
            )
        loaded.append((order, preset))
    loaded.sort(key=lambda item: (item[0], item[1].name.casefold(), item[1].name))
    return [preset for _, preset in loaded], problems


def _load_file(path: Path) -> tuple[int, Preset, list[str]]:
    """Parse one file; returns (order, preset, ignored keys) or raises _Bad."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise _Bad("is not UTF-8 text") from None
    except OSError as e:
        raise _Bad(f"cannot be read ({e.strerror or e})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise _Bad(f"is not valid YAML{where}") from None
    if data is None:
        raise _Bad("is empty")
    if not isinstance(data, dict):
        raise _Bad(f"must be a mapping of settings, not a {_kind(data)}")
    data = {str(k): v for k, v in data.items()}
    if data.keys() & {"name", "description", "system_prompt", "sampling"}:
        return _native(path, data)
    return _tgw(path, data)


def _native(path: Path, data: dict[str, Any]) -> tuple[int, Preset, list[str]]:
    ignored = sorted(k for k in data if k not in _NATIVE_KEYS)
    name = _text(data.get("name", path.stem), "name").strip()
    if not name:
        raise _Bad("name must not be empty")
    description = " ".join(_text(data.get("description", ""), "description").split())
    system_prompt = _text(data.get("system_prompt", ""), "system_prompt").strip()
    order = data.get("order", DEFAULT_ORDER)
    if isinstance(order, bool) or not isinstance(order, int):
        raise _Bad(f"order must be a whole number, not {_show(order)}")
    sampling = data.get("sampling") or {}
    if not isinstance(sampling, dict):
        raise _Bad(f"sampling must be a mapping of settings, not a {_kind(sampling)}")
    sampling = {str(k): v for k, v in sampling.items()}
    ignored += sorted(f"sampling.{k}" for k in sampling if k not in _SAMPLING_KEYS)
    params = _sampling({k: v for k, v in sampling.items() if k in _SAMPLING_KEYS})
    return order, Preset(name, description, system_prompt, params, path.name), ignored


def _tgw(path: Path, data: dict[str, Any]) -> tuple[int, Preset, list[str]]:
    ignored = sorted(k for k in data if k not in _TGW_KEYS)
    values = {k: v for k, v in data.items() if k in _TGW_KEYS and k != "do_sample"}
    if values.get("seed") == -1:  # text-generation-webui's "random seed"
        values["seed"] = None
    do_sample = data.get("do_sample", True)
    if not isinstance(do_sample, bool):
        raise _Bad(f"do_sample must be true or false, not {_show(do_sample)}")
    if not do_sample:
        values["temperature"] = 0.0
    return DEFAULT_ORDER, Preset(path.stem, TGW_DESCRIPTION, "", _sampling(values), path.name), ignored


def _sampling(values: dict[str, Any]) -> SamplingParams:
    """Type-check file values, then let SamplingParams.validate check the ranges."""
    clean: dict[str, Any] = {}
    for key, value in values.items():
        if key in _FLOAT_KEYS:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _Bad(f"{key} must be a number, not {_show(value)}")
            clean[key] = float(value)
        elif key in _INT_KEYS or key == "seed":
            if value is None and key == "seed":
                clean[key] = None
            elif isinstance(value, float) and value.is_integer():
                clean[key] = int(value)
            elif isinstance(value, bool) or not isinstance(value, int):
                raise _Bad(f"{key} must be a whole number, not {_show(value)}")
            else:
                clean[key] = value
        elif key == "stop":
            stop = [] if value is None else [value] if isinstance(value, str) else value
            if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
                raise _Bad("stop must be text or a list of text")
            clean[key] = tuple(stop)
    try:
        return SamplingParams(**clean).validate()
    except InvalidValue as e:
        raise _Bad(str(e)) from None


def _text(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise _Bad(f"{key} must be text, not {_show(value)}")
    return value


def _kind(value: Any) -> str:
    return {list: "list", str: "piece of text"}.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."
