"""The real app over HTTP: `python app.py` with the bundled model, driven by gradio_client.

Checks what a script or a second household member sees: streamed replies with a stats line,
one conversation per session, /health, and a failed model load that keeps the old model.
"""

from __future__ import annotations

import json
import urllib.request

import pytest
from conftest import message_text as _text
from conftest import output_chat as _chat
from gradio_client import Client

pytestmark = pytest.mark.model

QUESTION = "What is the capital of France?"
# system_prompt, temperature, top_p, top_k, min_p, repetition_penalty, max_new_tokens, seed, stop
GREEDY = ("", 0, 0.9, 40, 0.0, 1.0, 48, -1, "")


def _ask(client: Client, text: str) -> list:
    """Add the user's message, then stream the reply; returns every streamed output."""
    box, chat, _ = client.predict(text, api_name="/add_user")
    assert box == ""
    assert _text(chat[-1]) == text
    job = client.submit(*GREEDY, api_name="/respond")
    for _ in job:  # iterate while it streams, as a script would
        pass
    return job.outputs()


@pytest.fixture()
def client(running_app) -> Client:
    return Client(running_app.url, verbose=False)


def test_health_names_the_model(running_app):
    with urllib.request.urlopen(running_app.url + "/health", timeout=10) as r:
        assert r.headers.get_content_type() == "application/json"
        body = json.loads(r.read())
    assert body["status"] == "ok"
    assert "SmolLM2" in body["model"]
    assert body["model"] in body["loading"]


def test_reply_streams_and_ends_with_stats(client):
    outputs = _ask(client, QUESTION)
    assert len(outputs) > 2, f"expected a streamed reply, got {len(outputs)} outputs"
    partial = [_text(_chat(o)[-1]) for o in outputs if _chat(o) and _chat(o)[-1]["role"] == "assistant"]
    assert len(set(partial)) > 2, f"the reply did not grow while streaming: {partial}"
    final = _chat(outputs[-1])
    assert [m["role"] for m in final] == ["user", "assistant"]
    reply = _text(final[-1])
    assert "Paris" in reply, reply
    assert "tokens" in reply and "tok/s" in reply, reply
    assert "<sub>" in reply, "the stats line should be in small print"


def test_each_session_has_its_own_conversation(running_app, client):
    _ask(client, QUESTION)
    other = Client(running_app.url, verbose=False)
    box, chat, _ = other.predict("Hello from the other room", api_name="/add_user")
    assert box == ""
    assert [(m["role"], _text(m)) for m in chat] == [("user", "Hello from the other room")]
    # and the first session still has its two turns plus the new message
    _, mine, _ = client.predict("And of Italy?", api_name="/add_user")
    assert [m["role"] for m in mine] == ["user", "assistant", "user"]


def test_failed_load_keeps_the_old_model(running_app, client):
    line = client.predict("/nonexistent/model-folder", "none", "auto", "auto", None, api_name="/load_model")
    assert line.startswith("⚠"), line
    assert "Still using" in line, line
    with urllib.request.urlopen(running_app.url + "/health", timeout=10) as r:
        assert "SmolLM2" in json.loads(r.read())["model"]
    reply = _text(_chat(_ask(client, QUESTION)[-1])[-1])
    assert "Paris" in reply and "tok/s" in reply, reply
