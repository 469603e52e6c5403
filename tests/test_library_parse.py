"""Reading each format into sections, chunking by structure, and the FTS query built from user text:
real files written in the test, a real SQLite file for the FTS checks. No model needed."""

from __future__ import annotations

import sqlite3
import zipfile
from pathlib import Path

import pytest
from library_files import write_docx, write_encrypted_pdf, write_epub, write_pdf

from localchat.library import parse
from localchat.library.chunk import MAX_CHARS, MAX_HEADING_CHARS, OVERLAP_CHARS, chunk_section, chunk_sections
from localchat.library.index import fts_query, fuse
from localchat.library.parse import Section, read
from localchat.library.types import UnreadableFile
from localchat.store.db import Database


def test_pdf_pages_are_sections_with_page_numbers(tmp_path: Path) -> None:
    pdf = write_pdf(tmp_path / "m.pdf", [["Setup guide", "Plug in the oven."], ["Cleaning (monthly)", "Use soap."]])
    sections = read(pdf)
    assert [s.page for s in sections] == [1, 2]
    assert "Plug in the oven." in sections[0].text and "Cleaning (monthly)" in sections[1].text


def test_an_encrypted_or_corrupt_pdf_is_unreadable_with_a_reason(tmp_path: Path) -> None:
    plain = write_pdf(tmp_path / "plain.pdf", [["secret recipe"]])
    with pytest.raises(UnreadableFile, match="password"):
        read(write_encrypted_pdf(tmp_path / "locked.pdf", plain))
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.4\n" + bytes(range(256)) * 4)
    with pytest.raises(UnreadableFile):
        read(broken)
    empty = write_pdf(tmp_path / "scan.pdf", [[]])
    with pytest.raises(UnreadableFile, match="no text"):
        read(empty)


def test_docx_headings_paths_and_table_text(tmp_path: Path) -> None:
    path = write_docx(
        tmp_path / "w.docx",
        [("Title", "Oven"), ("", "Intro words."), ("Heading 1", "Setup"), ("Heading 2", "Wi-Fi"), ("", "Hold WPS.")],
        table=[["Code", "Meaning"], ["E24", "not draining"]],
    )
    sections = read(path)
    assert [s.heading for s in sections] == [("Oven",), ("Setup", "Wi-Fi")]  # a Title is level 1, as Heading 1
    assert "Hold WPS." in sections[1].text and "E24 | not draining" in sections[1].text


def test_markdown_headings_nest_and_code_fences_are_not_headings(tmp_path: Path) -> None:
    path = tmp_path / "n.md"
    path.write_text("intro\n\n# A\n\ntext a\n\n## B\n\n```\n# not a heading\n```\n\n# C\n\ntext c\n")
    sections = read(path)
    assert [(s.heading, s.text.splitlines()[0]) for s in sections] == [
        ((), "intro"),
        (("A",), "text a"),
        (("A", "B"), "```"),
        (("C",), "text c"),
    ]
    assert "# not a heading" in sections[2].text


def test_html_headings_and_skipped_script_style_nav(tmp_path: Path) -> None:
    path = tmp_path / "p.html"
    path.write_text(
        "<html><head><title>T</title><style>.x{}</style></head><body><nav>Menu Home</nav>"
        "<h1>Boiler</h1><p>Top up to &lt;1.5&gt; bar.</p><script>alert('x')</script><h2>Bleeding</h2>"
        "<p>Each <b>autumn</b>.</p></body></html>"
    )
    sections = read(path)
    assert [s.heading for s in sections] == [("Boiler",), ("Boiler", "Bleeding")]
    assert sections[0].text == "Top up to <1.5> bar." and sections[1].text == "Each autumn."
    assert "Menu" not in str(sections) and "alert" not in str(sections)


def test_epub_follows_the_spine_with_chapter_headings(tmp_path: Path) -> None:
    path = write_epub(tmp_path / "b.epub", [("One", "First words."), ("Two", "Second words.")])
    sections = read(path)
    assert [(s.heading, s.text) for s in sections] == [(("One",), "First words."), (("Two",), "Second words.")]
    bad = tmp_path / "bad.epub"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(UnreadableFile):
        read(bad)


