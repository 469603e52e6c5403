"""Reading a file into sections: its text with where it sits (heading path, page).

Owns the formats a library accepts and the limits on reading one file. Invariant: `read(path)` returns
at least one section with text (MAX_TEXT_CHARS at most) or raises UnreadableFile with one line a person
can act on; a file is only ever read, never executed or written; no file over MAX_FILE_BYTES is read; an
archive (DOCX, EPUB) is opened only when its members' declared sizes add up to UNPACKED_LIMIT at most
(zipfile never inflates a member past its declared size), and an EPUB reads at most READ_LIMIT per part
and UNPACKED_LIMIT in all.
"""

from __future__ import annotations

import posixpath
import re
import zipfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from xml.etree import ElementTree

from localchat.library.types import UnreadableFile
from localchat.text import clean_text

FORMATS = {
    ".pdf": "PDF",
    ".docx": "Word (DOCX)",
    ".md": "Markdown",
    ".markdown": "Markdown",
    ".txt": "plain text",
    ".text": "plain text",
    ".html": "HTML",
    ".htm": "HTML",
    ".xhtml": "HTML",
    ".epub": "EPUB",
}
MAX_FILE_BYTES = 256 * 1024 * 1024  # one file, as uploaded or found in a folder
MAX_TEXT_CHARS = 32_000_000  # text taken from one file (~8M tokens to embed): more is refused, not cut
READ_LIMIT = 64 * 1024 * 1024  # bytes read from one archive member (a zip bomb stops here)
UNPACKED_LIMIT = 512 * 1024 * 1024  # an archive's members, declared sizes added up
_TEXT_BYTES = 4 * MAX_TEXT_CHARS  # a text file larger than this cannot decode to MAX_TEXT_CHARS or fewer
TOO_MUCH_TEXT = f"too much text (a library takes at most {MAX_TEXT_CHARS // 1_000_000} million characters a file)"


@dataclass(frozen=True)
class Section:
    """Text under one heading path (or on one PDF page); paragraphs separated by blank lines."""

    heading: tuple[str, ...]
    page: int | None
    text: str


def supported(name: str) -> bool:
    return Path(name).suffix.lower() in FORMATS


def formats_line() -> str:
    return ", ".join(dict.fromkeys(FORMATS.values()))


def read(path: Path, name: str | None = None) -> list[Section]:
    """The sections of the file at `path`; `name` (the user's file name) picks the format."""
    name = name or Path(path).name
    suffix = Path(name).suffix.lower()
    if suffix not in FORMATS:
        raise UnreadableFile(f"this kind of file is not supported (use {formats_line()})")
    reader = {".pdf": _pdf, ".docx": _docx, ".epub": _epub}.get(suffix)
    try:
        size = Path(path).stat().st_size
        if size > MAX_FILE_BYTES:
            raise UnreadableFile(f"the file is larger than {MAX_FILE_BYTES >> 20} MB")
        if reader is None:
            if size > _TEXT_BYTES:
                raise UnreadableFile(TOO_MUCH_TEXT)
            text = decode(Path(path).read_bytes(), name)
            sections = (
                html_sections(text)
                if suffix in (".html", ".htm", ".xhtml")
                else (markdown_sections(text) if suffix in (".md", ".markdown") else [Section((), None, text)])
            )
        else:
            sections = reader(Path(path))
    except UnreadableFile:
        raise
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, ElementTree.ParseError) as exc:
        raise UnreadableFile(f"could not be read ({_one_line(exc)})") from exc
    except Exception as exc:  # a parser's own error type (pypdf, python-docx): the file is damaged
        raise UnreadableFile(f"the file looks damaged ({_one_line(exc)})") from exc
    _check_length(sections)
    sections = [Section(s.heading, s.page, clean_text(s.text).strip()) for s in sections]
    sections = [s for s in sections if s.text]
    if not sections:
        raise UnreadableFile("no text found in it (a scanned document needs OCR first)")
    return sections


def _check_length(sections: list[Section]) -> None:
    if sum(len(s.text) for s in sections) > MAX_TEXT_CHARS:
        raise UnreadableFile(TOO_MUCH_TEXT)


def _open_zip(path: Path) -> zipfile.ZipFile:
    """The archive, once its members' declared sizes are known to fit (a zip bomb is refused unopened)."""
    archive = zipfile.ZipFile(path)
    if sum(info.file_size for info in archive.infolist()) > UNPACKED_LIMIT:
        archive.close()
        raise UnreadableFile(f"it unpacks to more than {UNPACKED_LIMIT >> 20} MB")
    return archive


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:160]


