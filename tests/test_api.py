"""The OpenAI-compatible API: request mapping, keys, errors in OpenAI's shape, cancellation on
disconnect (FakeBackend on a real loopback server, driven by httpx and the official `openai`
package)."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from conftest import serve
from fakes import FakeBackend

from localchat.api.schema import ApiError, parse


def client(app, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=app.url + "/v1", api_key=key, max_retries=0, timeout=30)


@pytest.fixture()
def keyless(tmp_path: Path):
    app = serve(tmp_path, backend=FakeBackend("Paris is the capital of France.", model="fake-small"), listen=False)
    yield app
    app.stop()


@pytest.fixture()
def household_api(tmp_path: Path):
    app = serve(
        tmp_path, backend=FakeBackend("Hello there.", model="fake-small"), members={"Ann": "admin", "Bob": "member"}
    )
    household = app.app.household
    app.keys = {name: household.create_api_key(household.store.member_by_name(name), "test") for name in ("Ann", "Bob")}
    yield app
    app.stop()


# -- request mapping ------------------------------------------------------------------------
def test_a_chat_body_maps_to_messages_and_sampling() -> None:
    req = parse(
        {
            "model": "m",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
            ],
            "temperature": 0,
            "top_p": 0.5,
            "max_completion_tokens": 7,
            "stop": "\n",
            "seed": 3,
            "presence_penalty": 0.5,
            "frequency_penalty": -0.5,
            "stream": True,
            "stream_options": {"include_usage": True},
            "user": "ignored",
        },
        chat=True,
    )
    assert [(m.role, m.content) for m in req.messages] == [("system", "Be brief."), ("user", "Hi there")]
    p = req.params
    assert (p.temperature, p.top_p, p.max_new_tokens, p.stop, p.seed) == (0, 0.5, 7, ("\n",), 3)
    assert (p.presence_penalty, p.frequency_penalty, p.repetition_penalty, p.top_k) == (0.5, -0.5, 1.0, 0)
    assert req.stream and req.include_usage and req.max_tokens_given


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"logprobs": True}, "logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"frobnicate": 1}, "frobnicate"),
        ({"temperature": 9}, None),
        ({"max_tokens": "many"}, "max_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages[0].content"),
    ],
)
def test_what_cannot_be_honoured_is_refused(change: dict, field: str | None) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **change}
    with pytest.raises(ApiError) as exc:
        parse(body, chat=True)
    assert exc.value.status == 400 and (field is None or exc.value.param == field)


# -- over HTTP ------------------------------------------------------------------------------
def test_keyless_on_loopback_without_accounts(keyless) -> None:
    c = client(keyless)
    assert [m.id for m in c.models.list().data][0] == "fake-small"
    done = c.chat.completions.create(model="fake-small", messages=[{"role": "user", "content": "Capital of France?"}])
    assert done.choices[0].message.content == "Paris is the capital of France."
    assert done.choices[0].finish_reason == "stop" and done.usage.completion_tokens == 6
    text = c.completions.create(model="fake-small", prompt="Once upon a time", max_tokens=2)
    assert text.choices[0].text == "Paris is" and text.choices[0].finish_reason == "length"
    assert keyless.app.backend.calls[-1].prompt == "Once upon a time"


def test_streaming_ends_with_usage_and_done(keyless) -> None:
    with httpx.stream(
        "POST",
        keyless.url + "/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "max_tokens": 3,
            "stream_options": {"include_usage": True},
        },  # fmt: skip
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Paris is the"
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3


def test_a_malformed_body_gets_an_openai_shaped_4xx(keyless) -> None:
    r = httpx.post(
        keyless.url + "/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400 and set(r.json()["error"]) >= {"message", "type", "param", "code"}
    with pytest.raises(openai.BadRequestError) as exc:
        client(keyless).chat.completions.create(model="fake-small", messages=[{"role": "user", "content": "x"}], n=2)
    assert exc.value.body["param"] == "n"


def test_a_prompt_past_the_context_window_is_a_400_never_trimmed(tmp_path: Path) -> None:
    app = serve(tmp_path, backend=FakeBackend("ok", model="fake-small", context_length=50), listen=False)
    try:
        with pytest.raises(openai.BadRequestError) as exc:
            client(app).chat.completions.create(
                model="fake-small", messages=[{"role": "user", "content": "word " * 100}]
            )
        assert exc.value.body["code"] == "context_length_exceeded"
        assert app.app.backend.calls[-1].trim is False
        with pytest.raises(openai.BadRequestError):
            client(app).chat.completions.create(
                model="fake-small", messages=[{"role": "user", "content": "hi"}], max_tokens=50
            )
    finally:
        app.stop()


def test_a_model_that_is_not_loaded_is_a_404(keyless) -> None:
    with pytest.raises(openai.NotFoundError):
        client(keyless).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])


def test_a_disconnect_cancels_only_that_generation(tmp_path: Path) -> None:
    backend = FakeBackend(" ".join(f"w{i}" for i in range(400)), model="fake-small", delay=0.02)
    app = serve(tmp_path, backend=backend, listen=False)
    try:
        other: list[str] = []
        keep = threading.Thread(
            target=lambda: other.append(
                client(app)
                .chat.completions.create(
                    model="fake-small", messages=[{"role": "user", "content": "the other one"}], max_tokens=60
                )
                .choices[0]
                .message.content
            )
        )
        keep.start()
        body = {"messages": [{"role": "user", "content": "long"}], "stream": True, "max_tokens": 400}
        with httpx.stream("POST", app.url + "/v1/chat/completions", json=body) as r:
            lines = r.iter_lines()
            while "w3" not in next(lines):
                pass
        left = time.monotonic()
        dropped = next(c for c in backend.calls if c.messages[0].content == "long")
        assert dropped.cancel.wait(5), "the generation went on after the client left"
        print(f"cancelled {time.monotonic() - left:.3f} s after the disconnect")
        keep.join(30)
        assert other and other[0].split()[-1] == "w59"  # the other request ran to its end
    finally:
        app.stop()


# -- keys -----------------------------------------------------------------------------------
def test_household_mode_needs_a_valid_key(household_api) -> None:
    for key in ("unused", "lc-000000000000-forged", household_api.keys["Bob"] + "x"):
        with pytest.raises(openai.AuthenticationError):
            client(household_api, key).models.list()
    assert httpx.get(household_api.url + "/v1/models").status_code == 401
    bob = client(household_api, household_api.keys["Bob"])
    assert bob.chat.completions.create(model="fake-small", messages=[{"role": "user", "content": "hi"}]).choices
    store = household_api.app.household.store
    stored = store.db.query("SELECT key_hash, prefix FROM api_keys")
    assert all(household_api.keys["Bob"] not in (row[0], row[1]) for row in stored)  # only a hash is kept


def test_a_revoked_key_stops_working(household_api) -> None:
    household = household_api.app.household
    bob = household.store.member_by_name("Bob")
    (key,) = household.store.api_keys(bob.id)
    household.store.revoke_api_key(bob.id, key.id)
    with pytest.raises(openai.AuthenticationError):
        client(household_api, household_api.keys["Bob"]).models.list()


def test_a_key_reaches_only_its_members_models(household_api) -> None:
    household = household_api.app.household
    ann, bob = household.store.member_by_name("Ann"), household.store.member_by_name("Bob")
    household.set_policy(ann, bob.id, ["fake-large"], None)
    c = client(household_api, household_api.keys["Bob"])
    assert [m.id for m in c.models.list().data] == ["fake-large"]
    with pytest.raises(openai.PermissionDeniedError):
        c.chat.completions.create(model="fake-small", messages=[{"role": "user", "content": "hi"}])


def test_only_admin_keys_load_models_and_never_with_loader_switches(household_api) -> None:
    url = household_api.url + "/v1/models/load"
    bob = {"Authorization": f"Bearer {household_api.keys['Bob']}"}
    ann = {"Authorization": f"Bearer {household_api.keys['Ann']}"}
    assert httpx.post(url, json={"model": "fake-large"}, headers=bob).status_code == 403
    r = httpx.post(url, json={"model": "fake-large", "trust_remote_code": True}, headers=ann)
    assert r.status_code == 400 and r.json()["error"]["param"] == "trust_remote_code"
    r = httpx.post(url, json={"model": "fake-large", "quantization": "4bit"}, headers=ann, timeout=30)
    assert r.status_code == 200 and household_api.app.backend.loaded().options.model == "fake-large"
    assert httpx.post(household_api.url + "/v1/models/unload", headers=bob).status_code == 403


def test_a_foreign_page_cannot_call_the_api_from_a_browser(household_api) -> None:
    r = httpx.post(
        household_api.url + "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {household_api.keys['Bob']}", "Origin": "http://evil.example"},
    )
    assert r.status_code == 403


def test_an_engine_without_a_known_window_still_takes_max_tokens(tmp_path: Path) -> None:
    backend = FakeBackend("ok then", model="fake-small", context_length=0)
    app = serve(tmp_path, backend=backend, listen=False)
    try:
        done = client(app).chat.completions.create(
            model="fake-small", messages=[{"role": "user", "content": "hi"}], max_tokens=1
        )
        assert done.choices[0].finish_reason == "length"
    finally:
        app.stop()


def test_an_unexpected_failure_is_still_an_openai_error(tmp_path: Path) -> None:
    backend = FakeBackend("one two three", model="fake-small", error=MemoryError("CUDA out of memory"), error_after=1)
    app = serve(tmp_path, backend=backend, listen=False)
    try:
        with pytest.raises(openai.InternalServerError) as exc:
            client(app).chat.completions.create(model="fake-small", messages=[{"role": "user", "content": "hi"}])
        assert "out of memory" in exc.value.body["message"]
        body = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
        with httpx.stream("POST", app.url + "/v1/chat/completions", json=body) as r:
            events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
        assert "out of memory" in events[-2] and events[-1] == "[DONE]"
    finally:
        app.stop()


def test_a_non_streaming_client_that_leaves_cancels_its_generation(tmp_path: Path) -> None:
    backend = FakeBackend(" ".join(f"w{i}" for i in range(400)), model="fake-small", delay=0.02)
    app = serve(tmp_path, backend=backend, listen=False)
    try:
        body = json.dumps({"messages": [{"role": "user", "content": "long"}], "max_tokens": 400}).encode()
        head = "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        with socket.create_connection(("127.0.0.1", app.port)) as conn:  # a client that leaves mid-reply
            conn.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            while not backend.calls:  # the generation has started (no clock: a slow machine waits longer)
                time.sleep(0.01)
        assert backend.calls[-1].cancel.wait(5), "the reply went on after the client left"
    finally:
        app.stop()
