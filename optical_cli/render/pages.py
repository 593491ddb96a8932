"""Text -> page images that lose no character.

Guarantees (each proven by a test):
  (a) no character is lost: the non-whitespace characters of the normalised input, in
      order, equal those of all drawn lines of all pages;
  (b) nothing is clipped: the page geometry is derived from the font's global bounding box
      (head table) and each character's measured right extent, so every glyph of every
      line lies inside the page;
  (c) characters the font cannot draw are replaced, one for one, by a visible marker and
      counted.

Normalisation: CR/LF and lone CR become LF, tabs are expanded to ``tab_size`` columns,
other whitespace becomes a space, control and format characters (Unicode Cc/Cf, the
zero-width joiner among them) and variation selectors (U+FE00-FE0F, U+E0100-E01EF: invisible
presentation hints such as the emoji selector after "↪") are removed and counted. With ``reflow``
each paragraph is then packed into one run of text (see :func:`reflow`) so pages fill up whatever
the source's line lengths. The basic (non-shaping) FreeType layout is used: fast and predictable, at the
price of no contextual shaping for scripts such as Arabic.
"""

from __future__ import annotations

import importlib.util
import math
import multiprocessing
import os
import re
import struct
import unicodedata
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from fontTools.ttLib import TTFont, TTLibError
from PIL import Image, ImageDraw, ImageFont

from ..artifacts import atomic_path, atomic_write_text, to_json_line
from ..config.sections import RenderSection
from ..documents import Document, pdf_page_count, rasterize_pdf
from ..errors import ConfigError, InputError
from ..modes import MODES, page_size
from ..records import read_records
from ..textstats import count_text_tokens, count_words

DEFAULT_FONT = "DejaVuSansMono"
_TOKEN_RE = re.compile(r" +|[^ ]+")  # alternating runs of spaces and non-spaces
_SYSTEM_FONT_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/TTF", "/usr/share/fonts/dejavu")


@dataclass
class RenderedPage:
    lines: list[str]
    image: Image.Image
    source: str

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@dataclass
class DocumentStats:
    source: str
    pages: int = 0
    lines: int = 0
    characters: int = 0
    words: int = 0
    replaced: int = 0
    removed_controls: int = 0
    text_layer: bool | None = None  # a PDF: whether it has a text layer (None: not a PDF)


# ---------------------------------------------------------------------------------------
# Fonts


def resolve_font_path(font: str) -> Path:
    """DejaVu Sans Mono from the system or matplotlib's bundled copy, or any font file path."""
    if font in (DEFAULT_FONT, f"{DEFAULT_FONT}.ttf"):
        for folder in _SYSTEM_FONT_DIRS:
            candidate = Path(folder) / f"{DEFAULT_FONT}.ttf"
            if candidate.is_file():
                return candidate
        matplotlib = importlib.util.find_spec("matplotlib")  # its bundled copy, found without importing it
        bundled = (
            Path(matplotlib.origin).parent / "mpl-data" / "fonts" / "ttf" / f"{DEFAULT_FONT}.ttf"
            if matplotlib
            else None
        )
        if bundled is not None and bundled.is_file():
            return bundled
        raise InputError(
            "font DejaVuSansMono not found on the system nor in matplotlib; set render.font to a .ttf path"
        )
    path = Path(font).expanduser()
    if not path.is_file():
        raise InputError(f"font not found: {font}; set render.font to an existing .ttf/.otf file or to {DEFAULT_FONT}")
    return path


@lru_cache(maxsize=8)
def _font_facts(path: str) -> tuple[frozenset[int], tuple[int, int, int, int], int]:
    """Code points the font maps, its global bounding box and units per em."""
    try:
        font = TTFont(path, lazy=True, fontNumber=0)
        cmap = frozenset(font.getBestCmap() or {})
        head = font["head"]
        return cmap, (head.xMin, head.yMin, head.xMax, head.yMax), head.unitsPerEm
    except (TTLibError, KeyError, OSError, AssertionError) as exc:
        raise InputError(f"font {path} cannot be read as a TrueType/OpenType font: {exc}") from None


