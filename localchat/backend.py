"""The seam between the chat core and whatever produces tokens: the Engine protocol (replies),
the ModelAdmin protocol (which model is loaded), Backend (both), and the errors they raise.

Invariant: the chat service and both front ends see only these protocols and the errors below;
they never import torch or transformers, and never probe a backend with getattr: every backend
(TransformersBackend, EngineProcess, OpenAIBackend and the test fakes) implements every method
declared here, with the behaviour documented here. Replies are stateless per request: every call
carries its own GenerationRequest and cancel event.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from typing import Protocol

from localchat.hardware import Hardware
from localchat.types import Chunk, GenerationRequest, LoadedInfo, LoadOptions, ModelSpec

# The household's sentence-embedding model (document libraries, /v1/embeddings): its name and size.
EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDING_DIMENSIONS = 384


class BackendError(RuntimeError):
    """A request could not be served; str(error) is one line for the user."""


class NoModelLoaded(BackendError):
    pass


class PromptTooLong(BackendError):
    """The prompt cannot fit the context window even after trimming."""


class ServerBusy(BackendError):
    pass


class ModelLoadFailed(BackendError):
    """Loading failed; the model loaded before (if any) is still loaded."""


class ModelNotAllowed(BackendError):
    """The model loaded when the job started is not one the asking member may use."""


class Engine(Protocol):
    """What produces replies, and sentence vectors."""

    def stream(self, request: GenerationRequest, cancel: threading.Event | None = None) -> Iterator[Chunk]:
        """Generate one reply. Yields chunks: `queue_position` ones while the request waits (how
        many replies are ahead of it), a `fit` one when the conversation was shortened to fit the
        context window, `text` ones as the reply is written, and last one with `usage` set (whose
        `model` is the LoadOptions.model of the model that wrote the reply; finish_reason
        "cancelled" when stopped). Setting `cancel`, or closing the iterator, stops the reply at its
        next step; the iterator then still ends with its usage chunk.

        When the job starts (after every load queued before it), the engine checks the model then
        loaded: none -> NoModelLoaded; not in `request.allowed_models` (when that is not None) ->
        ModelNotAllowed, and nothing is generated. `request.trim` False or `request.prompt` set:
        a prompt past the context window raises PromptTooLong instead of being shortened. Raises
        ServerBusy when too many replies wait, BackendError (one line for the user) otherwise; an
        engine may raise when called or while iterating."""
        ...

    def expect(self) -> None:
        """A request for a reply has just arrived and will call stream() soon: the engine may read
        its prompt together with others arriving at the same moment. A hint: never blocks, never
        raises; engines that cannot use it do nothing."""
        ...

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Unit-length sentence vectors, one per text in order, from the household's embedding
        model (EMBEDDING_MODEL, EMBEDDING_DIMENSIONS; a remote engine: its own), computed where the
        engine runs. Runs beside replies: it neither waits for the reply queue nor holds it up. A
        text is read up to the model's 256 tokens. Raises BackendError (one line) when it cannot
        (the model is not installed, the engine cannot be reached)."""
        ...


class ModelAdmin(Protocol):
    """Which model is loaded, and changing it (the admin's Model panel, /v1/models)."""

    def load(self, options: LoadOptions) -> LoadedInfo:
        """Load and wait. On failure raises ModelLoadFailed (one line) and the model loaded before,
        if any, is still loaded; ServerBusy when the queue is full."""
        ...

    def load_in_background(self, options: LoadOptions) -> Future[LoadedInfo]:
        """Start a load and return at once; the Future ends as load() would (its exception is
        ModelLoadFailed or ServerBusy). Replies queued after it run on the new model. The Future
        cannot be cancelled once the load is queued."""
        ...

    def unload(self) -> None:
        """Free the loaded model's memory (waits for the replies running on it). Raises
        BackendError when the engine cannot unload (a remote engine), ServerBusy when busy."""
        ...

    def loaded(self) -> LoadedInfo | None:
        """The model that answers now, or one unloaded for being idle (see `asleep`); None when
        none is. Answered at once, never raises."""
        ...

    @property
    def loading(self) -> LoadOptions | None:
        """The model being loaded (the last one queued), None when no load is queued or running."""
        ...

    @property
    def asleep(self) -> LoadedInfo | None:
        """The model unloaded for being idle, which the next reply loads again; else None."""
        ...

    @property
    def last_load_error(self) -> str | None:
        """Why the last load failed (one line), or why the engine cannot run; None after a success."""
        ...

    def available_models(self) -> list[ModelSpec]:
        """The models this engine can load (the picker's choices); [] when it cannot tell."""
        ...

    def fit(self, options: LoadOptions) -> str:
        """Markdown for the Model panel: will this model fit this machine, per load option. Never
        raises: a failure or an engine that cannot estimate is said in the text ("⚠ ...")."""
        ...

    def hardware(self) -> Hardware:
        """The machine the model runs on, as the engine sees it. Never imports torch in the server
        (an engine process or remote engine describes its own setup); raises BackendError when the
        engine cannot be asked."""
        ...

    def activity(self) -> dict[str, int]:
        """{"generating": replies being written now, "waiting": replies queued}; zeros when the
        engine cannot say. Never raises."""
        ...

    def close(self) -> None:
        """Stop: requests in flight are answered (ServerBusy), the engine's resources freed."""
        ...


class Backend(Engine, ModelAdmin, Protocol):
    """Everything the core calls on an engine: replies and model admin."""
