"""Fit a vision-token budget: the rendering (DeepEncoder mode and font size) that reads a whole
document within ``--budget TOKENS`` at the best legibility the render frontier measured.

The frontier's table (``ask.frontier``: the ``frontier.csv`` of a ``sweep frontier`` run, or the
shipped default ``data/frontier/default.csv``, data/frontier/README.md) gives each cell's character
error rate. Cells are tried from the most legible (lowest CER; among equal ones the larger type,
then the mode with more tokens a page); the first whose layout of this document fits the budget
and ``serve.max_pages`` is chosen. Only cells drawn like the config's own pages count (same font,
reflow and line spacing) when the table has any such cell. Pages that are images already (a render
run, a PDF's own pages) have no font to choose: the mode with the most tokens a page that fits is
chosen. A document that fits nowhere is read by selection within the budget, in the config's own
mode and font.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

from ..config.sections import RenderSection
from ..engines.tower import page_tokens
from ..errors import InputError
from ..paths import FRONTIER_TABLE, shown
from ..render.pages import PageRenderer


@dataclass
class Rendering:
    """What ``--budget`` chose for one document."""

    mode: str
    font_size: Optional[int]  # None: the pages are images, no font to choose
    cer: Optional[float]  # the frontier's CER of the chosen cell
    pages: int
    vision_tokens: int
    budget: int
    table: str

    def as_dict(self) -> dict:
        return asdict(self)


def read_frontier(path: str | None) -> tuple[list[dict], str]:
    """The frontier table's judged cells (font_size, mode, cer, reflow, line_spacing, font) and its name."""
    file = Path(path) if path else FRONTIER_TABLE
    name = str(file) if path else shown(FRONTIER_TABLE)
    try:
        with open(file, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise InputError(f"ask.frontier: cannot read {file} ({exc.strerror}); give a sweep frontier run's frontier.csv")
    cells = []
    for row in rows:
        try:
            cells.append(
                {
                    "font_size": int(row["font_size"]),
                    "mode": row["mode"],
                    "cer": float(row["cer"]),
                    "reflow": str(row.get("reflow", "")).lower() in ("true", "1"),
                    "line_spacing": float(row.get("line_spacing") or 0),
                    "font": Path(row.get("font") or "").name,
                }
            )
        except (KeyError, ValueError):
            continue  # a cell the judge did not read (no cer), or another table
    if not cells:
        raise InputError(f"{name}: no judged cells (font_size, mode, cer); give a sweep frontier run's frontier.csv")
    return cells, name


def matching_cells(cells: list[dict], render: RenderSection, modes: Sequence[str]) -> list[dict]:
    """The cells in ``modes`` drawn as ``render`` draws (all of them in those modes if none is)."""
    usable = [cell for cell in cells if cell["mode"] in modes]
    same = [
        cell
        for cell in usable
        if cell["reflow"] == render.reflow
        and abs(cell["line_spacing"] - render.line_spacing) < 1e-6
        and cell["font"] == Path(render.font).name
    ]
    return same or usable


def choose_rendering(
    text: str,
    render: RenderSection,
    budget: int,
    max_pages: int,
    modes: Sequence[str],
    layout_tokens: bool,
    table: str | None = None,
) -> tuple[Optional[Rendering], list[str]]:
    """The most legible (mode, font size) whose pages of ``text`` fit ``budget`` and ``max_pages``,
    or None when none does; with notes."""
    cells, name = read_frontier(table)
    chosen = matching_cells(cells, render, modes)
    notes = (
        []
        if chosen and chosen[0]["font"] == Path(render.font).name
        else [f"the frontier table {name} has no cell drawn like these pages: its cells' legibility is a guide only"]
    )
    order = sorted(chosen, key=lambda c: (c["cer"], -c["font_size"], -page_tokens(c["mode"], layout_tokens)))
    counted: dict[tuple[str, int], int] = {}
    for cell in order:
        per_page = page_tokens(cell["mode"], layout_tokens)
        if per_page > budget:
            continue
        key = (cell["mode"], cell["font_size"])
        if key not in counted:
            section = render.model_copy(update={"mode": cell["mode"], "font_size": cell["font_size"]})
            counted[key] = len(PageRenderer(section).layout(text)[0])
        pages = counted[key]
        if pages <= max_pages and pages * per_page <= budget:
            return Rendering(cell["mode"], cell["font_size"], cell["cer"], pages, pages * per_page, budget, name), notes
    return None, notes


def choose_mode(
    pages: int, budget: int, max_pages: int, modes: Sequence[str], layout_tokens: bool
) -> Optional[Rendering]:
    """Pages that are images: the mode with the most tokens a page in which all ``pages`` fit."""
    if pages > max_pages:
        return None
    for mode in sorted(modes, key=lambda m: -page_tokens(m, layout_tokens)):
        per_page = page_tokens(mode, layout_tokens)
        if pages * per_page <= budget:
            return Rendering(mode, None, None, pages, pages * per_page, budget, "tokens a page")
    return None
