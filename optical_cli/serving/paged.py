"""A document as numbered pages: each page's text (what retrieval ranks) and its image (what is read).

``optical ask`` takes a ``.txt``/``.md``/``.pdf`` file, a directory ``optical render`` wrote, or
``-`` (stdin); :func:`read_document` reads it once, :func:`paginate` lays it out with a render
section (a text, or a PDF's text layer, drawn densely at the mode's page size; a render run's own
page images; a PDF's own pages with ``render.source: pdf-pages``). Laying out is cheap and covers
every page; drawing is not, so :class:`PagedDocument` draws only the pages asked for (a
3,000-page PDF read through ten selected pages draws ten).

A PDF without a text layer (a scan) has nothing to draw as text: its own pages are read instead,
and the document says so (``notes``); selection by retrieval cannot rank such pages.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Callable, Sequence

from PIL import Image

from ..config.sections import RenderSection
from ..documents import rasterize_pdf, read_documents
from ..errors import InputError
from ..modes import page_size
from ..records import read_records
from ..render.pages import PageRenderer, non_space


@dataclass
class AskDocument:
    source: str
    text: str  # what the document says (its tokens are document_tokens)
    page_files: list[Path] | None = None  # pages already drawn: a render run directory
    page_texts: list[str] | None = None  # each page's text: a render run's lines, a PDF's text layer
    pdf: Path | None = None  # read the PDF's own pages (render.source=pdf-pages, or a scan)
    notes: list[str] = field(default_factory=list)


@dataclass
class PagedDocument:
    """Every page's text (``""`` where a page has none) and a way to draw any of them."""

    source: str
    texts: list[str]
    text: str
    draw_pages: Callable[[Sequence[int]], list[Image.Image]]  # 0-based page numbers -> images, in that order
    images: bool = False  # the pages are images already (a render run, a PDF's own pages): no font to choose
    pdf_pages: list[tuple[int, int]] | None = None  # a PDF's text drawn densely: each page's first and last PDF page

    @property
    def count(self) -> int:
        return len(self.texts)

    @property
    def has_text(self) -> bool:
        return any(text.strip() for text in self.texts)

    def draw(self, numbers: Sequence[int]) -> list[Image.Image]:
        return self.draw_pages(list(numbers)) if numbers else []


def read_ask_document(document: str, render: RenderSection, stdin: Callable[[], bytes] | None = None) -> AskDocument:
    """DOC as ask takes it: a text, markdown or PDF file, a render run directory, or ``-``."""
    path = Path(document)
    if document != "-" and path.is_dir():
        records = read_records(path / "layout.jsonl")
        if not records:
            raise InputError(
                f"{path} is a directory without pages (no layout.jsonl); pass a .txt, .md or .pdf file, "
                "a directory `optical render` wrote, or - for stdin"
            )
        texts = ["\n".join(record.get("lines", [])) for record in records]
        return AskDocument(str(path), "\n".join(texts), [path / record["image"] for record in records], texts)
    (found,) = read_documents([document], render.encoding, render.errors, stdin=stdin)
    if found.is_pdf and (render.source == "pdf-pages" or not found.has_text):
        notes = [] if found.has_text else [f"{found.source} has no text layer (a scan): reading its own pages"]
        return AskDocument(found.source, found.text, page_texts=found.page_texts, pdf=found.pdf_path, notes=notes)
    if not found.has_text:
        raise InputError(f"{found.source} has no text to read")
    return AskDocument(found.source, found.text, page_texts=found.page_texts if found.is_pdf else None)


def paginate(doc: AskDocument, render: RenderSection) -> PagedDocument:
    """``doc`` as pages drawn with ``render`` (its ``mode`` sets the page size)."""
    if doc.page_files is not None:
        files = doc.page_files
        return PagedDocument(
            doc.source, list(doc.page_texts), doc.text, lambda numbers: [_open_page(files[n]) for n in numbers], True
        )
    if doc.pdf is not None:
        pdf, size = doc.pdf, page_size(render.mode)
        return PagedDocument(
            doc.source,
            [text.strip() for text in doc.page_texts or []],
            doc.text,
            lambda numbers: list(rasterize_pdf(pdf, size, numbers)),
            True,
        )
    renderer = PageRenderer(render)
    page_lines, _, _ = renderer.layout(doc.text)
    texts = ["\n".join(lines) for lines in page_lines]
    return PagedDocument(
        doc.source,
        texts,
        doc.text,
        lambda numbers: [renderer.draw(page_lines[n]) for n in numbers],
        pdf_pages=pdf_page_spans(texts, doc.page_texts) if doc.page_texts is not None else None,
    )


def pdf_page_spans(pages: list[str], pdf_texts: list[str]) -> list[tuple[int, int]]:
    """The PDF pages (1-based, first and last) each drawn page holds, by counting non-space
    characters: the renderer keeps every one of them, in order, whatever it does to whitespace."""
    ends = list(accumulate(len(non_space(text)) for text in pdf_texts))
    spans, start = [], 0
    for text in pages:
        length = len(non_space(text))
        first = min(bisect_right(ends, start), len(ends) - 1)
        last = min(bisect_right(ends, start + max(length - 1, 0)), len(ends) - 1)
        spans.append((first + 1, last + 1))
        start += length
    return spans


def _open_page(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable page image ({exc})") from None
