"""Presets and remembered settings: picking a preset, remembering a member's choices, and what the
page shows when it opens (their chats, their settings, what an admin may do).

Owns: mapping presets and stored preferences to Gradio values. Invariant: a member's locked preset
shows as read-only controls and is never overwritten by remembered values; the lock itself is
enforced by the core's policy, whatever the page sends.
"""

from __future__ import annotations

import gradio as gr

from localchat.core import ChatService
from localchat.household import Household
from localchat.settings import Settings
from localchat.store import StoreError
from localchat.ui.adapters import SAMPLING_FIELDS, sampling_to_ui
from localchat.ui.conversations import conversation_choices, member_line, privacy_notice
from localchat.ui.members import member_of


class Preferences:
    def __init__(self, service: ChatService, household: Household, settings: Settings):
        self.service = service
        self.household = household
        self.settings = settings

    def choose_preset(self, name: str) -> list:
        preset = self.service.preset(name)
        if preset is None:
            return [gr.update()] * (2 + len(SAMPLING_FIELDS))
        return [preset.system_prompt, f"*{preset.description}*", *sampling_to_ui(preset.sampling)]

    def remember(  # noqa: PLR0913 - one argument per control, as Gradio passes them
        self,
        preset: str,
        system: str,
        temperature: float,
        top_p: float,
        top_k: int,
        min_p: float,
        repetition_penalty: float,
        max_new_tokens: int,
        seed: int,
        stop: str,
        request: gr.Request,
    ) -> None:
        """Keep this member's preset, system prompt and sampling values for their next visit."""
        member = member_of(self.household, request)
        if member.locked_preset:
            return
        sampling = (temperature, top_p, top_k, min_p, repetition_penalty, max_new_tokens, seed, stop)
        prefs = {
            "preset": preset,
            "system_prompt": system,
            "sampling": dict(zip(SAMPLING_FIELDS, sampling, strict=True)),
        }
        try:
            self.household.store.set_preferences(member.id, prefs)
        except StoreError as exc:
            gr.Warning(str(exc))

    def on_load(self, request: gr.Request) -> list:
        """What depends on who opened the page: their chats, their remembered or locked settings,
        and what an admin may do."""
        member = member_of(self.household, request)
        prefs = self.household.store.preferences(member.id)
        locked = self.service.policy(member).locked
        preset = locked or self.service.preset(prefs.get("preset") or "") or self.service.preset(self.settings.preset)
        values = sampling_to_ui(preset.sampling) if preset else [gr.update()] * len(SAMPLING_FIELDS)
        saved = prefs.get("sampling") or {}
        if not locked and saved:
            values = [saved.get(name, v) for name, v in zip(SAMPLING_FIELDS, values, strict=True)]
        system = locked.system_prompt if locked else prefs.get("system_prompt", preset.system_prompt if preset else "")
        editable = not member.locked_preset  # a lock whose preset is missing is still a lock
        note = (
            f"*🔒 {member.locked_preset}: set by an admin of the household*"
            if member.locked_preset
            else (f"*{preset.description}*" if preset else "")
        )
        admin = self.household.may_load_models(member)
        return [
            gr.Radio(choices=conversation_choices(self.household, member), value=None),
            gr.update(value=preset.name if preset else None, interactive=editable),
            note,
            gr.update(value=system, interactive=editable),
            *[gr.update(value=v, interactive=editable) for v in values],
            member_line(self.household, member),
            privacy_notice(self.household, member),
            gr.Column(visible=admin),  # load controls
            gr.Button(visible=admin and not member.builtin),  # the household panel
            gr.Accordion(visible=not member.builtin),  # API keys belong to accounts
            gr.Accordion(visible=not member.builtin),  # so does a password
        ]
