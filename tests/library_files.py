"""Small real files of each format a library reads, built in the test (no binary fixtures): a PDF
written by hand (one Helvetica text object per page, a correct xref), DOCX through python-docx, EPUB
as the zip the spec describes. bench/retrieval.py uses write_pdf for its 1,000-page file.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path


def _pdf_string(text: str) -> str:
    return "(" + text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ")"


def write_pdf(path: Path, pages: Sequence[Sequence[str]]) -> Path:
    """A PDF whose page i shows the lines pages[i] (Latin-1 text, standard Helvetica)."""
    objects: list[bytes] = []
    count = len(pages)
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(count))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {count} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    for i, lines in enumerate(pages):
        body = "BT /F1 11 Tf 14 TL 56 780 Td " + " ".join(f"{_pdf_string(line)} Tj T*" for line in lines) + " ET"
        stream = body.encode("latin-1")
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources << /Font << /F1 3 0 R >> >> "
            f"/Contents {5 + 2 * i} 0 R >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    Path(path).write_bytes(bytes(out))
    return Path(path)


def write_encrypted_pdf(path: Path, source: Path, password: str = "secret") -> Path:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(source))
    writer.encrypt(user_password=password, owner_password=password + "-owner", algorithm="RC4-128")
    with open(path, "wb") as handle:
        writer.write(handle)
    return Path(path)


def write_docx(path: Path, blocks: Sequence[tuple[str, str]], table: Sequence[Sequence[str]] = ()) -> Path:
    """blocks: (style, text) with style "Title", "Heading 1".."Heading 9" or "" for a body paragraph."""
    import docx

    document = docx.Document()
    for style, text in blocks:
        if style == "Title":
            document.add_heading(text, level=0)
        elif style.startswith("Heading "):
            document.add_heading(text, level=int(style.split()[1]))
        else:
            document.add_paragraph(text)
    if table:
        grid = document.add_table(rows=len(table), cols=len(table[0]))
        for r, row in enumerate(table):
            for c, value in enumerate(row):
                grid.cell(r, c).text = value
    document.save(str(path))
    return Path(path)


def write_epub(path: Path, chapters: Sequence[tuple[str, str]]) -> Path:
    """chapters: (title, paragraph text), in reading order; the spine lists them in reverse file order
    to check that the reader follows the spine, not the zip."""
    with zipfile.ZipFile(path, "w") as book:
        book.writestr("mimetype", "application/epub+zip", compress_type=zipfile.ZIP_STORED)
        book.writestr(
            "META-INF/container.xml",
            '<?xml version="1.0"?><container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container">'
            '<rootfiles><rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/>'
            "</rootfiles></container>",
        )
        items, spine = [], []
        for i, (title, text) in reversed(list(enumerate(chapters))):
            name = f"text/ch{len(chapters) - i:02d}.xhtml"
            book.writestr(
                f"OEBPS/{name}",
                f'<?xml version="1.0" encoding="utf-8"?><html xmlns="http://www.w3.org/1999/xhtml"><head>'
                f"<title>{title}</title><style>p {{ color: red }}</style></head><body><h1>{title}</h1><p>{text}</p>"
                "</body></html>",
            )
            items.append(f'<item id="c{i}" href="{name}" media-type="application/xhtml+xml"/>')
        spine = [f'<itemref idref="c{i}"/>' for i in range(len(chapters))]
        book.writestr(
            "OEBPS/content.opf",
            '<?xml version="1.0"?><package xmlns="http://www.idpf.org/2007/opf" version="3.0">'
            f"<manifest>{''.join(items)}</manifest><spine>{''.join(spine)}</spine></package>",
        )
    return Path(path)
