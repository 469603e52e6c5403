"""/v1/embeddings and Engine.embed without a model: the body mapping with hand-built data, the route
through the official `openai` client on a real loopback server over FakeBackend (keys, limits,
errors in OpenAI's shape, floats and base64), the remote engine asking another localchat, and the
engine process's pipe carrying an embed (the stand-in engine)."""

from __future__ import annotations

import base64
import math
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from conftest import ROOT, serve
from fakes import FakeBackend, fake_embedding

from localchat.api.embeddings import MAX_INPUTS, parse, response
from localchat.api.schema import ApiError
from localchat.backend import EMBEDDING_DIMENSIONS, EMBEDDING_MODEL, BackendError
from localchat.engines.process import EngineProcess
from localchat.engines.remote import OpenAIBackend

TEXTS = ["The washing machine's filter is behind the flap.", "School starts on 3 September.", ""]


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def client(app, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=app.url + "/v1", api_key=key, max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def keyless(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Single-user mode on loopback: any key is the built-in member."""
    app = serve(tmp_path_factory.mktemp("keyless"), backend=FakeBackend("hi"), listen=False)
    yield app
    app.stop()


# -- the fake's vectors ---------------------------------------------------------------------
def test_the_fake_embedding_is_a_deterministic_unit_vector_closer_for_shared_words() -> None:
    washer, filter_, school = (fake_embedding(t) for t in ("washing machine filter", "the filter", "school starts"))
    for v in (washer, filter_, school, fake_embedding("")):
        assert len(v) == EMBEDDING_DIMENSIONS and math.isclose(dot(v, v), 1.0)
    assert fake_embedding("washing machine filter") == washer  # stable: hashlib, not hash()
    assert dot(washer, filter_) > dot(washer, school)
    assert FakeBackend().embed(["a b", "c"]) == [fake_embedding("a b"), fake_embedding("c")]


# -- the body, with hand-built data ---------------------------------------------------------
def test_a_body_maps_to_texts_and_the_format() -> None:
    assert parse({"input": "one"}).texts == ("one",)
    req = parse({"input": ["a", "b"], "model": "all-MiniLM-L6-v2", "encoding_format": "base64", "user": "x"})
    assert req.texts == ("a", "b") and req.base64
    assert not parse({"input": ["a"], "model": EMBEDDING_MODEL, "encoding_format": "float", "dimensions": 384}).base64


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ([], 400, None),
        ({}, 400, "input"),
        ({"input": []}, 400, "input"),
        ({"input": [[1, 2, 3]]}, 400, "input"),  # token arrays
        ({"input": [1, 2]}, 400, "input"),
        ({"input": ["a", None]}, 400, "input"),
        ({"input": ["a"] * (MAX_INPUTS + 1)}, 400, "input"),
        ({"input": "a", "model": "text-embedding-3-small"}, 404, "model"),
        ({"input": "a", "encoding_format": "int8"}, 400, "encoding_format"),
        ({"input": "a", "dimensions": 256}, 400, "dimensions"),
        ({"input": "a", "dimensions": True}, 400, "dimensions"),
        ({"input": "a", "truncate": True}, 400, "truncate"),
    ],
)
def test_a_body_we_cannot_honour_is_refused(body, status: int, param: str | None) -> None:
    with pytest.raises(ApiError) as caught:
        parse(body)
    assert caught.value.status == status and caught.value.param == param


def test_the_response_is_openais_shape_and_base64_is_little_endian_float32() -> None:
    vectors = [[0.6, 0.8], [1.0, 0.0]]
    plain = response(vectors, as_base64=False)
    assert plain["object"] == "list" and plain["model"] == EMBEDDING_MODEL
    assert plain["data"] == [
        {"object": "embedding", "index": 0, "embedding": [0.6, 0.8]},
        {"object": "embedding", "index": 1, "embedding": [1.0, 0.0]},
    ]
    assert plain["usage"] == {"prompt_tokens": 0, "total_tokens": 0}
    packed = base64.b64decode(response(vectors, as_base64=True)["data"][0]["embedding"])
    assert packed == b"".join(struct.pack("<f", x) for x in (0.6, 0.8))


# -- the route, through the official client -------------------------------------------------
def test_the_official_client_gets_the_engines_vectors_as_floats_and_as_base64(keyless) -> None:
    backend = keyless.app.service.backend
    floats = client(keyless).embeddings.create(input=TEXTS, model=EMBEDDING_MODEL, encoding_format="float")
    assert [d.index for d in floats.data] == [0, 1, 2] and floats.model == EMBEDDING_MODEL
    assert [d.embedding for d in floats.data] == [fake_embedding(t) for t in TEXTS]
    default = client(keyless).embeddings.create(input="School starts on 3 September.", model="all-MiniLM-L6-v2")
    (only,) = default.data  # the client asked for base64 and decoded it: float32 precision
    assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(only.embedding, fake_embedding(TEXTS[1]), strict=True))
    assert backend.embedded[-4:] == [*TEXTS, TEXTS[1]]


def test_limits_and_errors_are_openai_shaped(keyless) -> None:
    api = client(keyless)
    with pytest.raises(openai.BadRequestError, match=f"at most {MAX_INPUTS}"):
        api.embeddings.create(input=["x"] * (MAX_INPUTS + 1), model=EMBEDDING_MODEL)
    with pytest.raises(openai.BadRequestError, match="token ids are not supported"):
        api.embeddings.create(input=[[1, 2, 3]], model=EMBEDDING_MODEL)
    with pytest.raises(openai.NotFoundError, match="all-MiniLM-L6-v2"):
        api.embeddings.create(input="x", model="text-embedding-ada-002")
    big = httpx.post(keyless.url + "/v1/embeddings", content=b'{"input": "' + b"a" * 9 * 2**20 + b'"}')
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"


def test_a_lone_surrogate_is_cleaned_before_the_engine_sees_it(keyless) -> None:
    backend = keyless.app.service.backend
    r = httpx.post(
        keyless.url + "/v1/embeddings",
        content=b'{"input": ["half \\ud800 a pair"]}',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 200, r.text
    assert backend.embedded[-1] == "half \ufffd a pair"
    assert r.json()["data"][0]["embedding"] == fake_embedding("half \ufffd a pair")


def test_an_engine_that_cannot_embed_is_a_503_in_openais_shape(keyless) -> None:
    backend = keyless.app.service.backend
    backend.embed_error = BackendError("The embedding model is not installed: run pip install ...")
    try:
        with pytest.raises(openai.InternalServerError) as caught:
            client(keyless).embeddings.create(input="x", model=EMBEDDING_MODEL)
    finally:
        backend.embed_error = None
    assert caught.value.status_code == 503
    assert caught.value.body["code"] == "embeddings_unavailable" and "not installed" in caught.value.body["message"]


def test_a_household_needs_a_valid_key(tmp_path: Path) -> None:
    app = serve(tmp_path, backend=FakeBackend("hi"), members={"Ann": "admin", "Bob": "member"})
    try:
        household = app.app.household
        key = household.create_api_key(household.store.member_by_name("Bob"), "test")
        with pytest.raises(openai.AuthenticationError):
            client(app, "not-a-key").embeddings.create(input="x", model=EMBEDDING_MODEL)
        assert app.app.service.backend.embedded == []  # refused before the engine was asked
        done = client(app, key).embeddings.create(input="x", model=EMBEDDING_MODEL, encoding_format="float")
        assert done.data[0].embedding == fake_embedding("x")
    finally:
        app.stop()


# -- the other engines ----------------------------------------------------------------------
def test_a_remote_engine_embeds_through_its_v1_embeddings(keyless) -> None:
    remote = OpenAIBackend(keyless.url)  # another localchat as the household's engine
    try:
        for got, want in zip(remote.embed(TEXTS), [fake_embedding(t) for t in TEXTS], strict=True):
            assert got == pytest.approx(want)  # made unit length again: equal up to rounding
        assert remote.embed([]) == []
    finally:
        remote.close()
    strange = OpenAIBackend(keyless.url, embedding_model="nomic-embed-text")
    try:
        with pytest.raises(BackendError, match="answered 404 for embeddings"):
            strange.embed(["x"])  # the engine has no such model: one line saying so
    finally:
        strange.close()
    gone = OpenAIBackend("http://127.0.0.1:9")
    try:
        with pytest.raises(BackendError, match="cannot be reached for embeddings"):
            gone.embed(["x"])
    finally:
        gone.close()


def test_the_engine_process_carries_an_embed_over_the_pipe(tmp_path: Path) -> None:
    engine = EngineProcess(tmp_path, command=[sys.executable, str(ROOT / "tests" / "fake_engine.py"), "serve"])
    try:
        assert engine.embed(TEXTS) == [fake_embedding(t) for t in TEXTS]  # no chat model needed
        assert engine.embed([]) == []
    finally:
        engine.close()
    with pytest.raises(BackendError):
        engine.embed(["after close"])