def test_text_encodings_and_binary_junk(tmp_path: Path) -> None:
    (tmp_path / "u.txt").write_bytes("Café crème\n\nsecond".encode())
    (tmp_path / "w.txt").write_bytes("Café crème".encode("cp1252"))
    (tmp_path / "b.txt").write_bytes("\ufeffbom text".encode())
    (tmp_path / "s.txt").write_bytes("utf sixteen".encode("utf-16"))
    (tmp_path / "junk.txt").write_bytes(bytes(range(256)) * 8)
    assert read(tmp_path / "u.txt")[0].text == "Café crème\n\nsecond"
    assert read(tmp_path / "w.txt")[0].text == "Café crème"
    assert read(tmp_path / "b.txt")[0].text == "bom text"
    assert read(tmp_path / "s.txt")[0].text == "utf sixteen"
    with pytest.raises(UnreadableFile, match="not a text file"):
        read(tmp_path / "junk.txt")
    with pytest.raises(UnreadableFile, match="not supported"):
        read(tmp_path / "u.txt", "u.exe")


def test_chunks_pack_paragraphs_overlap_and_never_cross_sections() -> None:
    # ~330 characters each, three sentences: a chunk holds two, and the next opens with sentences of the last
    paragraphs = [
        " ".join(f"Paragraph {i} sentence {j} has " + "word " * 18 + "end." for j in range(3)) for i in range(12)
    ]
    sections = [Section(("A",), None, "\n\n".join(paragraphs)), Section(("B",), 4, "Short one.")]
    chunks = chunk_sections(sections)
    assert all(len(c.text) <= MAX_CHARS for c in chunks)
    assert chunks[-1].text == "Short one." and chunks[-1].where == "page 4, B"
    a = [c for c in chunks if c.heading == "A"]
    assert len(a) > 3 and all(c.where == "A" for c in a)
    for previous, chunk in zip(a, a[1:], strict=False):  # each chunk opens with the tail of the previous
        first = chunk.text.split("\n\n")[0]
        assert previous.text.endswith(first) and 0 < len(first) <= OVERLAP_CHARS
        assert first not in paragraphs  # sentences of it, not the whole paragraph again
    joined = " ".join(c.text for c in a)
    assert all(p in joined for p in paragraphs)  # nothing dropped
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))


def test_a_huge_paragraph_is_cut_at_sentences_then_words() -> None:
    sentence = "This sentence has some words in it. "
    text = sentence * 100 + "x" * 2500
    pieces = chunk_section(Section((), None, text))
    assert all(len(p) <= MAX_CHARS for p in pieces)
    assert "".join(pieces).count("x") >= 2500
    assert sum(p.count("This sentence") for p in pieces) >= 100


@pytest.mark.parametrize(
    "text",
    [
        'say "hello" to AND OR NOT',
        "NEAR(oven bread, 3)",
        "(unbalanced",
        "wild* card^ -minus +plus col:umn {x} [y]",
        "' ; DROP TABLE chunks; --",
        '"""',
        "",
    ],
)
def test_fts_query_never_lets_user_text_be_syntax(tmp_path: Path, text: str) -> None:
    db = Database(tmp_path / "h.db")
    db.execute("INSERT INTO members (id, name, role, created_at) VALUES (1, 'a', 'admin', 0)")
    db.execute("INSERT INTO libraries (id, name, owner_id, created_at) VALUES (1, 'l', 1, 0)")
    db.execute(
        "INSERT INTO documents (id, library_id, name, path, size_bytes, sha256, status, added_at) "
        "VALUES (1, 1, 'd', 'p', 1, 's', 'ready', 0)"
    )
    db.execute(
        "INSERT INTO chunks (document_id, library_id, ordinal, text) VALUES "
        "(1, 1, 0, 'say hello to the oven bread near the wild card column')"
    )
    query = fts_query(text)
    if not query:
        assert text.strip('"') == ""
        return
    rows = db.query("SELECT rowid FROM chunks_fts WHERE chunks_fts MATCH ?", (query,))  # no syntax error
    assert isinstance(rows, list)
    assert db.query_one("SELECT count(*) FROM chunks")[0] == 1


