"""Settings: defaults < config file < LOCALCHAT_* env < CLI flags, coercion and error messages.

Every test passes `environ=` and a data dir it owns, so the real environment and the real user
data folder never leak in.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from localchat import settings as settings_module
from localchat.settings import HELP, Settings, load_settings, parser
from localchat.types import InvalidValue

ROOT = Path(__file__).resolve().parent.parent

# One valid, non-default value per setting, as text (what env vars and flags carry).
SAMPLE = {
    "host": "0.0.0.0",
    "port": "8080",
    "listen": "192.168.1.5",
    "allowed_hosts": "chat.home, Box.lan",
    "trusted_proxies": "192.168.1.2, 10.0.0.0/8",
    "data_dir": None,  # filled in per test: a tmp dir
    "models_dir": "/srv/models",
    "presets_dir": "/srv/presets",
    "model": "my/model",
    "device": "cpu",
    "dtype": "float16",
    "quantization": "8bit",
    "quant_type_4bit": "fp4",
    "compute_dtype": "float32",
    "double_quant": "false",
    "context_length": "128",
    "preset": "Coder",
    "max_waiting": "3",
    "max_batch": "4",
    "idle_unload": "5",
    "engine": "transformers",  # openai alone is refused without a URL: see the test below
    "engine_url": "http://gpu-box:8000/v1",
    "engine_key": "secret",
    "load_on_start": "false",
    "offline": "true",
    "log_level": "debug",
}
EXPECTED = {
    "host": "0.0.0.0",
    "port": 8080,
    "listen": "192.168.1.5",
    "allowed_hosts": "chat.home, Box.lan",
    "trusted_proxies": "192.168.1.2, 10.0.0.0/8",
    "models_dir": Path("/srv/models"),
    "presets_dir": Path("/srv/presets"),
    "model": "my/model",
    "device": "cpu",
    "dtype": "float16",
    "quantization": "8bit",
    "quant_type_4bit": "fp4",
    "compute_dtype": "float32",
    "double_quant": False,
    "context_length": 128,
    "preset": "Coder",
    "max_waiting": 3,
    "max_batch": 4,
    "idle_unload": 5,
    "engine": "transformers",  # openai alone is refused without a URL: see the test below
    "engine_url": "http://gpu-box:8000/v1",
    "engine_key": "secret",
    "load_on_start": False,
    "offline": True,
    "log_level": "debug",
}


@pytest.fixture()
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data dir that is also the default one, so a stray real config.yaml can never be read."""
    monkeypatch.setattr(settings_module, "default_data_dir", lambda: tmp_path)
    return tmp_path


