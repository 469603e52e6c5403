"""Plain values shared by every layer: messages, sampling, load options, stream chunks.

Invariant: these are frozen dataclasses with no torch, gradio or fastapi imports, and every
range check for sampling and loading lives here (in `validate`), nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

Role = Literal["system", "user", "assistant"]
Quantization = Literal["none", "8bit", "4bit"]
Device = Literal["auto", "cuda", "cpu"]
FinishReason = Literal["stop", "length", "cancelled", "error"]

QUANTIZATIONS: tuple[str, ...] = ("auto", "none", "8bit", "4bit")  # auto: the most accurate that fits
DEVICES: tuple[str, ...] = ("auto", "cuda", "cpu")
DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")
QUANT_TYPES_4BIT: tuple[str, ...] = ("nf4", "fp4")


class InvalidValue(ValueError):
    """A user-supplied value is out of range; the message is shown to the user as is."""


@dataclass(frozen=True)
class Message:
    role: Role
    content: str


# The UI's slider ranges: exactly what validate() accepts, so any valid preset fits its sliders.
SAMPLING_RANGES: dict[str, tuple[float, float, float]] = {  # (minimum, maximum, step)
    "temperature": (0.0, 5.0, 0.05),
    "top_p": (0.01, 1.0, 0.01),
    "top_k": (0, 1000, 1),
    "min_p": (0.0, 0.99, 0.01),
    "repetition_penalty": (0.5, 2.5, 0.01),
    "max_new_tokens": (1, 32768, 1),
}


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one reply. temperature 0 means greedy decoding."""

    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 40
    min_p: float = 0.0
    repetition_penalty: float = 1.1
    max_new_tokens: int = 512
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0  # OpenAI's: subtracted once from every token already in the reply
    frequency_penalty: float = 0.0  # OpenAI's: subtracted per occurrence in the reply

    def validate(self) -> SamplingParams:
        checks = [
            (0.0 <= self.temperature <= 5.0, "temperature must be between 0 and 5"),
            (0.0 < self.top_p <= 1.0, "top_p must be above 0 and at most 1"),
            (0 <= self.top_k <= 1000, "top_k must be between 0 (off) and 1000"),
            (0.0 <= self.min_p < 1.0, "min_p must be at least 0 and below 1"),
            (0.5 <= self.repetition_penalty <= 2.5, "repetition_penalty must be between 0.5 and 2.5"),
            (1 <= self.max_new_tokens <= 32768, "max_new_tokens must be between 1 and 32768"),
            (self.seed is None or 0 <= self.seed < 2**63, "seed must be empty or a non-negative integer below 2**63"),
            (all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty text"),
            (-2.0 <= self.presence_penalty <= 2.0, "presence_penalty must be between -2 and 2"),
            (-2.0 <= self.frequency_penalty <= 2.0, "frequency_penalty must be between -2 and 2"),
        ]
        for ok, why in checks:
            if not ok:
                raise InvalidValue(why)
        return self

    def with_(self, **changes: object) -> SamplingParams:
        return replace(self, **changes).validate()


@dataclass(frozen=True)
class LoadOptions:
    """What to load and how. `model` is a folder, a .gguf file, or a Hub id in the local cache."""

    model: str
    device: Device = "auto"
    dtype: str = "auto"
    quantization: Quantization = "none"
    quant_type_4bit: str = "nf4"
    compute_dtype: str = "auto"
    double_quant: bool = True
    context_length: int | None = None  # cap the model's window (saves memory, tests trimming)

    def validate(self) -> LoadOptions:
        checks = [
            (bool(self.model and self.model.strip()), "choose a model to load"),
            (self.device in DEVICES, f"device must be one of {', '.join(DEVICES)}"),
            (self.dtype in DTYPES, f"dtype must be one of {', '.join(DTYPES)}"),
            (self.quantization in QUANTIZATIONS, f"quantization must be one of {', '.join(QUANTIZATIONS)}"),
            (self.quant_type_4bit in QUANT_TYPES_4BIT, "4-bit type must be nf4 or fp4"),
            (self.compute_dtype in DTYPES, f"compute dtype must be one of {', '.join(DTYPES)}"),
            (self.context_length is None or self.context_length >= 64, "context length must be at least 64 tokens"),
        ]
        for ok, why in checks:
            if not ok:
                raise InvalidValue(why)
        return self


@dataclass(frozen=True)
class ModelSpec:
    """A model the picker can offer. `source` says where it was found."""

    id: str  # what goes into LoadOptions.model
    name: str
    source: Literal["bundled", "folder", "gguf", "hf-cache", "engine"]
    size_bytes: int | None = None
    note: str = ""


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    time_to_first_token: float | None = None  # seconds from submit to first text
    tokens_per_second: float | None = None  # decode speed after the first token
    finish_reason: FinishReason = "stop"
    queue_seconds: float = 0.0
    model: str = ""  # the model that wrote the reply (its LoadOptions.model), set by the engine


@dataclass(frozen=True)
class GenerationRequest:
    """One reply to generate: what every engine's stream() takes, and what crosses the pipe to the
    engine process. Built by the core (ChatService) after it applied the member's policy."""

    messages: tuple[Message, ...] = ()
    params: SamplingParams = field(default_factory=SamplingParams)
    prompt: str | None = None  # complete this raw text instead of the messages (/v1/completions)
    trim: bool = True  # False: a prompt past the window is PromptTooLong, never shortened (the API)
    owner: str = ""  # who asks (a household member's id): the queue takes turns fairly between owners
    # None: any model; else the engine checks, when the job starts, that the loaded model is one of
    # these (a load may have happened while the request waited) and raises ModelNotAllowed if not.
    allowed_models: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ContextFit:
    """What had to go so the conversation fits the model's context window."""

    dropped_messages: int = 0
    truncated_last_message: bool = False

    @property
    def trimmed(self) -> bool:
        return self.dropped_messages > 0 or self.truncated_last_message

    def describe(self) -> str:
        parts = []
        if self.dropped_messages == 1:
            parts.append("the oldest message was left out")
        elif self.dropped_messages:
            parts.append(f"the {self.dropped_messages} oldest messages were left out")
        if self.truncated_last_message:
            parts.append("the start of your message was cut")
        return "To fit the model's context window, " + " and ".join(parts) + "." if parts else ""


@dataclass(frozen=True)
class Chunk:
    """One streamed piece of a reply. The last chunk has `usage` set (and maybe finish info)."""

    text: str = ""
    usage: Usage | None = None
    fit: ContextFit | None = None
    queue_position: int | None = None  # set while waiting: requests ahead of this one
    error: str | None = None


@dataclass(frozen=True)
class LoadedInfo:
    """What the status line shows about the loaded model."""

    options: LoadOptions
    name: str
    device: str
    dtype: str
    quantization: str
    memory_bytes: int
    context_length: int
    load_seconds: float
    has_chat_template: bool
    extra: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        mem = self.memory_bytes / 2**20
        quant = "" if self.quantization == "none" else f" · {self.quantization}"
        return f"{self.name} · {self.device} · {self.dtype}{quant} · {mem:,.0f} MiB · {self.context_length:,}-token context"