# ---------------------------------------------------------------------------------------
# The renderer


class PageRenderer:
    """Wraps, paginates and draws text for one render configuration."""

    def __init__(self, section: RenderSection):
        self.section = section
        self.font_path = resolve_font_path(section.font)
        self.cmap, (x_min, y_min, _x_max, y_max), units = _font_facts(str(self.font_path))
        try:
            self.font = ImageFont.truetype(str(self.font_path), section.font_size, layout_engine=ImageFont.Layout.BASIC)
        except OSError as exc:
            raise InputError(f"font {self.font_path} cannot be loaded: {exc}") from None
        if len(section.missing_glyph) != 1 or ord(section.missing_glyph) not in self.cmap:
            raise ConfigError(
                f"render.missing_glyph={section.missing_glyph!r} must be one character the font can draw; "
                "try '?' or '\u25a1'"
            )
        scale = section.font_size / units
        self.page_px = page_size(section.mode)
        # Glyphs may reach left of the pen and above the ascender: keep the font's whole box inside.
        self.left = section.margin + math.ceil(max(0.0, -x_min * scale))
        self.right_limit = self.page_px - section.margin
        self.glyph_top = math.ceil(y_max * scale)  # above the baseline
        self.glyph_bottom = math.ceil(-y_min * scale)  # below the baseline
        self.pitch = max(1, math.ceil(section.font_size * section.line_spacing))
        usable = self.page_px - 2 * section.margin - self.glyph_top - self.glyph_bottom
        self.lines_per_page = usable // self.pitch + 1 if usable >= 0 else 0
        self._advance: dict[str, float] = {}
        self._extent: dict[str, float] = {}
        self._token_widths: dict[str, tuple[float, float]] = {}
        self._atlas = GlyphAtlas(self) if section.glyph_cache else None
        widest = max(self._right_extent(c) for c in "MW@" + section.missing_glyph)
        if self.lines_per_page < 1 or self.left + widest > self.right_limit:
            raise InputError(
                f"render.font_size={section.font_size} px leaves no room for a line on a {self.page_px} px page "
                f"with render.margin={section.margin}; use a smaller font_size or margin, or a larger mode"
            )

    # -- measuring -------------------------------------------------------------------
    def _advance_of(self, ch: str) -> float:
        width = self._advance.get(ch)
        if width is None:
            width = self._advance[ch] = self.font.getlength(ch)
        return width

    def _right_extent(self, ch: str) -> float:
        """How far right of the pen the glyph reaches: the larger of its advance and its ink."""
        extent = self._extent.get(ch)
        if extent is None:
            ink = self.font.getbbox(ch, anchor="ls")[2] if not ch.isspace() else 0
            extent = self._extent[ch] = max(self._advance_of(ch), ink)
        return extent

    # -- text --------------------------------------------------------------------------
    def normalize(self, text: str) -> tuple[str, int, int]:
        """Return the normalised text, the number of replaced characters and of removed controls."""
        text = text.replace("\r\n", "\n").replace("\r", "\n").expandtabs(self.section.tab_size)
        table: dict[int, str | None] = {}  # decided once per distinct character
        replaced = removed = 0
        for ch in set(text):
            if ch == "\n" or ch == " ":
                continue
            if ch.isspace():
                table[ord(ch)] = " "
            elif unicodedata.category(ch) in ("Cc", "Cf") or is_variation_selector(ch):
                table[ord(ch)] = None
                removed += text.count(ch)
            elif ord(ch) not in self.cmap:
                table[ord(ch)] = self.section.missing_glyph
                replaced += text.count(ch)
        return (text.translate(table) if table else text), replaced, removed

    def _token_width(self, token: str) -> tuple[float, float]:
        """(pen advance, right ink extent) of a word; words repeat, so they are cached."""
        widths = self._token_widths.get(token)
        if widths is None:
            advance = sum(map(self._advance_of, token))
            widths = (advance, advance - self._advance_of(token[-1]) + self._right_extent(token[-1]))
            if len(self._token_widths) < 100_000:
                self._token_widths[token] = widths
        return widths

    def wrap(self, text: str) -> list[str]:
        """Greedy word wrap of normalised text; words longer than a line are broken."""
        lines: list[str] = []
        for paragraph in text.split("\n"):
            lines.extend(self._wrap_paragraph(paragraph))
        return lines

    def _wrap_paragraph(self, paragraph: str) -> list[str]:
        limit = self.right_limit - self.left
        if not paragraph.strip():
            return [""]
        space = self._advance_of(" ")
        lines: list[str] = []
        current: list[str] = []
        width = 0.0  # pen position after ``current``
        for index, token in enumerate(_TOKEN_RE.findall(paragraph)):
            if token[0] == " ":
                # Indentation is kept; spaces where a wrap breaks the line are dropped.
                if current or index == 0:
                    spaces = min(len(token), int(limit // space) - 1)
                    current.append(token[:spaces])
                    width += spaces * space
                continue
            advance, extent = self._token_width(token)
            if width + extent <= limit:
                current.append(token)
                width += advance
                continue
            if current:
                lines.append("".join(current).rstrip(" "))
                current, width = [], 0.0
            if extent <= limit:
                current, width = [token], advance
                continue
            for ch in token:  # a word longer than the line: break it
                if current and width + self._right_extent(ch) > limit:
                    lines.append("".join(current))
                    current, width = [], 0.0
                current.append(ch)
                width += self._advance_of(ch)
        if current:
            lines.append("".join(current).rstrip(" "))
        return lines

    def paginate(self, lines: list[str]) -> list[list[str]]:
        # Trailing blank lines add nothing; a page is never only blank lines.
        while lines and not lines[-1].strip():
            lines = lines[:-1]
        step = self.lines_per_page
        pages = [lines[i : i + step] for i in range(0, len(lines), step)]
        return [page for page in pages if any(line.strip() for line in page)]

    # -- drawing -------------------------------------------------------------------------
    def baseline(self, index: int) -> int:
        return self.section.margin + self.glyph_top + index * self.pitch

    def draw(self, lines: list[str]) -> Image.Image:
        """Draw a page: through the glyph cache when the font allows it, else through PIL."""
        image = self._atlas.draw(lines) if self._atlas is not None else None
        return image if image is not None else self.draw_with_pil(lines)

    def draw_with_pil(self, lines: list[str]) -> Image.Image:
        image = Image.new("L", (self.page_px, self.page_px), 255)
        draw = ImageDraw.Draw(image)
        for index, line in enumerate(lines):
            if line:
                draw.text((self.left, self.baseline(index)), line, font=self.font, fill=0, anchor="ls")
        return image

    def layout(self, text: str) -> tuple[list[list[str]], int, int]:
        normalised, replaced, removed = self.normalize(text)
        if self.section.reflow:
            normalised = reflow(normalised)
        return self.paginate(self.wrap(normalised)), replaced, removed


class GlyphAtlas:
    """Draws pages by compositing cached glyph bitmaps with numpy instead of re-rasterising.

    PIL's basic layout rasterises every glyph of every line again (about 12,000 per dense
    page). With hinting, advances are whole pixels and PIL places each glyph bitmap at the
    pen position, combining overlapping coverage as a + b(255 - a)/255; doing the same from
    a per-character cache gives the same pixels several times faster. Glyphs are laid down
    in k interleaved passes (characters i, i+k, ...) so that no two cells of one pass
    overlap (and likewise lines n, n+m, ...) and each pass is one vectorised gather/scatter. Pages the cache cannot draw
    exactly (fractional or zero advances) fall back to PIL.
    """

    def __init__(self, renderer: "PageRenderer"):
        self.renderer = renderer
        self.rows = renderer.glyph_top + renderer.glyph_bottom
        self.index: dict[str, int] = {}
        self.masks: list[np.ndarray] = []  # [rows, width] coverage, cell origin = pen - offsets
        self.offsets: list[int] = []  # columns left of the pen
        self.advances: list[int] = []
        self.inked: list[bool] = []
        self.lookup = np.full(0x10000, -1, dtype=np.int64)  # code point -> atlas index
        self._stack: tuple[np.ndarray, int] | None = None
        self._rows_cache: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def _add(self, ch: str) -> int | None:
        advance = self.renderer._advance_of(ch)
        if advance != int(advance):
            return None
        mask, (dx, dy) = self.renderer.font.getmask2(ch, mode="L", anchor="ls")
        width, height = mask.size
        coverage = np.zeros((self.rows, max(width, 1)), dtype=np.uint8)
        if width and height:
            top = self.renderer.glyph_top + dy
            if top < 0 or top + height > self.rows:
                return None  # taller than the font's own box: leave it to PIL
            coverage[top : top + height, :width] = np.asarray(mask, dtype=np.uint8).reshape(height, width)
        self.index[ch] = len(self.masks)
        self.masks.append(coverage)
        self.offsets.append(-dx)
        self.advances.append(int(advance))
        self.inked.append(bool(coverage.any()))
        self._stack = None
        return self.index[ch]

    def _stacked(self) -> tuple[np.ndarray, int]:
        """All masks in one [glyphs, rows, width] array sharing a left offset."""
        if self._stack is None:
            left = max(0, max(self.offsets))
            width = max(left - off + m.shape[1] for off, m in zip(self.offsets, self.masks))
            stack = np.zeros((len(self.masks), self.rows, width), dtype=np.uint8)
            for i, (off, mask) in enumerate(zip(self.offsets, self.masks)):
                start = left - off
                stack[i, :, start : start + mask.shape[1]] = mask
            self._stack = (stack, left)
        return self._stack

    def _glyph_ids(self, codepoints: np.ndarray) -> np.ndarray | None:
        """Atlas index of each code point, adding glyphs not seen before; None if one cannot be cached."""
        if codepoints.size and int(codepoints.max()) >= len(self.lookup):
            return None  # beyond the Basic Multilingual Plane: rare, PIL draws it
        ids = self.lookup[codepoints]
        for cp in np.unique(codepoints[ids < 0]):
            added = self._add(chr(cp))
            if added is None:
                return None
            self.lookup[cp] = added
        return self.lookup[codepoints] if (ids < 0).any() else ids

    def draw(self, lines: list[str]) -> Image.Image | None:
        size = self.renderer.page_px
        lengths = np.fromiter((len(line) for line in lines), dtype=np.int64, count=len(lines))
        codepoints = np.frombuffer("".join(lines).encode("utf-32-le"), dtype=np.uint32)
        ids = self._glyph_ids(codepoints)
        space = self._glyph_ids(np.asarray([32], dtype=np.uint32))
        if ids is None or space is None:
            return None
        all_advances = np.asarray(self.advances, dtype=np.int64)
        advances = all_advances[ids]
        line_of = np.repeat(np.arange(len(lines)), lengths)
        line_start = np.cumsum(lengths) - lengths
        position = np.arange(len(ids)) - line_start[line_of]
        if not np.asarray(self.inked)[ids].any():
            return Image.new("L", (size, size), 255)
        advance = int(all_advances[space[0]])
        stack, left = self._stacked()
        if advance > 0 and bool((advances == advance).all()):
            coverage = self._monospace_coverage(lines, ids, line_of, position, int(space[0]), advance)
        else:
            pen_total = np.cumsum(advances) - advances
            pen_at_line_start = np.append(pen_total, 0)[line_start]  # an empty last line starts past the end
            columns = self.renderer.left + pen_total - pen_at_line_start[line_of]
            coverage = self._scattered_coverage(ids, columns, line_of, position)
            if coverage is None:
                return None
        return Image.fromarray(255 - coverage[:size, left : left + size], mode="L")

    def _row_major(self, advance: int) -> np.ndarray:
        """The first ``advance`` columns of every cell as [rows, glyphs, advance] (cached)."""
        stack, _ = self._stacked()
        if self._rows_cache is None or self._rows_cache[0] is not stack:
            first = np.zeros((len(stack), self.rows, advance), dtype=np.uint8)
            first[..., : min(advance, stack.shape[2])] = stack[..., :advance]
            overhang = [bool(cell[:, advance:].any()) for cell in stack]
            self._rows_cache = (stack, np.ascontiguousarray(first.transpose(1, 0, 2)), np.asarray(overhang))
        return self._rows_cache[1]

    def _overhangs(self, advance: int) -> np.ndarray:
        """Which glyphs have ink beyond one advance (cached with ``_row_major``)."""
        self._row_major(advance)
        return self._rows_cache[2]

    @property
    def line_passes(self) -> int:
        """Lines n, n + line_passes, ... never overlap: each such group is drawn on its own canvas."""
        return -(-self.rows // self.renderer.pitch)

    def _canvas(self, width: int) -> np.ndarray:
        """A coverage canvas shifted right by the atlas's left offset, with room for overhangs."""
        size = self.renderer.page_px
        left = self._stacked()[1]
        return np.zeros((size + self.rows, size + width + left), dtype=np.uint8)

    def _monospace_coverage(self, lines, ids, line_of, position, space: int, advance: int) -> np.ndarray:
        """Every character advances the same: each line is its cells laid side by side.

        One gather and one transpose give every line's strip of first-advance slices; the
        few glyphs with ink beyond their advance are blended onto the next cells one by one.
        Lines then go onto the page in order, blending only the rows a line shares with the
        lines above it.
        """
        stack, _ = self._stacked()
        n_lines, longest = len(lines), max(len(line) for line in lines)
        grid = np.full((n_lines, longest), space, dtype=np.int64)
        grid[line_of, position] = ids
        # Gathering from a row-major copy of the first slice gives [rows, lines, chars, advance]:
        # bringing rows inside lines then moves whole contiguous runs of a line's pixels.
        first = self._row_major(advance)[:, grid]
        span = longest * advance
        slices = -(-stack.shape[2] // advance)
        strips = np.zeros((n_lines, self.rows, span + (slices - 1) * advance), dtype=np.uint8)
        strips[..., :span] = first.transpose(1, 0, 2, 3).reshape(n_lines, self.rows, span)
        # Ink beyond the advance (a few glyphs) is blended onto the following cells one glyph at a time.
        overhanging = self._overhangs(advance)[grid]
        for line, char in zip(*np.nonzero(overhanging)):
            extra = stack[grid[line, char], :, advance:]
            start = (char + 1) * advance
            region = strips[line, :, start : start + extra.shape[1]]
            _blend_onto(region, extra)
        canvas = self._canvas(strips.shape[2])
        x0 = self.renderer.left  # canvas column of the first pen position
        shared = max(0, self.rows - self.renderer.pitch)  # rows a line shares with the lines above
        for number in range(n_lines):
            top = self.renderer.section.margin + number * self.renderer.pitch
            rows = canvas[top : top + self.rows, x0 : x0 + strips.shape[2]]
            _blend_onto(rows[:shared], strips[number, :shared])
            rows[shared:] = strips[number, shared:]
        return canvas

    def _scattered_coverage(self, ids, columns, line_of, position) -> np.ndarray | None:
        """Any advances: glyph cells scattered in passes whose cells never overlap.

        Lines n, n + line_passes, ... never overlap each other, so each such group is
        scattered on its own canvas; the groups are then blended in line order.
        """
        inked = np.asarray(self.inked)[ids]
        glyphs_a, columns, line_a, position_a = ids[inked], columns[inked], line_of[inked], position[inked]
        min_advance = int(np.asarray(self.advances)[np.unique(glyphs_a)].min())
        if min_advance <= 0:
            return None
        stack, left = self._stacked()
        width = stack.shape[2]
        passes = -(-width // min_advance)
        coverage = None
        for group in range(self.line_passes):
            canvas = self._canvas(width)
            canvas_w = canvas.shape[1]
            cell = (np.arange(self.rows)[:, None] * canvas_w + np.arange(width)[None, :]).reshape(1, -1)
            starts = (self.renderer.section.margin + line_a * self.renderer.pitch) * canvas_w + columns
            flat = canvas.reshape(-1)
            in_group = line_a % self.line_passes == group
            first = True
            for k in range(passes):
                chosen = in_group & (position_a % passes == k)
                if not chosen.any():
                    continue
                targets = starts[chosen][:, None] + cell
                values = stack[glyphs_a[chosen]].reshape(len(targets), -1)
                if first:  # nothing drawn yet in this group: no overlap to blend
                    flat[targets] = values
                    first = False
                    continue
                current = flat[targets].astype(np.uint16)
                flat[targets] = current + _div255(values * (255 - current))
            if coverage is None:
                coverage = canvas
            else:
                _blend_onto(coverage, canvas)
        return coverage


def _blend_onto(target: np.ndarray, ink: np.ndarray) -> None:
    """Add coverage ``ink`` onto ``target`` in place the way PIL combines it: a + b (255 - a) / 255.

    Within a line PIL combines glyph coverage with this rule; across lines it multiplies
    the paper left, (255 - a)(255 - b) / 255, which is the same number after PIL's
    rounding (no product of 255 - a and 255 - b ever lands on a rounding tie).
    """
    current = target.astype(np.uint16)  # 255 * 255 + 128 + 255 < 65536
    target[...] = current + _div255(ink * (255 - current))


def _div255(values: np.ndarray) -> np.ndarray:
    """PIL's rounded division by 255."""
    values = values + 128
    return ((values >> 8) + values) >> 8


def is_variation_selector(ch: str) -> bool:
    """A presentation hint for the character before it (text or emoji style, CJK variants): never drawn."""
    code = ord(ch)
    return 0xFE00 <= code <= 0xFE0F or 0xE0100 <= code <= 0xE01EF


_BLANK_LINES = re.compile(r"\n[ \t]*\n\s*")


def reflow(text: str) -> str:
    """Pack normalised text densely: one line per paragraph (text between blank lines), whose
    line breaks, indentation and runs of spaces become single spaces; wrapping then fills every
    line. Only whitespace changes, so no visible character is lost."""
    paragraphs = (" ".join(paragraph.split()) for paragraph in _BLANK_LINES.split(text))
    return "\n".join(paragraph for paragraph in paragraphs if paragraph)


def non_space(text: str) -> str:
    return "".join(ch for ch in text if not ch.isspace())


# ---------------------------------------------------------------------------------------
# In-memory API (used by encode and the benchmarks)


def iter_pages(text: str, section: RenderSection, source: str = "<text>") -> Iterator[RenderedPage]:
    renderer = PageRenderer(section)
    pages, _, _ = renderer.layout(text)
    for lines in pages:
        yield RenderedPage(lines, renderer.draw(lines), source)


def render_document(text: str, section: RenderSection, source: str = "<text>") -> list[RenderedPage]:
    return list(iter_pages(text, section, source))


# ---------------------------------------------------------------------------------------
# What a render run takes: every document has text to draw, or is a PDF drawn as its own pages


def check_renderable(documents: list[Document], section: RenderSection) -> list[str]:
    """Warnings for documents that add nothing (empty, or a scan drawn without text); an InputError
    when nothing could be rendered (a scan with render.source=text, or only empty documents)."""
    if section.source == "pdf-pages":
        return [
            f"{doc.source}: the PDF has no text layer (a scan?): its pages are drawn, but the native "
            "condition has no text for them"
            for doc in documents
            if doc.is_pdf and not doc.has_text
        ]
    scans = [doc.source for doc in documents if doc.is_pdf and not doc.has_text]
    if scans:
        raise InputError(
            f"{scans[0]}: the PDF has no text layer (a scan?), so there is no text to render; "
            "draw its own pages with --set render.source=pdf-pages"
        )
    empty = [doc.source for doc in documents if not doc.text.strip()]
    if len(empty) == len(documents):  # the one rule for empty inputs (encode --text says the same)
        raise InputError(f"{', '.join(empty[:3])}: no text to render (empty or whitespace only); give a file with text")
    return [f"{source}: no text (empty or whitespace only); it adds no page" for source in empty]


# ---------------------------------------------------------------------------------------
# Rendering to a directory (page_0001.png ... + layout.jsonl)


@dataclass
class RenderReport:
    mode: str
    page_px: int
    vision_tokens_per_page: int
    documents: list[DocumentStats] = field(default_factory=list)
    text_tokens: int | None = None
    source: str = "text"

    @property
    def pages(self) -> int:
        return sum(d.pages for d in self.documents)

    def as_dict(self) -> dict:
        pages = self.pages
        chars = sum(d.characters for d in self.documents)
        vision_tokens = pages * self.vision_tokens_per_page
        result = {
            "mode": self.mode,
            "source": self.source,
            "page_px": self.page_px,
            "documents": len(self.documents),
            "pages": pages,
            "lines": sum(d.lines for d in self.documents),
            "characters": chars,
            "characters_per_page": round(chars / pages, 1) if pages else 0.0,
            "words": sum(d.words for d in self.documents),
            "replaced_characters": sum(d.replaced for d in self.documents),
            "removed_control_characters": sum(d.removed_controls for d in self.documents),
            "vision_tokens": vision_tokens,
            "text_tokens": self.text_tokens,
            "text_tokens_per_vision_token": (
                round(self.text_tokens / vision_tokens, 3) if self.text_tokens is not None and vision_tokens else None
            ),
            "pdfs_without_text_layer": [d.source for d in self.documents if d.text_layer is False],
            "per_document": [vars(d) for d in self.documents],
        }
        return result


def png_bytes(image: Image.Image) -> bytes:
    """A greyscale page as PNG: no row filter, zlib level 1.

    Pages are mostly paper; deflate alone compresses them about as well as PIL's adaptive
    row filters do, in a third of the time (PNG encoding was the largest cost per page).
    """
    pixels = np.asarray(image.convert("L"), dtype=np.uint8)
    height, width = pixels.shape
    rows = np.empty((height, width + 1), dtype=np.uint8)
    rows[:, 0] = 0  # filter type None
    rows[:, 1:] = pixels

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows.tobytes(), 1))
        + chunk(b"IEND", b"")
    )


def _save_page(args: tuple[str, list[str], str]) -> None:
    section_json, lines, path = args
    image = _worker_renderer(section_json).draw(lines)
    with atomic_path(path, durable=False) as tmp:  # layout.jsonl, written last, is the durable record
        tmp.write_bytes(png_bytes(image))


_RENDERERS: dict[str, PageRenderer] = {}  # per process; forked workers inherit the parent's, glyphs included


def _worker_renderer(section_json: str) -> PageRenderer:
    """One renderer (font loaded once) per process and configuration."""
    renderer = _RENDERERS.get(section_json)
    if renderer is None:
        renderer = _RENDERERS[section_json] = PageRenderer(RenderSection.model_validate_json(section_json))
    return renderer


def render_to_dir(
    documents: list[Document],
    renderer: PageRenderer,
    out_dir: Path,
    workers: int = 1,
    progress: Callable[..., None] | None = None,
) -> RenderReport:
    """Render documents to ``out_dir`` as page PNGs plus ``layout.jsonl`` (written last, atomically).

    Layout (wrapping, pagination) runs in this process; drawing and PNG encoding, the
    expensive part, run on ``workers`` processes.
    """
    section = renderer.section
    if section.source == "pdf-pages":
        return _pdf_pages_to_dir(documents, section, renderer.page_px, out_dir, progress)
    report = RenderReport(section.mode, renderer.page_px, MODES[section.mode].tokens)
    section_json = section.model_dump_json()
    _RENDERERS[section_json] = renderer
    jobs: list[tuple[str, list[str], str]] = []
    layout_lines: list[str] = []
    all_text: list[str] = []
    for doc in documents:
        pages, replaced, removed = renderer.layout(doc.text)
        stats = DocumentStats(
            doc.source,
            pages=len(pages),
            replaced=replaced,
            removed_controls=removed,
            text_layer=doc.has_text if doc.is_pdf else None,
        )
        for lines in pages:
            number = len(jobs) + 1
            name = f"page_{number:04d}.png"
            jobs.append((section_json, lines, str(out_dir / name)))
            layout_lines.append(to_json_line({"page": number, "image": name, "source": doc.source, "lines": lines}))
            stats.lines += len(lines)
            page_text = "\n".join(lines)
            stats.characters += sum(len(line) for line in lines)
            stats.words += count_words(page_text)
            all_text.append(page_text)
        report.documents.append(stats)
    out_dir.mkdir(parents=True, exist_ok=True)
    _run_jobs(jobs, workers, progress)
    atomic_write_text(out_dir / "layout.jsonl", "".join(line + "\n" for line in layout_lines))
    written = {Path(job[2]).name for job in jobs}
    for stale in out_dir.glob("page_[0-9][0-9][0-9][0-9].png"):  # left by an earlier, longer run in this dir
        if stale.name not in written:
            stale.unlink()
    if section.tokenizer == "qwen":
        report.text_tokens = sum(count_text_tokens(text) for text in all_text)
    return report


def _pdf_pages_to_dir(
    documents: list[Document],
    section: RenderSection,
    page_px: int,
    out_dir: Path,
    progress: Callable[..., None] | None = None,
) -> RenderReport:
    """``render.source: pdf-pages``: each PDF's own pages, rasterised at the mode's resolution
    (see documents.rasterize_pdf); each layout record carries that page's text layer as lines
    (none for a scan)."""
    not_pdf = [doc.source for doc in documents if not doc.is_pdf]
    if not_pdf:
        raise InputError(
            f"{not_pdf[0]}: render.source=pdf-pages draws a PDF's own pages, and this input is not a PDF; "
            "give PDFs, or use render.source=text"
        )
    report = RenderReport(section.mode, page_px, MODES[section.mode].tokens, source="pdf-pages")
    if progress:
        progress(0, total=sum(pdf_page_count(doc.pdf_path) for doc in documents))
    out_dir.mkdir(parents=True, exist_ok=True)
    layout_lines: list[str] = []
    written: set[str] = set()
    all_text: list[str] = []
    for doc in documents:
        stats = DocumentStats(doc.source, text_layer=doc.has_text)
        page_texts = doc.page_texts or []
        for index, image in enumerate(rasterize_pdf(doc.pdf_path, page_px)):
            number = len(written) + 1
            name = f"page_{number:04d}.png"
            with atomic_path(out_dir / name, durable=False) as tmp:
                tmp.write_bytes(png_bytes(image))
            written.add(name)
            text = page_texts[index].strip("\n") if index < len(page_texts) else ""
            lines = text.split("\n") if text.strip() else []
            layout_lines.append(
                to_json_line(
                    {"page": number, "image": name, "source": doc.source, "pdf_page": index + 1, "lines": lines}
                )
            )
            stats.pages += 1
            stats.lines += len(lines)
            stats.characters += sum(len(line) for line in lines)
            stats.words += count_words(text)
            all_text.append(text)
            if progress:
                progress(1)
        report.documents.append(stats)
    atomic_write_text(out_dir / "layout.jsonl", "".join(line + "\n" for line in layout_lines))
    for stale in out_dir.glob("page_[0-9][0-9][0-9][0-9].png"):
        if stale.name not in written:
            stale.unlink()
    if section.tokenizer == "qwen":
        report.text_tokens = sum(count_text_tokens(text) for text in all_text if text)
    return report


def _run_jobs(jobs: list, workers: int, progress: Callable[..., None] | None) -> None:
    if progress:
        progress(0, total=len(jobs))
    if workers == 0:
        workers = os.cpu_count() or 1
    if workers <= 1 or len(jobs) < 2:
        for job in jobs:
            _save_page(job)
            if progress:
                progress(1)
        return
    # fork starts workers in milliseconds with the font module already imported; rendering
    # starts no threads, so it is safe here. Elsewhere, spawn.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    workers = min(workers, len(jobs))
    with context.Pool(workers) as pool:
        for _ in pool.imap_unordered(_save_page, jobs, chunksize=max(1, len(jobs) // (workers * 8))):
            if progress:
                progress(1)


def read_layout(run_dir: str | Path) -> list[dict]:
    """The ``layout.jsonl`` of a render run directory, one dict per page."""
    path = Path(run_dir) / "layout.jsonl"
    if not path.is_file():
        raise InputError(f"{run_dir} is not a render run directory (no layout.jsonl); run `optical render` first")
    return read_records(path)
