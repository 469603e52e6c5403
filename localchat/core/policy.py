"""A household member's policy: the preset an admin locked them to, and the models they may use.

Owns: the one function (`Policy.request`) that turns what a front end asks for into the
GenerationRequest the engine runs, for the UI and the API alike. Invariants: a locked preset's
system prompt replaces every system message the caller sent and its sampling replaces the caller's
(passages from the member's documents are added after it, never instead of it);
a lock whose preset is missing refuses (it never falls open); `allowed_models` always travels with
the request, so the engine checks it again when the job starts; every text in the request encodes
as UTF-8 (a lone surrogate becomes U+FFFD, `text.clean_text`), whichever front end sent it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from localchat.backend import BackendError, ModelNotAllowed
from localchat.core.documents import with_documents
from localchat.presets import Preset, render_system_prompt
from localchat.store import Member
from localchat.text import clean_text
from localchat.types import GenerationRequest, LoadedInfo, Message, SamplingParams


class PolicyRefused(BackendError):
    """The member's policy does not allow this request (e.g. raw text under a locked preset)."""


@dataclass(frozen=True)
class Policy:
    owner: str  # the member's id, for the queue's fair turns
    allowed_models: tuple[str, ...] | None = None  # None: every model
    locked_name: str | None = None  # the preset an admin locked the member to
    locked: Preset | None = None  # that preset, None when it is missing (then replies are refused)

    def check_loaded(self, info: LoadedInfo | None) -> None:
        """Refuse early when the model loaded now is not allowed (the engine checks again at start)."""
        if info is not None and self.allowed_models is not None and info.options.model not in self.allowed_models:
            raise ModelNotAllowed(f"Your account may not use {info.name}. Ask an admin of the household.")

    def request(
        self,
        messages: Sequence[Message],
        params: SamplingParams,
        *,
        prompt: str | None = None,
        trim: bool = True,
        now: datetime | None = None,
        documents: str = "",
    ) -> GenerationRequest:
        """What the engine runs for this member: the caller's messages and sampling, under the lock;
        `documents` (passages from the member's libraries) ends the system message, the lock's too."""
        if self.locked_name is not None:
            if self.locked is None:
                raise PolicyRefused(
                    f"Your account is set to the preset {self.locked_name!r}, which is missing. "
                    "Ask an admin of the household."
                )
            if prompt is not None:  # a raw completion has no system turn to hold the lock
                raise PolicyRefused(
                    f"Your account is set to the preset {self.locked.name!r}: use chat completions, not raw text"
                )
            system = render_system_prompt(self.locked.system_prompt, now).strip()
            turns = [m for m in messages if m.role != "system"]
            messages = [Message("system", system), *turns] if system else turns
            params = self.locked.sampling
        messages = with_documents(messages, documents)
        if params.stop:
            params = replace(params, stop=tuple(clean_text(s) for s in params.stop))
        return GenerationRequest(
            messages=tuple(Message(m.role, clean_text(m.content)) for m in messages),
            params=params,
            prompt=None if prompt is None else clean_text(prompt),
            trim=trim,
            owner=self.owner,
            allowed_models=self.allowed_models,
        )


def policy_for(member: Member, presets: Sequence[Preset]) -> Policy:
    locked = next((p for p in presets if p.name == member.locked_preset), None) if member.locked_preset else None
    return Policy(
        owner=str(member.id),
        allowed_models=member.allowed_models,
        locked_name=member.locked_preset or None,
        locked=locked,
    )