def test_fts_query_shape_and_fusion() -> None:
    assert fts_query('Oven "bread" oven') == '"oven" OR "bread"'
    with pytest.raises(sqlite3.OperationalError):  # the raw text would have been syntax: the quoting matters
        sqlite3.connect(":memory:").execute("CREATE VIRTUAL TABLE t USING fts5(x)").connection.execute(
            "SELECT * FROM t WHERE t MATCH ?", ("(unbalanced",)
        ).fetchall()
    fused = fuse([1, 2, 3], [3, 4])
    assert fused[0][0] == 3 and {i for i, _ in fused} == {1, 2, 3, 4}
    assert fused[0][1] == pytest.approx(1 / 63 + 1 / 61)


def _declare_size(path: Path, member: str, size: int) -> Path:
    """Rewrite the central directory so `member` claims `size` bytes unpacked (what a zip bomb declares)."""
    data = bytearray(path.read_bytes())
    at = data.find(b"PK\x01\x02")
    while at != -1:
        name_len = int.from_bytes(data[at + 28 : at + 30], "little")
        if data[at + 46 : at + 46 + name_len].decode() == member:
            data[at + 24 : at + 28] = size.to_bytes(4, "little")
        at = data.find(b"PK\x01\x02", at + 4)
    path.write_bytes(bytes(data))
    return path


def test_an_archive_that_declares_too_much_is_refused_unopened(tmp_path: Path) -> None:
    docx = write_docx(tmp_path / "bomb.docx", [("Normal", "Hello there.")])
    assert read(docx)  # sound as written
    with pytest.raises(UnreadableFile, match="unpacks to more than"):
        read(_declare_size(docx, "word/document.xml", parse.UNPACKED_LIMIT + 1))
    epub = write_epub(tmp_path / "bomb.epub", [("One", "First words.")])
    with pytest.raises(UnreadableFile, match="unpacks to more than"):
        read(_declare_size(epub, "OEBPS/text/ch01.xhtml", parse.UNPACKED_LIMIT + 1))


def test_an_epub_spine_naming_one_part_many_times_reads_it_once(tmp_path: Path) -> None:
    path = write_epub(tmp_path / "b.epub", [("One", "First words.")])
    with zipfile.ZipFile(path) as book:
        parts = {name: book.read(name) for name in book.namelist()}
    opf = parts["OEBPS/content.opf"].decode()
    parts["OEBPS/content.opf"] = opf.replace('<itemref idref="c0"/>', '<itemref idref="c0"/>' * 1000).encode()
    with zipfile.ZipFile(path, "w") as book:
        for name, data in parts.items():
            book.writestr(name, data)
    assert [s.text for s in read(path)] == ["First words."]


def test_too_large_a_file_or_too_much_text_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(parse, "MAX_TEXT_CHARS", 1000)
    monkeypatch.setattr(parse, "_TEXT_BYTES", 4000)
    monkeypatch.setattr(parse, "MAX_FILE_BYTES", 100_000)
    fine = tmp_path / "fine.txt"
    fine.write_text("word " * 150)
    assert read(fine)
    long = tmp_path / "long.md"
    long.write_text("word " * 300)
    with pytest.raises(UnreadableFile, match="too much text"):
        read(long)
    huge = tmp_path / "huge.txt"
    huge.write_text("word " * 2000)  # over _TEXT_BYTES: not even read
    with pytest.raises(UnreadableFile, match="too much text"):
        read(huge)
    pages = write_pdf(tmp_path / "p.pdf", [[f"Page {n} " + "words " * 60] for n in range(10)])
    with pytest.raises(UnreadableFile, match="too much text"):
        read(pages)
    book = write_epub(tmp_path / "b.epub", [(f"Ch {n}", "words " * 60) for n in range(10)])
    with pytest.raises(UnreadableFile, match="too much text"):
        read(book)
    big = tmp_path / "big.pdf"
    big.write_bytes(b"%PDF-1.4\n" + b"0" * 100_000)
    with pytest.raises(UnreadableFile, match="larger than"):
        read(big)


def test_a_heading_path_is_capped() -> None:
    chunks = chunk_sections([Section(("Intro", "x" * 5000), None, "Some text.")])
    assert len(chunks[0].heading) == MAX_HEADING_CHARS and chunks[0].heading.startswith("Intro › x")
    assert chunks[0].heading.endswith("…") and chunks[0].text == "Some text."
