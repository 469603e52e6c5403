"""ChatService: what both front ends ask of the engine, under the asking member's policy.

Owns: presets; turning a member's request into a GenerationRequest (through `Policy.request`) and
streaming it; passages from the member's document libraries put into the prompt (core.documents);
progress (queue position, context trimming, stats) as ReplyUpdates; the models' status lines.
Invariants: no Gradio, no HTTP, no torch; every request carries its own cancel event; the backend is
called only through the methods its protocol declares; a search failure never stops a reply.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from localchat.backend import Backend, BackendError
from localchat.core import documents
from localchat.core.documents import LibraryChoice
from localchat.core.policy import Policy, PolicyRefused, policy_for
from localchat.hardware import Hardware
from localchat.library.types import LibraryService, Passage
from localchat.presets import Preset, PresetProblem, load_presets, render_system_prompt
from localchat.store import Member
from localchat.types import Chunk, LoadedInfo, LoadOptions, Message, SamplingParams, Usage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplyUpdate:
    text: str  # the whole reply so far
    notice: str = ""  # waiting in the queue, context trimmed
    usage: Usage | None = None  # set on the final update
    error: str | None = None
    sources: tuple[Passage, ...] = ()  # the passages the model was given, in citation order [1]..[n]

    @property
    def done(self) -> bool:
        return self.usage is not None or self.error is not None


def info_name(ref: str) -> str:
    """A model reference as people read it: the bundled model's name, or the last path part."""
    from localchat.weights.models import DISPLAY_NAMES  # a plain dict; importing it loads no torch

    return DISPLAY_NAMES.get(ref) or ref.rstrip("/").rsplit("/", 1)[-1]


def format_stats(usage: Usage) -> str:
    """The small line under each reply: tokens, speed, time to first token, why it ended, and the
    model that wrote it (the one loaded when the reply started, as the engine reports it)."""
    parts = [f"{usage.completion_tokens} token{'' if usage.completion_tokens == 1 else 's'}"]
    if usage.tokens_per_second:
        parts.append(f"{usage.tokens_per_second:.1f} tok/s")
    if usage.time_to_first_token is not None:
        parts.append(f"first token {usage.time_to_first_token:.2f} s")
    reason = {"length": "stopped at the length limit", "cancelled": "stopped"}.get(usage.finish_reason)
    if reason:
        parts.append(reason)
    if usage.model:
        parts.append(info_name(usage.model))
    return " · ".join(parts)


def stats_line(update: ReplyUpdate) -> str:
    """What is shown (and saved) under a reply after this update."""
    if update.error:
        return f"⚠ {update.error}"
    if update.usage is not None:
        return format_stats(update.usage) + (f" · {update.notice}" if update.notice else "")
    return update.notice


def left_out_notice(left_out: int, used: int) -> str:
    """Said under a reply when passages found in the documents did not fit the context window."""
    found = f"{left_out} passage{'' if left_out == 1 else 's'} found in your documents"
    if not used:
        return f"{found} did not fit the context window; answered without them"
    return f"{found} did not fit the context window and {'was' if left_out == 1 else 'were'} left out"


def waiting_notice(position: int) -> str:
    if position <= 0:
        return "Starting…"
    return f"Waiting for the model: {position} repl{'y' if position == 1 else 'ies'} ahead of yours"


# The window assumed for the passage budget when the engine does not say: no model loaded yet, or a
# remote engine that reports 0 (models served that way have at least this much).
DEFAULT_CONTEXT = 4096


