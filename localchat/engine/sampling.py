"""Sampling rules as logits processors: each reply gets its own list, built from its SamplingParams.

Invariant: the order is the one transformers' generate() applies (penalties, then temperature,
top-k, top-p, min-p), so a reply sampled here equals one from generate() with the same seed.
"""

from __future__ import annotations

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from localchat.types import SamplingParams


def processors(params: SamplingParams, prompt_length: int) -> LogitsProcessorList:
    """The logits processors for localchat's sampling settings, in the order transformers'
    generate() applies them (a model's own generation_config extras, such as suppressed tokens,
    are not applied)."""
    out = LogitsProcessorList()
    if params.repetition_penalty != 1.0:
        out.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    if params.presence_penalty or params.frequency_penalty:
        out.append(PresenceFrequencyPenalty(prompt_length, params.presence_penalty, params.frequency_penalty))
    if params.temperature > 0:
        if params.temperature != 1.0:
            out.append(TemperatureLogitsWarper(params.temperature))
        if params.top_k:
            out.append(TopKLogitsWarper(params.top_k))
        if params.top_p < 1.0:
            out.append(TopPLogitsWarper(params.top_p))
        if params.min_p:
            out.append(MinPLogitsWarper(params.min_p))
    return out


class PresenceFrequencyPenalty(LogitsProcessor):
    """OpenAI's presence and frequency penalties over the tokens of the reply so far."""

    def __init__(self, prompt_length: int, presence: float, frequency: float):
        self.prompt_length, self.presence, self.frequency = prompt_length, presence, frequency

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        reply = input_ids[:, self.prompt_length :]
        if reply.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores).scatter_add_(1, reply, torch.ones_like(reply, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)