def write_config(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_sample_table_covers_every_setting() -> None:
    names = {f.name for f in fields(Settings)}
    assert set(SAMPLE) == names
    assert set(HELP) == names
    assert set(EXPECTED) == names - {"data_dir"}


def test_listen_alone_means_every_interface_and_makes_it_a_household(data: Path) -> None:
    assert not Settings().household_mode and Settings().bind_host == "127.0.0.1"
    s = load_settings(["--listen"], environ={})
    assert s.listen == "0.0.0.0" and s.bind_host == "0.0.0.0" and s.household_mode
    s = load_settings(["--listen", "192.168.1.5", "--allowed-hosts", "chat.home, Box.lan"], environ={})
    assert s.bind_host == "192.168.1.5" and s.extra_hosts == frozenset({"chat.home", "box.lan"})
    assert load_settings(["--host", "0.0.0.0"], environ={}).household_mode  # any non-loopback bind needs accounts
    assert s.database == data / "localchat.db"


def test_a_remote_engine_needs_its_url(data: Path) -> None:
    with pytest.raises(InvalidValue, match="engine-url"):
        load_settings(["--engine", "openai"], environ={})
    with pytest.raises(InvalidValue, match="transformers or openai"):
        load_settings(["--engine", "vllm"], environ={})
    s = load_settings(
        ["--engine", "openai", "--engine-url", "http://box:8000/v1"], environ={"LOCALCHAT_ENGINE_KEY": "k"}
    )
    assert (s.engine, s.engine_url, s.engine_key) == ("openai", "http://box:8000/v1", "k")


def test_forwarded_headers_are_believed_only_from_configured_proxies(data: Path) -> None:
    from localchat.cli import server_config

    plain = server_config(object(), load_settings([], environ={}))
    assert plain.proxy_headers is False  # uvicorn's own default believes any loopback client
    proxied = server_config(object(), load_settings([], environ={"LOCALCHAT_TRUSTED_PROXIES": "10.0.0.2, fd00::/8"}))
    assert proxied.proxy_headers is True and proxied.forwarded_allow_ips == ["10.0.0.2", "fd00::/8"]
    with pytest.raises(InvalidValue, match="trusted proxies"):
        load_settings(["--trusted-proxies", "my-proxy.lan"], environ={})


def test_defaults(data: Path) -> None:
    s = load_settings([], environ={})
    assert s == Settings()
    assert s.data == data
    assert s.models == data / "models"
    assert s.presets == ROOT / "presets"
    assert (s.port, s.host, s.load_on_start, s.context_length) == (7860, "127.0.0.1", True, None)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_setting_from_env(data: Path, name: str) -> None:
    s = load_settings([], environ={f"LOCALCHAT_{name.upper()}": SAMPLE[name]})
    assert getattr(s, name) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_setting_from_cli(data: Path, name: str) -> None:
    flag = "--" + name.replace("_", "-")
    bool_flags = {"load_on_start": "--no-load-on-start", "double_quant": "--no-double-quant", "offline": "--offline"}
    argv = [bool_flags[name]] if name in bool_flags else [flag, SAMPLE[name]]
    s = load_settings(argv, environ={})
    assert getattr(s, name) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_setting_from_config_file(data: Path, name: str) -> None:
    write_config(data / "config.yaml", f"{name}: {SAMPLE[name]!r}\n")
    s = load_settings([], environ={})
    assert getattr(s, name) == EXPECTED[name]


def test_precedence_defaults_config_env_cli(data: Path) -> None:
    write_config(data / "config.yaml", "port: 8000\nmodel: from-config\nhost: 10.0.0.1\n")
    env = {"LOCALCHAT_PORT": "8100", "LOCALCHAT_MODEL": "from-env"}
    s = load_settings(["--port", "8200"], environ=env)
    assert (s.port, s.model, s.host, s.device) == (8200, "from-env", "10.0.0.1", "auto")
    s = load_settings([], environ=env)
    assert (s.port, s.model) == (8100, "from-env")
    s = load_settings([], environ={})
    assert (s.port, s.model) == (8000, "from-config")


def test_config_in_data_dir_given_by_flag_or_env(tmp_path: Path, data: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    write_config(other / "config.yaml", "port: 9001\n")
    assert load_settings(["--data-dir", str(other)], environ={}).port == 9001
    assert load_settings([], environ={"LOCALCHAT_DATA_DIR": str(other)}).port == 9001
    assert load_settings([], environ={}).port == 7860  # the default data dir has no config.yaml


def test_explicit_config_file(tmp_path: Path, data: Path) -> None:
    write_config(data / "config.yaml", "port: 9001\n")
    chosen = write_config(tmp_path / "chosen.yml", "port: 9002\nmax-waiting: 5\n")
    s = load_settings(["--config", str(chosen)], environ={})
    assert (s.port, s.max_waiting) == (9002, 5)
    assert load_settings([], environ={"LOCALCHAT_CONFIG": str(chosen)}).port == 9002


def test_empty_config_file_means_defaults(data: Path) -> None:
    write_config(data / "config.yaml", "# nothing set yet\n")
    assert load_settings([], environ={}) == Settings()


def test_bool_flags(data: Path) -> None:
    assert load_settings(["--no-load-on-start"], environ={}).load_on_start is False
    assert load_settings(["--load-on-start"], environ={"LOCALCHAT_LOAD_ON_START": "0"}).load_on_start is True
    for text in ("0", "false", "No", "off"):
        assert load_settings([], environ={"LOCALCHAT_LOAD_ON_START": text}).load_on_start is False
    for text in ("1", "true", "YES", "on"):
        assert load_settings([], environ={"LOCALCHAT_LOAD_ON_START": text}).load_on_start is True
    write_config(data / "config.yaml", "load_on_start: false\n")
    assert load_settings([], environ={}).load_on_start is False
    assert load_settings(["--load-on-start"], environ={}).load_on_start is True


def test_bool_typo_is_an_error_not_false(data: Path) -> None:
    with pytest.raises(InvalidValue, match="load_on_start must be true or false, not 'nope'"):
        load_settings([], environ={"LOCALCHAT_LOAD_ON_START": "nope"})


@pytest.mark.parametrize(
    ("argv", "env", "config", "words"),
    [
        (["--port", "abc"], {}, None, "port must be a whole number, not 'abc'"),
        ([], {"LOCALCHAT_MAX_WAITING": "many"}, None, "max_waiting must be a whole number, not 'many'"),
        ([], {"LOCALCHAT_PORT": ""}, None, "port must be a whole number"),
        ([], {}, "context_length: lots\n", "context_length must be a whole number, not 'lots'"),
        ([], {}, "port: 80.5\n", "port must be a whole number"),
        ([], {}, "port: true\n", "port must be a whole number"),
    ],
)
def test_int_coercion_errors(data: Path, argv: list, env: dict, config: str | None, words: str) -> None:
    if config is not None:
        write_config(data / "config.yaml", config)
    with pytest.raises(InvalidValue) as info:
        load_settings(argv, environ=env)
    assert words in str(info.value)


def test_empty_optional_values_mean_unset(data: Path) -> None:
    s = load_settings([], environ={"LOCALCHAT_CONTEXT_LENGTH": "", "LOCALCHAT_MODELS_DIR": ""})
    assert s.context_length is None and s.models_dir is None


def test_paths_are_expanded(data: Path) -> None:
    s = load_settings(["--models-dir", "~/models"], environ={})
    assert s.models_dir == Path("~/models").expanduser()
    assert "~" not in str(s.models)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--port", "0"], "port must be between 1 and 65535"),
        (["--port", "70000"], "port must be between 1 and 65535"),
        (["--device", "tpu"], "device must be one of auto, cuda, cpu"),
        (["--dtype", "int8"], "dtype must be one of"),
        (["--quantization", "2bit"], "quantization must be one of auto, none, 8bit, 4bit"),
        (["--context-length", "10"], "context length must be at least 64 tokens"),
        (["--quant-type-4bit", "int4"], "4-bit type must be nf4 or fp4"),
        (["--compute-dtype", "int8"], "compute dtype must be one of"),
        (["--max-waiting", "0"], "max waiting must be at least 1"),
        (["--log-level", "verbose"], "log level must be one of debug, info, warning, error"),
    ],
)
def test_out_of_range_values(data: Path, argv: list, words: str) -> None:
    with pytest.raises(InvalidValue) as info:
        load_settings(argv, environ={})
    assert words in str(info.value)