class ChatService:
    def __init__(self, backend: Backend, presets_dir=None, now=datetime.now, libraries: LibraryService | None = None):
        self.backend = backend
        self.libraries = libraries
        self.presets_dir = presets_dir
        self._now = now
        self.presets: list[Preset] = []
        self.preset_problems: list[PresetProblem] = []
        self.reload_presets()

    # -- presets and policy -------------------------------------------------------------------
    def reload_presets(self) -> None:
        if self.presets_dir is None:
            return
        self.presets, self.preset_problems = load_presets(self.presets_dir)
        for problem in self.preset_problems:
            (log.error if problem.fatal else log.warning)("preset %s", problem.message)

    def preset(self, name: str) -> Preset | None:
        return next((p for p in self.presets if p.name == name), None)

    def policy(self, member: Member) -> Policy:
        return policy_for(member, self.presets)

    # -- replies ------------------------------------------------------------------------------
    def messages_for(self, system_prompt: str, history: Sequence[Message]) -> list[Message]:
        """One system message first: the rendered system prompt, then the conversation's own (an
        imported chat's instructions, kept as written); chat templates allow only one, at the start."""
        own = [m.content.strip() for m in history if m.role == "system"]
        system = "\n\n".join(p for p in [render_system_prompt(system_prompt, self._now()).strip(), *own] if p)
        return ([Message("system", system)] if system else []) + [m for m in history if m.role != "system"]

    def expect(self) -> None:
        """A request for a reply has just arrived: the engine may read its prompt together with
        others that arrive at the same moment (engines that cannot, ignore it)."""
        self.backend.expect()

    def complete(
        self,
        member: Member,
        messages: Sequence[Message],
        params: SamplingParams,
        cancel: threading.Event | None = None,
        *,
        trim: bool = True,
        prompt: str | None = None,
        documents: str = "",
    ) -> Iterator[Chunk]:
        """Stream a completion of fully built messages under the member's policy. The API passes
        trim=False (a prompt past the window is an error, never shortened) and `prompt` for raw
        completions; `documents` is a passage block (search_documents) for the system message.
        Raises ModelNotAllowed or PolicyRefused before anything is queued."""
        policy = self.policy(member)
        policy.check_loaded(self.backend.loaded())
        request = policy.request(messages, params, prompt=prompt, trim=trim, now=self._now(), documents=documents)
        return self.backend.stream(request, cancel)

    def search_documents(
        self,
        member: Member,
        messages: Sequence[Message],
        params: SamplingParams,
        choice: LibraryChoice,
        *,
        trim: bool = False,
    ) -> tuple[str, tuple[Passage, ...]]:
        """-> (the passage block for the system message, the passages [1]..[n]) from the chosen
        libraries, for `complete` with the same `trim`. Raises LibraryError."""
        block, passages, _ = self._search(member, messages, params, choice, trim)
        return block, passages

    def _search(
        self, member: Member, messages: Sequence[Message], params: SamplingParams, choice: LibraryChoice, trim: bool
    ) -> tuple[str, tuple[Passage, ...], int]:
        """search_documents, and how many passages found were left out for want of room. The budget is
        the window less the reply's room (as the engine reserves it), measured on the messages as the
        engine gets them: the member's locked preset applied, and with `trim` only what it keeps."""
        if choice is None or self.libraries is None:
            return "", (), 0
        try:
            request = self.policy(member).request(messages, params, trim=trim, now=self._now())
        except PolicyRefused:
            return "", (), 0  # the reply is refused anyway, with its own message
        info = self.backend.loaded()
        window = (info.context_length if info is not None else 0) or DEFAULT_CONTEXT
        budget = window - min(request.params.max_new_tokens, window // 2)
        passages, left_out = documents.retrieve(self.libraries, member, choice, request.messages, budget, trim=trim)
        return (documents.passage_block(passages) if passages else ""), tuple(passages), left_out

    def reply(  # noqa: PLR0913 - who, what, how, the cancel handle and the documents
        self,
        member: Member,
        history: Sequence[Message],
        system_prompt: str,
        params: SamplingParams,
        cancel: threading.Event | None = None,
        libraries: LibraryChoice = None,
    ) -> Iterator[ReplyUpdate]:
        """Stream the assistant's answer to `history` (which ends with the user's message); the
        system prompt and sampling asked for give way to the member's locked preset. `libraries`:
        the documents to answer from (None: none; "all": every library the member may use; ids)."""
        text, notice, block, sources = "", "", "", ()
        stream = None
        try:  # a backend may raise when called, not only while iterating
            messages = self.messages_for(system_prompt, history)
            try:
                block, sources, left_out = self._search(member, messages, params, libraries, True)
                if left_out:
                    notice = left_out_notice(left_out, len(sources))
            except Exception as exc:  # noqa: BLE001 - the reply goes on without documents, and says so
                log.exception("document search failed")
                notice = f"Your documents could not be searched ({exc}); answered without them"
            searched = notice
            stream = self.complete(member, messages, params, cancel, documents=block)
            for chunk in stream:
                if chunk.queue_position is not None:
                    yield ReplyUpdate(text, waiting_notice(chunk.queue_position), sources=sources)
                    continue
                if chunk.fit is not None and chunk.fit.trimmed:
                    notice = " · ".join(n for n in (searched, chunk.fit.describe()) if n)
                text += chunk.text
                if chunk.error is not None:
                    yield ReplyUpdate(text, notice, error=chunk.error, sources=sources)
                    return
                if chunk.usage is not None:
                    yield ReplyUpdate(text, notice, usage=chunk.usage, sources=sources)
                    return
                yield ReplyUpdate(text, notice, sources=sources)
            yield ReplyUpdate(text, notice, error="The model stopped without finishing the reply", sources=sources)
        except BackendError as exc:
            yield ReplyUpdate(text, notice, error=str(exc), sources=sources)
        except Exception as exc:  # noqa: BLE001 - the user sees one line, the log has the rest
            log.exception("reply failed")
            yield ReplyUpdate(text, notice, error=f"Something went wrong while answering: {exc}", sources=sources)
        finally:
            close = getattr(stream, "close", None)  # closing the stream cancels its generation
            if close is not None:
                close()

    # -- models -------------------------------------------------------------------------------
    def hardware(self) -> Hardware:
        """This machine as the engine sees it; an engine process looks at the GPUs itself, so the
        server never opens a CUDA context of its own (hundreds of MB of GPU memory)."""
        try:
            return self.backend.hardware()
        except BackendError:  # the engine is down; asking torch here would load it into the server
            return Hardware(cpu="unknown (the engine is not answering)", cores=0, ram_total_bytes=0, ram_free_bytes=0)

    def load(self, options: LoadOptions) -> LoadedInfo:
        return self.backend.load(options.validate())

    def loading(self) -> LoadOptions | None:
        """The model being loaded, if any (a backend that loads synchronously never reports one)."""
        return self.backend.loading

    def status_line(self) -> str:
        """The short header line: which model answers, and the memory it takes."""
        loading = self.loading()
        info = self.backend.loaded()
        if loading is not None:
            return f"Loading {info_name(loading.model)}…"
        if info is None:
            return "No model loaded: open Settings, then Model"
        if info == self.backend.asleep:
            return f"{info.name} · unloaded while idle: it loads again with your next message"
        return f"{info.name} · {info.memory_bytes / 2**20:,.0f} MiB · {info.device}"

    def status(self) -> str:
        loading = self.loading()
        info = self.backend.loaded()
        if loading is not None:
            now = f" (still answering with {info.name})" if info else ""
            return f"Loading {loading.model}…{now}"
        if info is None:
            err = self.backend.last_load_error
            return f"No model loaded. {err}" if err else "No model loaded: pick one and press Load"
        if info == self.backend.asleep:
            return f"{info.describe()} (unloaded while idle; the next message loads it again)"
        # how decoding multiplies on this CPU, as measured at load: the weight format, then the products
        notes = [note for key in ("format", "products") if (note := info.extra.get(key))]
        return "  \n".join([info.describe(), *(f"{n[0].upper()}{n[1:]}" for n in notes)])
