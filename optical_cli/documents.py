"""Reading documents as they come: plain text, markdown and PDF.

One reader for every command that takes a document (``render``, ``encode --text``,
``train-adapter``'s ``data.source``, ``sweep frontier``). Text and markdown are decoded with the
configured encoding. A PDF gives two things:

- its **text layer**, extracted page by page with PDFium (``pypdfium2``) and normalised
  (:func:`normalize_pdf_text`): PDFium's line ends ``\\r\\n`` become ``\\n``, its U+FFFE
  (and the U+0002 older builds emit) stand for a hyphen where a word was broken at a line end
  and come back as ``-``, Latin ligatures (U+FB00-FB06) are spelt out. Everything textual
  downstream (the native condition, reconstruction targets, our dense re-rendering) reads this
  text, and the renderer's no-lost-character guarantee holds against it;
- its **own page images** (:func:`rasterize_pdf`), drawn at a mode's resolution the way the
  official preprocessing treats any page: fitted into the square and padded with grey.

A PDF without a text layer (a scan) still has page images; :attr:`Document.has_text` says so
and the callers state it rather than go on with an empty text. Encrypted, corrupt and empty
(zero-page) PDFs raise :class:`InputError` naming the file.
"""

from __future__ import annotations

import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import pypdfium2 as pdfium
from PIL import Image, ImageOps

from .errors import ConfigError, InputError
from .modes import PAD_COLOUR

TEXT_SUFFIXES = (".txt", ".md")
PDF_SUFFIX = ".pdf"
DOCUMENT_SUFFIXES = (*TEXT_SUFFIXES, PDF_SUFFIX)
PAGE_SEPARATOR = "\n\n"  # between the text layers of two PDF pages: a paragraph break

# PDFium's quirks and typographic forms that stand for plain characters.
_PDF_TRANSLATION = str.maketrans(
    {
        "\ufffe": "-",  # PDFium: a hyphen where a word was broken at the end of a line
        "\x02": "-",  # the same in older PDFium builds
        "\ufb00": "ff",
        "\ufb01": "fi",
        "\ufb02": "fl",
        "\ufb03": "ffi",
        "\ufb04": "ffl",
        "\ufb05": "st",
        "\ufb06": "st",
    }
)


@dataclass
class Document:
    source: str
    text: str
    page_texts: list[str] | None = None  # a PDF: the normalised text layer of each page
    pdf_path: Path | None = None

    @property
    def is_pdf(self) -> bool:
        return self.pdf_path is not None

    @property
    def has_text(self) -> bool:
        return bool(self.text.strip())


def normalize_pdf_text(text: str) -> str:
    """A PDF page's text layer as plain text (see the module docstring)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").translate(_PDF_TRANSLATION)


# ---------------------------------------------------------------------------------------
# PDF


def _open_pdf(path: Path):
    """The PDF as a pypdfium2 document, or one InputError naming the file and what is wrong."""
    try:
        document = pdfium.PdfDocument(str(path))
    except pdfium.PdfiumError as exc:
        raise InputError(f"{path}: {_load_failure(path, str(exc))}") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(document) == 0:
        document.close()
        raise InputError(f"{path}: the PDF has no pages; give a PDF with at least one page")
    return document


def _load_failure(path: Path, reason: str) -> str:
    """Why PDFium could not load the file. PDFium's last-error code can be stale (it reports the
    previous failure when a zero-page document fails), so the file's own bytes decide."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"cannot read the file: {exc.strerror or exc}"
    if "password" in reason.lower() and b"/Encrypt" in data:
        return "the PDF is encrypted (a password is needed to open it); give a decrypted copy (e.g. qpdf --decrypt)"
    if (
        data.startswith(b"%PDF-")
        and re.search(rb"/Count\s*0\b", data)
        and not re.search(rb"/Type\s*/Page(?![A-Za-z])", data)
    ):
        return "the PDF has no pages; give a PDF with at least one page"
    return f"not a readable PDF ({reason.rstrip('.')}); check the file is a complete, uncorrupted PDF"