def test_unknown_config_key(data: Path) -> None:
    write_config(data / "config.yaml", "port: 8000\nprot: 8001\ncolour: blue\n")
    with pytest.raises(InvalidValue) as info:
        load_settings([], environ={})
    assert "unknown settings colour, prot" in str(info.value)
    assert "config.yaml" in str(info.value)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("port: [8000\n", "config file"),
        ("port: 1\n  host: x\n", "config file"),
        ("- port\n- host\n", "must be a mapping of setting: value"),
        ("just some text\n", "must be a mapping"),
    ],
)
def test_malformed_config(data: Path, text: str, words: str) -> None:
    write_config(data / "config.yaml", text)
    with pytest.raises(InvalidValue) as info:
        load_settings([], environ={})
    assert words in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_explicit_config(tmp_path: Path, data: Path) -> None:
    with pytest.raises(InvalidValue, match="config file"):
        load_settings(["--config", str(tmp_path / "nope.yaml")], environ={})


def test_help_mentions_every_flag() -> None:
    text = parser().format_help()
    for f in fields(Settings):
        assert "--" + f.name.replace("_", "-") in text
    assert "--no-load-on-start" in text
    assert "--config" in text
    assert "LOCALCHAT_" in text


def test_app_help_in_a_subprocess() -> None:
    result = subprocess.run([sys.executable, "app.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for f in fields(Settings):
        assert "--" + f.name.replace("_", "-") in result.stdout
    assert "--no-load-on-start" in result.stdout


def test_app_rejects_a_bad_value_before_starting(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "app.py", "--data-dir", str(tmp_path), "--port", "abc"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "localchat: port must be a whole number, not 'abc'" in result.stderr