def decode(data: bytes, name: str) -> str:
    """Text from bytes: UTF-8 (with or without BOM), UTF-16 with a BOM, else Windows-1252; bytes that
    are not text at all (NULs, many control characters) make it UnreadableFile."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", errors="replace")
    head = data[:8192]
    controls = sum(1 for b in head if b < 9 or 13 < b < 32)
    if b"\x00" in head or (head and controls / len(head) > 0.05):
        raise UnreadableFile("this is not a text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


# -- PDF ---------------------------------------------------------------------------------------------
def _pdf(path: Path) -> list[Section]:
    from pypdf import PdfReader

    reader = PdfReader(path)
    if reader.is_encrypted:
        try:
            opened = reader.decrypt("")  # many PDFs are "encrypted" with an empty user password
        except Exception:  # noqa: BLE001  (an unknown cipher)
            opened = 0
        if not opened:
            raise UnreadableFile("the PDF is password-protected")
    sections, length = [], 0
    for number, page in enumerate(reader.pages, start=1):
        sections.append(Section((), number, page.extract_text() or ""))
        length += len(sections[-1].text)
        if length > MAX_TEXT_CHARS:  # stop reading here, not after every page
            raise UnreadableFile(TOO_MUCH_TEXT)
    return sections


# -- DOCX ---------------------------------------------------------------------------------------------
def _docx(path: Path) -> list[Section]:
    import docx
    from docx.table import Table

    with _open_zip(path):
        pass  # python-docx loads every part into memory: their sizes are checked first
    document = docx.Document(str(path))
    builder = _Builder()
    for block in document.iter_inner_content():
        if isinstance(block, Table):
            for row in block.rows:
                cells = list(dict.fromkeys(cell.text.strip() for cell in row.cells))  # merged cells repeat
                builder.paragraph(" | ".join(c for c in cells if c))
            continue
        style = (block.style.name if block.style is not None else "") or ""
        level = 1 if style == "Title" else int(m.group(1)) if (m := re.fullmatch(r"Heading (\d)", style)) else 0
        if level and block.text.strip():
            builder.heading(level, block.text)
        else:
            builder.paragraph(block.text)
    return builder.sections()


class _Builder:
    """Collects paragraphs under the current heading path."""

    def __init__(self) -> None:
        self.path: list[tuple[int, str]] = []
        self.done: list[Section] = []
        self.paragraphs: list[str] = []

    def heading(self, level: int, text: str) -> None:
        self.flush()
        self.path = [(lv, t) for lv, t in self.path if lv < level] + [(level, " ".join(text.split()))]

    def paragraph(self, text: str) -> None:
        if text := text.strip():
            self.paragraphs.append(text)

    def flush(self) -> None:
        if self.paragraphs:
            self.done.append(Section(tuple(t for _, t in self.path), None, "\n\n".join(self.paragraphs)))
            self.paragraphs = []

    def sections(self) -> list[Section]:
        self.flush()
        return self.done


# -- Markdown -----------------------------------------------------------------------------------------
_ATX = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")


def markdown_sections(text: str) -> list[Section]:
    builder, lines, fenced = _Builder(), [], False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        if not fenced and (m := _ATX.match(line)):
            builder.paragraph("\n".join(lines))
            lines = []
            builder.heading(len(m.group(1)), m.group(2))
        elif not fenced and not line.strip():
            builder.paragraph("\n".join(lines))
            lines = []
        else:
            lines.append(line)
    builder.paragraph("\n".join(lines))
    return builder.sections()


# -- HTML ---------------------------------------------------------------------------------------------
_SKIP = {"script", "style", "nav", "head", "template", "noscript", "svg", "iframe", "object", "button", "select"}
_BLOCK = {
    "p", "div", "br", "li", "ul", "ol", "tr", "table", "section", "article", "blockquote", "pre", "dd", "dt",
    "figcaption", "header", "footer", "main", "aside", "hr", "td", "th", "body",
}  # fmt: skip
_VOID = {"br", "hr", "img", "meta", "link", "input", "area", "base", "col", "embed", "source", "track", "wbr"}


class _HtmlText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.builder = _Builder()
        self.skipping: list[str] = []
        self.level = 0
        self.parts: list[str] = []

    def _end_block(self) -> None:
        text = " ".join("".join(self.parts).split())
        self.parts = []
        if self.level:
            if text:
                self.builder.heading(self.level, text)
            self.level = 0
        else:
            self.builder.paragraph(text)

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in _SKIP and tag not in _VOID:
            self.skipping.append(tag)
        elif not self.skipping and (re.fullmatch(r"h[1-6]", tag) or tag in _BLOCK):
            self._end_block()
            if tag[0] == "h" and tag[1:].isdigit():
                self.level = int(tag[1])

    def handle_endtag(self, tag: str) -> None:
        if self.skipping:
            if tag == self.skipping[-1]:
                self.skipping.pop()
        elif re.fullmatch(r"h[1-6]", tag) or tag in _BLOCK:
            self._end_block()

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.parts.append(data)


def html_sections(text: str) -> list[Section]:
    parser = _HtmlText()
    parser.feed(text)
    parser.close()
    parser._end_block()
    return parser.builder.sections()


# -- EPUB ---------------------------------------------------------------------------------------------
_CONTAINER = "{urn:oasis:names:tc:opendocument:xmlns:container}"
_OPF = "{http://www.idpf.org/2007/opf}"


def _member(archive: zipfile.ZipFile, name: str) -> bytes:
    with archive.open(name) as handle:
        data = handle.read(READ_LIMIT + 1)
    if len(data) > READ_LIMIT:
        raise UnreadableFile(f"a part of the book is too large ({name})")
    return data


def _epub(path: Path) -> list[Section]:
    with _open_zip(path) as archive:
        container = ElementTree.fromstring(_member(archive, "META-INF/container.xml"))
        rootfile = container.find(f".//{_CONTAINER}rootfile")
        if rootfile is None:
            raise UnreadableFile("the EPUB has no package file")
        opf_path = rootfile.get("full-path", "")
        opf = ElementTree.fromstring(_member(archive, opf_path))
        base = posixpath.dirname(opf_path)
        manifest = {item.get("id"): item.get("href", "") for item in opf.iter(f"{_OPF}item")}
        sections: list[Section] = []
        seen: set[str] = set()
        for ref in opf.iter(f"{_OPF}itemref"):
            href = manifest.get(ref.get("idref"))
            if not href:
                continue
            part = posixpath.normpath(posixpath.join(base, href.split("#")[0]))
            if part in seen:
                continue  # a spine naming one part many times would read it many times
            seen.add(part)
            try:
                data = _member(archive, part)
            except KeyError:
                continue  # a spine entry the book does not hold: read the rest
            sections += html_sections(decode(data, part))
            _check_length(sections)
    return sections
