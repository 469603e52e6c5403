"""Splitting sections into chunks sized for the embedding model, by structure.

Invariants: a chunk never spans two sections (a heading or a page starts a new chunk); paragraphs are
packed whole up to MAX_CHARS (all-MiniLM-L6-v2 reads 256 word pieces, about 1,000 characters); a
paragraph too long for one chunk is cut at sentences, and a sentence too long at words; each chunk
after the first of a section begins with the tail of the previous one (OVERLAP_CHARS at most), so a
fact split across the boundary is whole in one of them. No text is dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from localchat.library.parse import Section

MAX_CHARS = 900
OVERLAP_CHARS = 200
MAX_HEADING_CHARS = 200  # a heading path longer than this (a "heading" that is a whole paragraph) is cut
_SENTENCE_END = re.compile(r"(?<=[.!?…。])\s+")


@dataclass(frozen=True)
class Chunk:
    ordinal: int
    heading: str  # "Setup › Wi-Fi", or ""
    page: int | None
    text: str

    @property
    def where(self) -> str:
        return where(self.heading, self.page)


def where(heading: str, page: int | None) -> str:
    """What a citation shows after the file name: "page 3", "Setup › Wi-Fi", or both."""
    parts = ([f"page {page}"] if page else []) + ([heading] if heading else [])
    return ", ".join(parts)


def _pieces(paragraph: str, limit: int) -> list[str]:
    """A paragraph as pieces of at most `limit` characters: whole if it fits, else sentences, else words."""
    if len(paragraph) <= limit:
        return [paragraph]
    out: list[str] = []
    for sentence in _SENTENCE_END.split(paragraph):
        if len(sentence) <= limit:
            out.append(sentence)
            continue
        line = ""
        for word in sentence.split():
            while len(word) > limit:  # a "word" longer than a chunk (a URL, base64): cut it
                if line:
                    out.append(line)
                    line = ""
                out.append(word[:limit])
                word = word[limit:]
            if line and len(line) + 1 + len(word) > limit:
                out.append(line)
                line = ""
            line = f"{line} {word}" if line else word
        if line:
            out.append(line)
    return out


def _tail(pieces: list[str], limit: int) -> list[str]:
    """The last pieces (or sentences of the last piece) of a chunk, within `limit` characters."""
    last = pieces[-1]
    if len(last) <= limit:
        return [last]
    sentences = _SENTENCE_END.split(last)
    kept: list[str] = []
    for sentence in reversed(sentences[1:]):  # never the whole piece again
        if sum(len(s) + 1 for s in kept) + len(sentence) > limit:
            break
        kept.insert(0, sentence)
    return [" ".join(kept)] if kept else []


def chunk_section(section: Section, max_chars: int = MAX_CHARS, overlap: int = OVERLAP_CHARS) -> list[str]:
    pieces = [
        piece
        for raw in re.split(r"\n\s*\n", section.text)
        if (paragraph := " ".join(raw.split()))
        for piece in _pieces(paragraph, max_chars - overlap - 2)
    ]
    chunks: list[list[str]] = []
    current: list[str] = []
    fresh = False  # the current chunk holds new text, not only the carried-over tail
    for piece in pieces:
        size = sum(len(p) + 2 for p in current)
        if current and fresh and size + len(piece) > max_chars:
            chunks.append(current)
            current, fresh = _tail(current, overlap), False
        current.append(piece)
        fresh = True
    if current and fresh:
        chunks.append(current)
    return ["\n\n".join(c) for c in chunks]


def chunk_sections(
    sections: Iterable[Section], max_chars: int = MAX_CHARS, overlap: int = OVERLAP_CHARS
) -> list[Chunk]:
    out: list[Chunk] = []
    for section in sections:
        heading = " › ".join(section.heading)
        if len(heading) > MAX_HEADING_CHARS:  # it is embedded and shown with every chunk of the section
            heading = heading[: MAX_HEADING_CHARS - 1].rstrip() + "…"
        for text in chunk_section(section, max_chars, overlap):
            out.append(Chunk(len(out), heading, section.page, text))
    return out
