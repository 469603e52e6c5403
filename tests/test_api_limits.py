"""Bad /v1 bodies are 4xx errors in OpenAI's shape, never 500s: size (413, read as it streams),
huge or non-finite numbers, deep nesting, lone surrogates, non-UTF-8 (real server on loopback, httpx)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from conftest import serve
from fakes import FakeBackend

from localchat.api.body import MAX_BODY_BYTES


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory):
    """A keyless app whose model answers with the last message, so what it was given is visible."""
    backend = FakeBackend(lambda messages: messages[-1].content, model="fake-small")
    app = serve(tmp_path_factory.mktemp("limits"), backend=backend, listen=False)
    yield app
    app.stop()


def post(app, body: bytes | Iterator[bytes], path: str = "/v1/chat/completions") -> httpx.Response:
    return httpx.post(app.url + path, content=body, headers={"Content-Type": "application/json"}, timeout=60)


def raw_chat(extra: str = "", content: str = '"hi"') -> bytes:
    return f'{{"model": "fake-small", "messages": [{{"role": "user", "content": {content}}}]{extra}}}'.encode()


def assert_openai_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    return error


def test_a_body_past_the_cap_is_a_413_whether_declared_or_streamed(echo) -> None:
    big = raw_chat(content=json.dumps("x" * (MAX_BODY_BYTES + 10)))
    error = assert_openai_error(post(echo, big), 413)
    assert error["code"] == "request_too_large" and "8 MB" in error["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused as it arrives
        for start in range(0, len(big), 2**20):
            yield big[start : start + 2**20]

    assert_openai_error(post(echo, chunks()), 413)
    assert (
        post(echo, raw_chat(content=json.dumps("x" * 30_000))).status_code == 200
    )  # a long message that may fit is read


@pytest.mark.parametrize(
    "extra, says",
    [
        (', "max_tokens": ' + "9" * 400, "digits"),  # was a 500: OverflowError
        (', "seed": 1' + "0" * 30, "seed"),  # was a 500: OverflowError
        (', "max_tokens": 1e400', "too large"),
        (', "temperature": 1e400', "too large"),
        (', "temperature": NaN', "NaN"),
        (', "top_p": -Infinity', "Infinity"),
        (', "max_tokens": 1e300', "max_tokens"),
    ],
)
def test_numbers_out_of_any_range_are_a_400(echo, extra: str, says: str) -> None:
    assert says in assert_openai_error(post(echo, raw_chat(extra)), 400)["message"]


def test_deep_nesting_is_a_400(echo) -> None:
    assert_openai_error(post(echo, b"[" * 200_000 + b"]" * 200_000), 400)  # past Python's recursion limit
    assert_openai_error(post(echo, raw_chat(', "metadata": ' + "[" * 100 + "]" * 100)), 400)
    assert_openai_error(post(echo, b'{"prompt": ' + b"[" * 200_000, "/v1/completions"), 400)


def test_lone_surrogates_become_replacement_characters(echo) -> None:
    r = post(echo, raw_chat(content='"half \\ud800 of a pair, \\ud83d\\ude00 whole"'))
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "half \ufffd of a pair, \U0001f600 whole"
    r = post(echo, b'{"model": "fake-small", "prompt": "\\udfff"}', "/v1/completions")
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == "\ufffd"


def test_bodies_that_are_not_utf8_json_are_a_400(echo) -> None:
    assert_openai_error(post(echo, b'{"model": "\xff\xfe"}'), 400)
    assert_openai_error(post(echo, b""), 400)
    assert_openai_error(post(echo, b"[1, 2]"), 400)


def test_a_prompt_far_past_the_window_is_refused_before_the_engine_sees_it(echo) -> None:
    calls = len(echo.app.backend.calls)
    r = post(echo, raw_chat(content='"' + "word " * 20_000 + '"'))  # 100,000 characters, a 2,048-token window
    error = assert_openai_error(r, 400)
    assert error["code"] == "context_length_exceeded" and "100,000 characters" in error["message"]
    assert len(echo.app.backend.calls) == calls
