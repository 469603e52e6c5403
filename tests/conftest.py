"""Shared fixtures: tiny random models built in a temp dir (real loading code, small data), the
real bundled SmolLM2 behind a real TransformersBackend, and the real app on a loopback port.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import localchat  # noqa: F401 - privacy/offline switches before transformers is imported

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _byte_vocab() -> dict[str, int]:
    """GPT-2's printable stand-in for each of the 256 byte values, so every text round-trips."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    vocab, extra = {}, 0
    for b in range(256):
        if b in printable:
            vocab[chr(b)] = b
        else:
            vocab[chr(256 + extra)] = b
            extra += 1
    return vocab


def build_tiny_model(path: Path, chat_template: str | None = CHAT_TEMPLATE, context: int = 512) -> Path:
    """A 2-layer random Llama with a byte-level tokenizer: real files, loaded by real code."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = _byte_vocab()
    specials = ["<s>", "</s>", "<pad>"]
    for i, s in enumerate(specials):
        vocab[s] = 256 + i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    if chat_template:
        fast.chat_template = chat_template
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        bos_token_id=256,
        eos_token_id=257,
        pad_token_id=258,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-base", chat_template=None)


@pytest.fixture()
def tiny_backend(tmp_path: Path, tiny_model: Path):
    from localchat.engine.backend import TransformersBackend
    from localchat.types import LoadOptions

    backend = TransformersBackend(tmp_path / "data")
    backend.load(LoadOptions(model=str(tiny_model), device="cpu"))
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def session_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("localchat-data")


@pytest.fixture(scope="session")
def smol_backend(session_data_dir: Path):
    """The real bundled SmolLM2-135M-Instruct, loaded once for the session (fp32, CPU)."""
    from localchat.engine.backend import TransformersBackend
    from localchat.types import LoadOptions
    from localchat.weights.models import SMOLLM2, smollm2_path

    if smollm2_path() is None:
        pytest.fail("the bundled model is missing: run the README test command (scripts/test.sh)")
    backend = TransformersBackend(session_data_dir)
    backend.load(LoadOptions(model=SMOLLM2, device="cpu"))
    yield backend
    backend.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningApp:
    def __init__(self, url: str, process: subprocess.Popen, log: Path):
        self.url, self.process, self.log = url, process, log

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_app(data_dir: Path, *args: str, ready_timeout: float = 240) -> RunningApp:
    """Start `python app.py` on a free loopback port and wait until the model is loaded."""
    port = free_port()
    log = data_dir / f"app-{port}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "app.py"), "--port", str(port), "--data-dir", str(data_dir), *args],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"app exited early:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                body = r.read().decode()
            # /health tells someone not signed in (household mode) only "ok": the log says when it loaded
            if '"model":null' not in body and ('"model"' in body or "engine.backend: loaded " in log.read_text()):
                return RunningApp(url, process, log)
        except OSError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"app not ready in {ready_timeout}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def running_app(session_data_dir: Path, smol_backend) -> Iterator[RunningApp]:
    """The real app (real bundled model) on a loopback port; shares the dequantized-model cache."""
    app = start_app(session_data_dir)
    yield app
    app.process.terminate()
    try:
        app.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        app.process.kill()


def message_text(message: dict) -> str:
    """A Chatbot message as gradio_client returns it: content is a string or a list of parts."""
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def output_chat(output) -> list[dict]:
    """The Chatbot value out of one streamed /respond output (a bare list, or the first of a tuple)."""
    return output[0] if isinstance(output, tuple) else output


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


class ServedApp:
    """build_app served by uvicorn on a thread, on a free loopback port (a real HTTP server)."""

    def __init__(self, app, port: int):
        import uvicorn

        self.app, self.port = app, port
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app.api, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the app did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(2)
        if self.thread.is_alive():  # a client's stream (Gradio's heartbeat) is still open: do not wait for it
            self.server.force_exit = True
            self.thread.join(15)


def serve(data_dir: Path, backend=None, listen: bool = True, members: dict[str, str] | None = None) -> ServedApp:
    """The app over a FakeBackend with household accounts on a real SQLite file in `data_dir`.
    `members`: name -> role, each with the password 'password-<name>'."""
    from fakes import FAST_HASHER, FakeBackend

    from localchat.household import Household
    from localchat.server import build_app
    from localchat.settings import Settings
    from localchat.store import Store

    household = Household(Store(data_dir / "localchat.db"), listen=listen, hasher=FAST_HASHER)
    for name, role in (members or {}).items():
        if household.store.member_by_name(name) is None:
            household.add_member(name, f"password-{name}", role)
    settings = Settings(data_dir=data_dir, load_on_start=False, listen="0.0.0.0" if listen else None)
    app = build_app(settings, backend=backend or FakeBackend("Hello from the fake model"), household=household)
    return ServedApp(app, free_port())


@pytest.fixture()
def household_app(tmp_path: Path) -> Iterator[ServedApp]:
    """A household on the network: Ann (admin) and Bob (member)."""
    served = serve(tmp_path, members={"Ann": "admin", "Bob": "member"})
    yield served
    served.stop()


def sign_in(url: str, name: str, password: str | None = None) -> str:
    """Sign in through the real /login form; returns the session cookie's value."""
    import httpx

    r = httpx.post(url + "/login", data={"name": name, "password": password or f"password-{name}"})
    assert r.status_code == 303, r.text
    return r.cookies["localchat_session"]


class Clock:
    """A clock the test moves by hand (sign-in limits, session lifetimes, known devices)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def household(tmp_path: Path):
    """A household on a real SQLite file: Ann (admin) and Bob (member), with fast password hashing."""
    from fakes import FAST_HASHER

    from localchat.household import Household
    from localchat.store import Store

    h = Household(Store(tmp_path / "localchat.db"), listen=True, hasher=FAST_HASHER)
    h.add_member("Ann", "ann-password", "admin")
    h.add_member("Bob", "bob-password", "member")
    return h