def read_pdf(path: str | Path) -> Document:
    """The text layer of a PDF, page by page, normalised; pages joined by a blank line."""
    path = Path(path)
    document = _open_pdf(path)
    try:
        pages = []
        for index in range(len(document)):
            page = document[index]
            textpage = page.get_textpage()
            try:
                pages.append(normalize_pdf_text(textpage.get_text_range()))
            finally:
                textpage.close()
                page.close()
    finally:
        document.close()
    text = PAGE_SEPARATOR.join(page.strip("\n") for page in pages)
    return Document(str(path), text if text.strip() else "", pages, path)


def pdf_page_count(path: str | Path) -> int:
    document = _open_pdf(Path(path))
    try:
        return len(document)
    finally:
        document.close()


def rasterize_pdf(path: str | Path, size: int) -> Iterator[Image.Image]:
    """The PDF's own pages as size x size greyscale images: each page drawn by PDFium so that
    its longer side is ``size`` pixels, then centred on grey padding as the official DeepEncoder
    preprocessing treats a page that is not square (base and large modes)."""
    document = _open_pdf(Path(path))
    try:
        for index in range(len(document)):
            page = document[index]
            try:
                width, height = page.get_size()
                scale = size / max(width, height, 1e-6)
                bitmap = page.render(scale=scale, grayscale=True)
                image = bitmap.to_pil().convert("L")
                bitmap.close()
            finally:
                page.close()
            if image.size != (size, size):
                if max(image.size) > size:  # rounding in PDFium's pixel size
                    image.thumbnail((size, size), Image.Resampling.BICUBIC)
                image = ImageOps.pad(image, (size, size), method=Image.Resampling.BICUBIC, color=PAD_COLOUR[0])
            yield image
    finally:
        document.close()


# ---------------------------------------------------------------------------------------
# Any document


def collect_inputs(inputs: Iterable[str], suffixes: tuple[str, ...] = DOCUMENT_SUFFIXES) -> list[str]:
    """Expand files, directories (their documents, sorted) and ``-`` (stdin)."""
    found: list[str] = []
    kinds = "/".join(suffixes)
    for item in inputs:
        if item == "-":
            found.append("-")
            continue
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
            if not files:
                raise InputError(f"directory {path} holds no {kinds} files; pass documents or another directory")
            found.extend(str(p) for p in files)
        elif path.is_file():
            found.append(str(path))
        else:
            raise InputError(
                f"input not found: {path}; pass an existing file, a directory of {kinds} files, or - for stdin"
            )
    return found


def decode(data: bytes, source: str, encoding: str = "utf-8", errors: str = "strict") -> str:
    try:
        return data.decode(encoding, errors=errors)
    except LookupError:
        raise ConfigError(f"render.encoding={encoding!r} is not a known text encoding") from None
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{source}: cannot decode as {encoding} at byte offset {exc.start} "
            f"(byte 0x{data[exc.start]:02x}); set render.encoding to the file's encoding "
            "or render.errors=replace"
        ) from None


def is_pdf(path: str | Path, data: bytes | None = None) -> bool:
    """A .pdf name, or PDF bytes whatever the name."""
    if str(path).lower().endswith(PDF_SUFFIX):
        return True
    return data is not None and data[:5] == b"%PDF-"


def read_document(path: str | Path, encoding: str = "utf-8", errors: str = "strict") -> Document:
    """One file: a PDF's text layer, or text decoded with ``encoding``."""
    path = Path(path)
    if is_pdf(path):
        return read_pdf(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    if is_pdf(path, data):
        return read_pdf(path)
    return Document(str(path), decode(data, str(path), encoding, errors))


def _pdf_from_bytes(data: bytes) -> Document:
    """A PDF piped on stdin: its text layer (its own pages need a file: render.source=pdf-pages)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "stdin.pdf"
        path.write_bytes(data)
        try:
            document = read_pdf(path)
        except InputError as exc:
            raise InputError(str(exc).replace(str(path), "<stdin>")) from None
    return Document("<stdin>", document.text, document.page_texts)


def read_documents(
    inputs: list[str], encoding: str = "utf-8", errors: str = "strict", stdin: Callable[[], bytes] | None = None
) -> list[Document]:
    docs = []
    for item in collect_inputs(inputs):
        if item == "-":
            data = stdin() if stdin else sys.stdin.buffer.read()
            docs.append(
                _pdf_from_bytes(data)
                if is_pdf("<stdin>", data)
                else Document("<stdin>", decode(data, "<stdin>", encoding, errors))
            )
        else:
            docs.append(read_document(item, encoding, errors))
    return docs
