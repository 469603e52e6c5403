"""Answers from the household's documents: which libraries a reply uses, the search query, and the
retrieved passages put into the prompt within the context budget.

Owns: the library choice's forms (None, "all", ids), the query taken from the conversation, the
budget (the core has no tokenizer, so tokens are estimated high: `estimate_tokens`), and where passages
go in the messages. Invariants: a member's search is the LibraryService's, which answers only with
passages that member may use; passages are numbered [1]..[n] best first and the lowest ranked ones
are dropped first; they go at the end of the system message (Policy.request appends them to a locked
preset's prompt too), which the bundled SmolLM2-135M answers from correctly with greedy decoding
where the same block put just before the question in the user's message was ignored
(tests/test_rag_model.py); the engine never trims the system message.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Literal

from localchat.library.types import LibraryService, Passage
from localchat.store import Member
from localchat.types import Message

# None: no documents; "all": every library the member may use; a tuple: those ids (others ignored).
LibraryChoice = Literal["all"] | tuple[int, ...] | None

CHARS_PER_TOKEN = 3  # ASCII letters and spaces: conservative for English with BPE tokenizers (usually ~4)
# Digits and punctuation are often a token each (numbers, code); so is most of each non-ASCII character's
# UTF-8 (SmolLM2: Chinese ~1.6 tokens a character, an emoji 3): counted as its bytes less one.
SINGLE_TOKEN_ASCII = bytes(c for c in range(33, 127) if not chr(c).isalpha())
TOP_K = 5
FOLLOW_UP_WORDS = 6  # a last message this short ("and on Sundays?") is searched with the one before
TEMPLATE_TOKENS = 16  # per message: the chat template's role markers
MAX_PASSAGE_CHARS = 1500  # one chunk is far smaller; a runaway one is cut, not allowed to fill the window

INSTRUCTION = (
    "Answer the question using these passages. Cite the passage you used like [1]. "
    "If the passages do not hold the answer, say that the documents do not say."
)


def parse_choice(value: object) -> LibraryChoice:
    """A choice from a stored string, a request body or the page: "", "none", None -> None; "all" ->
    "all"; a list (or JSON list) of ids -> a tuple of ints. Anything else raises ValueError."""
    if value is None or value == "" or value == "none":
        return None
    if value == "all":
        return "all"
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError('libraries must be "all" or a list of library ids') from None
        if value == "all":
            return "all"
    if isinstance(value, list | tuple) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return tuple(dict.fromkeys(value)) or None
    raise ValueError('libraries must be "all" or a list of library ids')


def store_choice(choice: LibraryChoice) -> str:
    """The choice as conversations.libraries holds it: "", "all" or a JSON list."""
    if choice is None:
        return ""
    return "all" if choice == "all" else json.dumps(list(choice))


def estimate_tokens(text: str) -> int:
    """Tokens `text` takes, estimated high for any BPE tokenizer (prose, code, numbers, any script)."""
    ascii_part = text.encode("ascii", "ignore")
    letters = len(ascii_part.translate(None, SINGLE_TOKEN_ASCII))
    other_chars = len(text) - len(ascii_part)
    other_bytes = len(text.encode("utf-8", "replace")) - len(ascii_part)
    return -(-letters // CHARS_PER_TOKEN) + (len(ascii_part) - letters) + max(other_bytes - other_chars, other_chars)


def query_from(messages: Sequence[Message]) -> str:
    """What to search for: the last user message, with the one before it when it is a short follow-up."""
    users = [m.content.strip() for m in messages if m.role == "user" and m.content.strip()]
    if not users:
        return ""
    if len(users[-1].split()) < FOLLOW_UP_WORDS and len(users) > 1:
        return users[-2] + "\n" + users[-1]
    return users[-1]


def passage_block(passages: Sequence[Passage]) -> str:
    """The numbered passages and the instruction, as they precede the question."""
    lines = [f"[{n}] {p.citation()}\n{p.text.strip()[:MAX_PASSAGE_CHARS]}" for n, p in enumerate(passages, 1)]
    return "Passages from the household's documents:\n\n" + "\n\n".join(lines) + "\n\n" + INSTRUCTION


def with_documents(messages: Sequence[Message], documents: str) -> list[Message]:
    """The messages with `documents` (a passage block) at the end of the one system message, which
    is made when there is none (chat templates allow one system message, first)."""
    out = list(messages)
    if not documents:
        return out
    if out and out[0].role == "system":
        return [Message("system", (out[0].content.rstrip() + "\n\n" + documents).strip()), *out[1:]]
    return [Message("system", documents), *out]


def kept_by_engine(messages: Sequence[Message]) -> list[Message]:
    """What an engine that trims (fit_to_window) keeps at least: the system message and the last turn."""
    turns = [m for m in messages if m.role != "system"]
    return [m for m in messages if m.role == "system"] + turns[-1:]


def fit(
    messages: Sequence[Message], passages: Sequence[Passage], budget_tokens: int, *, trim: bool = False
) -> list[Passage]:
    """The best passages whose prompt fits `budget_tokens` (the window less the reply's room), the
    lowest ranked dropped first; none when even the conversation alone does not fit. `trim`: the
    engine drops the oldest turns to make room (the chat page), so only what it keeps is counted."""
    kept = list(passages)
    measured = kept_by_engine(messages) if trim else messages
    conversation = sum(estimate_tokens(m.content) + TEMPLATE_TOKENS for m in measured)
    while kept and conversation + estimate_tokens(passage_block(kept)) > budget_tokens:
        kept.pop()
    return kept


def retrieve(
    libraries: LibraryService,
    member: Member,
    choice: LibraryChoice,
    messages: Sequence[Message],
    budget_tokens: int,
    k: int = TOP_K,
    *,
    trim: bool = False,
) -> tuple[list[Passage], int]:
    """-> (the passages for a reply to `messages` under the member's choice, fitted to the budget;
    how many found were left out for want of room)."""
    query = query_from(messages)
    if choice is None or not query:
        return [], 0
    ids = None if choice == "all" else list(choice)
    if ids == []:
        return [], 0
    found = libraries.search(member, ids, query, k=k)
    kept = fit(messages, found, budget_tokens, trim=trim)
    return kept, len(found) - len(kept)
