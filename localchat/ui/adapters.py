"""Pure functions between Gradio values and core types; no Gradio import, so they unit-test fast.

Invariant: the conversation of one browser tab is a list of Turn dicts kept in gr.State; the
Chatbot shows `render(turns)`, one chat bubble per turn, so Chatbot event indexes are turn indexes.
"""

from __future__ import annotations

import html
from typing import NotRequired, TypedDict

from localchat.core import ReplyUpdate, stats_line
from localchat.store import Source, StoredMessage
from localchat.types import InvalidValue, SamplingParams
from localchat.ui.markdown import close_open_fence, safe_markdown

SAMPLING_FIELDS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "max_new_tokens",
    "seed",
    "stop",
)


class Turn(TypedDict):
    role: str  # "user" | "assistant"
    content: str
    stats: str  # the small line under a reply; "" for user turns
    sources: NotRequired[list[dict]]  # a reply's numbered sources: {chunk_id, document, where}


def to_turn(m: StoredMessage) -> Turn:
    turn = Turn(role=m.role, content=m.content, stats=m.stats)
    if m.sources:
        turn["sources"] = [{"chunk_id": s.chunk_id, "document": s.document, "where": s.where} for s in m.sources]
    return turn


def to_history(turns: list[Turn]) -> list[StoredMessage]:
    return [
        StoredMessage(
            t["role"],
            t["content"],
            t["stats"],
            tuple(
                Source(int(s["chunk_id"]), str(s["document"]), str(s.get("where", ""))) for s in t.get("sources", [])
            ),
        )
        for t in turns
    ]


def sources_line(sources: list[dict]) -> str:
    """The numbered sources under a reply, each a link that opens the passage in a new tab."""
    links = []
    for n, s in enumerate(sources, 1):
        where = f", {s['where']}" if s.get("where") else ""
        label = html.escape(f"[{n}] {s['document']}{where}")
        links.append(
            f'<a href="/library/passage/{int(s["chunk_id"])}" target="_blank" rel="noopener" class="lc-source">{label}</a>'
        )
    return "<sub>Sources: " + " · ".join(links) + "</sub>" if links else ""


def render(turns: list[Turn]) -> list[dict[str, str]]:
    """Chatbot value: each message as safe Markdown (its HTML shown as text, images only from
    this origin), each reply followed by its stats line in small print."""
    shown = []
    for t in turns:
        content = safe_markdown(t["content"])
        if t["role"] == "assistant" and t.get("sources"):
            cited = sources_line(t["sources"])
            content = f"{close_open_fence(content)}\n\n{cited}" if content else cited
        if t["role"] == "assistant" and t["stats"]:
            stats = html.escape(t["stats"])
            content = f"{close_open_fence(content)}\n\n<sub>{stats}</sub>" if content else f"<sub>{stats}</sub>"
        shown.append({"role": t["role"], "content": content})
    return shown


def apply_update(turns: list[Turn], update: ReplyUpdate) -> list[Turn]:
    """Put a streamed update into the last (assistant) turn."""
    last: Turn = {"role": "assistant", "content": update.text, "stats": stats_line(update)}
    if update.sources:
        last["sources"] = [{"chunk_id": p.chunk_id, "document": p.document, "where": p.where} for p in update.sources]
    return [*turns[:-1], last]


def parse_stop(text: str) -> tuple[str, ...]:
    """One stop string per line; `\\n` and `\\t` may be typed as escapes."""
    out = []
    for line in (text or "").splitlines():
        if line.strip():
            out.append(line.replace("\\n", "\n").replace("\\t", "\t"))
    return tuple(out)


def format_stop(stop: tuple[str, ...]) -> str:
    return "\n".join(s.replace("\n", "\\n").replace("\t", "\\t") for s in stop)


def sampling_from_ui(values: dict[str, object]) -> SamplingParams:
    """Slider/textbox values -> validated SamplingParams; raises InvalidValue with a clear line."""
    try:
        seed_raw = values.get("seed")
        seed = None if seed_raw in (None, "", -1) else int(seed_raw)  # type: ignore[arg-type]
        return SamplingParams(
            temperature=float(values["temperature"]),  # type: ignore[arg-type]
            top_p=float(values["top_p"]),  # type: ignore[arg-type]
            top_k=int(values["top_k"]),  # type: ignore[arg-type]
            min_p=float(values["min_p"]),  # type: ignore[arg-type]
            repetition_penalty=float(values["repetition_penalty"]),  # type: ignore[arg-type]
            max_new_tokens=int(values["max_new_tokens"]),  # type: ignore[arg-type]
            seed=seed,
            stop=parse_stop(str(values.get("stop") or "")),
        ).validate()
    except (TypeError, ValueError, KeyError) as exc:
        if isinstance(exc, InvalidValue):
            raise
        raise InvalidValue(f"a sampling value is not a number: {exc}") from exc


def sampling_to_ui(params: SamplingParams) -> list[object]:
    return [
        params.temperature,
        params.top_p,
        params.top_k,
        params.min_p,
        params.repetition_penalty,
        params.max_new_tokens,
        -1 if params.seed is None else params.seed,
        format_stop(params.stop),
    ]


def last_user_index(turns: list[Turn], upto: int) -> int | None:
    for i in range(min(upto, len(turns) - 1), -1, -1):
        if turns[i]["role"] == "user":
            return i
    return None
