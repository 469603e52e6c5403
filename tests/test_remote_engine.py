"""OpenAIBackend (`--engine openai`) against a stand-in OpenAI-compatible server on loopback: it
checks the member's allowed models before sending anything, names the model that answered, answers
every ModelAdmin call of the protocol, and a server built with it never imports torch (the old
ChatService imported it through hardware.detect(), as the remote engine had no hardware())."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import ROOT

from localchat.backend import BackendError, ModelNotAllowed
from localchat.engines.remote import OpenAIBackend
from localchat.types import GenerationRequest, LoadOptions, Message, SamplingParams

MODELS = ["remote-a", "remote-b"]
HI = (Message("user", "hi"),)


class StandIn(ThreadingHTTPServer):
    """An OpenAI-compatible engine: two models, and every reply is "Hello" in two chunks."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.completions: list[dict] = []  # the bodies of the completion requests it received

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: StandIn

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        body = json.dumps({"object": "list", "data": [{"id": m, "object": "model"} for m in MODELS]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.completions.append(request)
        events = [
            {"model": request["model"], "choices": [{"index": 0, "delta": {"content": "Hel"}}]},
            {"model": request["model"], "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]},
            {"model": request["model"], "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}},
        ]
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for event in events:
            self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")


@pytest.fixture(scope="module")
def standin() -> Iterator[StandIn]:
    server = StandIn()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


@pytest.fixture()
def remote(standin: StandIn) -> Iterator[OpenAIBackend]:
    backend = OpenAIBackend(standin.url)
    yield backend
    backend.close()


def test_a_model_the_member_may_not_use_is_refused_before_anything_is_sent(remote, standin) -> None:
    remote.load(LoadOptions(model="remote-a"))
    sent = len(standin.completions)
    with pytest.raises(ModelNotAllowed, match="may not use remote-a"):
        list(remote.stream(GenerationRequest(HI, SamplingParams(), allowed_models=("remote-b",))))
    assert len(standin.completions) == sent  # the engine never saw it
    chunks = list(remote.stream(GenerationRequest(HI, SamplingParams(), allowed_models=("remote-a",))))
    assert "".join(c.text for c in chunks) == "Hello"
    assert chunks[-1].usage.model == "remote-a" and chunks[-1].usage.completion_tokens == 2
    assert standin.completions[-1]["model"] == "remote-a"


def test_every_model_admin_call_has_an_answer(remote, standin) -> None:
    first = remote.load_in_background(LoadOptions(model="bundled:smollm2"))  # the default: not on the engine
    assert first.result(5).options.model == "remote-a"  # the engine's first model instead
    assert remote.load_in_background(LoadOptions(model="missing")).exception(5) is not None
    assert remote.loaded().options.model == "remote-a" and "missing" in remote.last_load_error
    assert remote.loading is None and remote.asleep is None
    with pytest.raises(BackendError, match="does not unload models"):
        remote.unload()
    assert remote.fit(LoadOptions(model="remote-a")).startswith("⚠ Memory estimates are not available")
    hardware = remote.hardware()
    assert hardware.gpus == () and hardware.engine.endswith(standin.url)
    assert f"Models run on the remote engine at {standin.url}" in hardware.describe()
    assert remote.activity() == {"generating": 0, "waiting": 0}
    stream = remote.stream(GenerationRequest(HI, SamplingParams()))
    next(stream)
    assert remote.activity() == {"generating": 1, "waiting": 0}  # a reply on its way from the engine
    stream.close()
    assert remote.activity()["generating"] == 0


SERVER = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    from starlette.testclient import TestClient

    from localchat.server import build_app
    from localchat.settings import Settings
    from localchat.types import GenerationRequest, Message

    app = build_app(Settings(data_dir=Path(sys.argv[1]), engine="openai", engine_url=sys.argv[2]))
    with TestClient(app.api, base_url="http://127.0.0.1") as client:  # the page, its config and /health, as a browser asks them
        statuses = [client.get(path).status_code for path in ("/health", "/", "/config")]
    hardware = app.service.hardware().describe()  # what the Model panel shows
    reply = "".join(c.text for c in app.backend.stream(GenerationRequest((Message("user", "hi"),))))
    print(statuses, repr(hardware.splitlines()[0]), reply, app.backend.loaded().options.model)
    print("torch imported:", "torch" in sys.modules)
    """
)


def test_a_server_with_a_remote_engine_never_imports_torch(tmp_path: Path, standin: StandIn) -> None:
    out = subprocess.run(
        [sys.executable, "-c", SERVER, str(tmp_path), standin.url],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    first, last = out.stdout.strip().splitlines()[-2:]
    assert last == "torch imported: False"
    assert first == f"[200, 200, 200] 'Models run on the remote engine at {standin.url}; this server:' Hello remote-a"
