"""Text from people and models made safe for Gradio's Markdown: Markdown, code and LaTeX, never HTML.

Invariant: what `safe_markdown` returns contains no HTML of the text's own (every `<` and `&`
outside code and LaTeX is an entity; inline code becomes an escaped <code> element), and no image
that loads from another host (only `![..](/path)` on our own origin stays an image).

It mirrors how Gradio's front end reads a message: LaTeX between the component's delimiters is cut
out first and escaped by Gradio itself, so it is left alone here (the delimiters must be those of
the component showing the text); fenced code is escaped by Markdown; everything else is escaped here.
"""

from __future__ import annotations

import re

Delimiters = tuple[tuple[str, str], ...]
# The Chatbot's LaTeX delimiters (left, right); pass them to the component too (see latex_config).
LATEX_DELIMITERS: Delimiters = (("$$", "$$"), ("\\(", "\\)"), ("\\[", "\\]"))
GRADIO_MARKDOWN_LATEX: Delimiters = (("$$", "$$"),)  # gr.Markdown's default
DISPLAY = {"$$", "\\["}

_FENCE = re.compile(r"^( {0,3})(`{3,}|~{3,})(.*)$")
_CLOSING = r"^ {{0,3}}{fence}{char}* *\t*$"
_CODE_SPAN = re.compile(r"(?<![`\\])(`+)(?!`)((?:(?!\n[ \t]*\n).)+?)(?<!`)\1(?!`)", re.S)
# An image kept as an image: a path on this origin (no scheme, no //, no backslash, no entity).
_OWN_IMAGE = re.compile(r"!\[([^\[\]\n]*)\]\((/(?![/\\])[A-Za-z0-9_./~%+=?-]*)\)")
_AUTOLINK = re.compile(r"&lt;(https?://[^\s<>&]+)>")  # <https://...> is a link, not HTML: kept
_CODE_ENTITIES = {c: f"&#{ord(c)};" for c in "&<>\"'`*_~[]()!\\$|#:"}


def latex_config(delimiters: Delimiters = LATEX_DELIMITERS) -> list[dict]:
    """The `latex_delimiters` value for gr.Chatbot / gr.Markdown matching `delimiters`."""
    return [{"left": left, "right": right, "display": left in DISPLAY} for left, right in delimiters]


def safe_markdown(text: str, latex: Delimiters = LATEX_DELIMITERS) -> str:
    """`text` as Markdown that renders every HTML tag in it as visible text."""
    pieces: list[str] = []

    def hold(match: re.Match) -> str:  # cut LaTeX out as Gradio does, in the same order
        pieces.append(match.group(0))
        return f"\x00{len(pieces) - 1}\x00"

    held = text.replace("\x00", "")
    for left, right in latex:
        held = re.sub(f"{re.escape(left)}([\\s\\S]+?){re.escape(right)}", hold, held)
    out = [part if kind != PROSE else _escape_prose(part) for kind, part in _split_fences(held)]
    return re.sub("\x00(\\d+)\x00", lambda m: pieces[int(m.group(1))], "".join(out))


def close_open_fence(markdown: str) -> str:
    """`markdown` with a fenced code block left open (a reply cut short) closed, so what follows
    it (the stats line) is not shown as code."""
    pieces = _split_fences(markdown)
    if not pieces or pieces[-1][0] != OPEN:
        return markdown
    fence = _FENCE.match(pieces[-1][1].split("\n", 1)[0])
    return markdown.rstrip("\n") + "\n" + (fence.group(2) if fence else "```")


PROSE, CODE, OPEN = "prose", "code", "open"


def _split_fences(text: str) -> list[tuple[str, str]]:
    """(PROSE | CODE | OPEN, text) pieces; OPEN is a fence never closed, code to the end. A fence
    counts as code only where Markdown must read it so: every line inside it is indented at least
    as much as its opening line (else a list item it sits in may end early, and what follows it
    is no longer code)."""
    lines = text.split("\n")
    parts: list[tuple[str, str]] = []
    prose: list[str] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None or (opening.group(2)[0] == "`" and "`" in opening.group(3)):
            prose.append(lines[i])
            i += 1
            continue
        indent, fence = len(opening.group(1)), opening.group(2)
        closing = re.compile(_CLOSING.format(fence=re.escape(fence), char=re.escape(fence[0])))
        end, kind = i + 1, OPEN
        while end < len(lines):
            if closing.match(lines[end]):
                kind = CODE
                break
            if lines[end].strip() and len(lines[end]) - len(lines[end].lstrip(" ")) < indent:
                kind = PROSE
                break
            end += 1
        if kind == PROSE:
            prose.append(lines[i])
            i += 1
            continue
        if prose:
            parts.append((PROSE, "\n".join(prose) + "\n"))
            prose = []
        last = min(end, len(lines) - 1)
        parts.append((kind, "\n".join(lines[i : last + 1]) + ("\n" if last + 1 < len(lines) else "")))
        i = last + 1
    if prose:
        parts.append((PROSE, "\n".join(prose)))
    return parts


def _escape_prose(text: str) -> str:
    """Outside fenced code: inline code spans become escaped <code> elements; everything else has
    its `&` and `<` escaped and its images from elsewhere turned into plain text."""
    out, last = [], 0
    for span in _CODE_SPAN.finditer(text):
        out.append(_escape_text(text[last : span.start()]))
        out.append(_code_element(span.group(2)))
        last = span.end()
    out.append(_escape_text(text[last:]))
    return "".join(out)


def _code_element(code: str) -> str:
    code = code.replace("\n", " ")
    if code.startswith(" ") and code.endswith(" ") and code.strip():
        code = code[1:-1]
    return "<code>" + "".join(_CODE_ENTITIES.get(c, c) for c in code) + "</code>"


def _escape_text(text: str) -> str:
    text = text.replace("&", "&amp;").replace("<", "&lt;")
    kept: list[str] = []

    def keep(match: re.Match) -> str:
        kept.append(match.group(0))
        return f"\x00i{len(kept) - 1}\x00"

    text = _AUTOLINK.sub(r"<\1>", _OWN_IMAGE.sub(keep, text))
    text = text.replace("![", "!&#91;")  # an image from elsewhere shows as the text of its link
    return re.sub("\x00i(\\d+)\x00", lambda m: kept[int(m.group(1))], text)
