"""The seam between the chat core and whatever produces tokens.

Invariant: the chat service and both front ends see only this protocol and the errors below;
they never import torch or transformers. Backends are stateless per request: every call carries
its own messages, params and cancel event.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Protocol

from localchat.types import Chunk, LoadedInfo, LoadOptions, Message, ModelSpec, SamplingParams


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


class Backend(Protocol):
    def stream(
        self,
        messages: Sequence[Message],
        params: SamplingParams,
        cancel: threading.Event | None = None,
        *,
        trim: bool = True,
        prompt: str | None = None,
        owner: str | None = None,
    ) -> Iterator[Chunk]:
        """Yield text chunks; the last chunk carries usage. Closing the iterator cancels.
        `trim=False`: raise PromptTooLong instead of shortening; `prompt`: raw text completion;
        `owner`: who asks (a household member), so the queue can take turns fairly."""
        ...

    def count_tokens(self, messages: Sequence[Message]) -> int: ...

    def load(self, options: LoadOptions) -> LoadedInfo:
        """Load a model, replacing the current one only on success; raises ModelLoadFailed."""
        ...

    def loaded(self) -> LoadedInfo | None: ...

    def available_models(self) -> list[ModelSpec]: ...

    def close(self) -> None: ...
