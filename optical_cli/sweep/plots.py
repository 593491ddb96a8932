"""Heatmaps of a diffusion sweep: one annotated panel per metric, eta (rows) x steps (columns).

Each panel has its own colour scale (one per metric) that spans the cells and the cosine
baseline, white at the cosine value (diverging map: blue above cosine, red below), so "does
energy beat cosine here" reads off the colour; the cosine value is in the panel title and
the best cell of each panel is framed.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.text import Annotation, Text

from ..plotting import new_figure, save_png
from .metrics import METRIC_NAMES

TITLES = {
    "mrr": "MRR",
    "map_cut_20": "MAP@20 (trec map_cut)",
    "ndcg_at_10": "NDCG@10",
    "recall_at_10": "Recall@10",
    "recall_at_20": "Recall@20",
    "precision_at_10": "Precision@10",
    "precision_at_1": "Precision@1",
    "recall_at_50": "Recall@50",
    "recall_at_100": "Recall@100",
    "distinct_labels_at_20": "distinct labels in the top 20",
}


def metric_grid(rows: list[dict], metric: str, etas: list[float], steps: list[int]) -> np.ndarray:
    """eta x steps matrix of one metric from energy rows (NaN where a cell is missing)."""
    grid = np.full((len(etas), len(steps)), np.nan)
    for row in rows:
        if row.get("method") != "energy":
            continue
        if row["eta"] in etas and row["steps"] in steps:
            grid[etas.index(row["eta"]), steps.index(row["steps"])] = row[metric]
    return grid


def _norm(grid: np.ndarray, centre: float | None) -> TwoSlopeNorm | None:
    """White at the cosine value, red below it, blue above; the range spans the cells and cosine."""
    values = grid[np.isfinite(grid)]
    if values.size == 0:
        return None
    low, high = float(values.min()), float(values.max())
    if centre is None or not math.isfinite(centre):
        centre = (low + high) / 2.0
    pad = 1e-9 + 1e-6 * max(abs(low), abs(high), abs(centre))
    return TwoSlopeNorm(vcenter=centre, vmin=min(low, centre - pad), vmax=max(high, centre + pad))


def write_heatmaps(
    path: str | Path,
    rows: list[dict],
    etas: list[float],
    steps: list[int],
    baseline: dict | None,
    metrics: tuple[str, ...] = METRIC_NAMES,
) -> Path:
    """Write ``heatmaps.png``; ``baseline`` is the cosine row (its values title each panel)."""
    columns = 3
    lines = math.ceil(len(metrics) / columns)
    figure, axes = new_figure((4.6 * columns, 3.8 * lines), lines, columns, squeeze=False)
    for axis, metric in zip(axes.flat, metrics):
        grid = metric_grid(rows, metric, etas, steps)
        centre = baseline.get(metric) if baseline else None
        norm = _norm(grid, centre)
        image = axis.imshow(grid, cmap="RdBu", norm=norm, aspect="auto")
        figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
        axis.set_xticks(range(len(steps)), [str(s) for s in steps])
        axis.set_yticks(range(len(etas)), [f"{e:g}" for e in etas])
        axis.set_xlabel("steps")
        axis.set_ylabel("eta")
        suffix = f" (cosine {centre:.4f})" if centre is not None else ""
        axis.set_title(f"{TITLES.get(metric, metric)}{suffix}", fontsize=10)
        best = np.unravel_index(np.nanargmax(grid), grid.shape) if np.isfinite(grid).any() else None
        for (i, j), value in np.ndenumerate(grid):
            if np.isfinite(value):
                strong = norm is not None and abs(float(norm(value)) - 0.5) > 0.3  # dark cell: light text
                is_best = (i, j) == best
                axis.text(
                    j,
                    i,
                    f"{value:.4f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if strong else "black",
                    fontweight="bold" if is_best else "normal",
                )
        if best is not None:  # frame the best cell of the panel
            axis.add_patch(Rectangle((best[1] - 0.5, best[0] - 0.5), 1, 1, fill=False, edgecolor="gold", linewidth=2.5))
    for axis in list(axes.flat)[len(metrics) :]:
        axis.axis("off")
    figure.suptitle(
        "Energy search over the diffusion grid, held-out queries (colour centred on cosine: blue better, "
        "red worse; framed: highest here)",
        fontsize=11,
    )
    figure.tight_layout()
    return save_png(figure, path, dpi=110)


def write_frontier_plot(path: Path, rows: list[dict], published: tuple[dict, ...], max_error: float) -> None:
    """`sweep render`: ``frontier_figure`` written as a PNG."""
    save_png(frontier_figure(rows, published, max_error), path)


def frontier_figure(rows: list[dict], published: tuple[dict, ...], max_error: float) -> Figure:
    """Error (CER, 95% interval) against full-page text tokens per vision token, one curve per mode (and
    reflow / line spacing / font when they vary), font sizes annotated; the DeepSeek-OCR paper's
    published points (1 - precision, their reader) beside ours, their labels moved clear of ours."""
    figure, axis = new_figure((7.5, 5))
    ours = [_frontier_curve(axis, key, members, varying) for key, members, varying in _frontier_groups(rows)]
    px = [p["compression"] for p in published]
    py = [1.0 - p["precision"] for p in published]
    axis.plot(px, py, "k*--", markersize=11, label="DeepSeek-OCR paper (their reader, Fox): 1 - precision")
    theirs = [
        axis.annotate(
            p["label"] + " (theirs)",
            (p["compression"], 1.0 - p["precision"]),
            textcoords="offset points",
            xytext=(-20, 12),
            fontsize=8,
            arrowprops={"arrowstyle": "-", "color": "0.4", "linewidth": 0.6},
        )
        for p in published
    ]
    axis.axhline(max_error, color="grey", linestyle=":", label=f"sweep.max_error = {max_error:g}")
    axis.set_xlabel("text tokens per vision token (full pages)")
    axis.set_ylabel("character error rate (OCR judge; 95% interval)")
    axis.set_title("Compression frontier: denser pages against legibility")
    axis.set_ylim(bottom=0)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    _move_clear(figure, theirs, [label for labels in ours for label in labels])
    return figure


def _frontier_groups(rows: list[dict]):
    """(key, rows sorted by density, which key parts vary) per curve: mode, reflow, line spacing, font."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["mode"], row["reflow"], row["line_spacing"], row["font"]), []).append(row)
    varying = [len({key[i] for key in groups}) > 1 for i in range(4)]
    for key, members in sorted(groups.items(), key=lambda item: str(item[0])):
        yield key, sorted(members, key=lambda r: r["full_page_tokens_per_vision_token"]), varying


def _frontier_curve(axis, key: tuple, members: list[dict], varying: list[bool]) -> list:
    """One curve with its error bars and font-size labels; returns the labels."""
    x = [r["full_page_tokens_per_vision_token"] for r in members]
    y = [r["cer"] for r in members]
    err = [[max(0.0, r["cer"] - r["cer_low"]) for r in members], [max(0.0, r["cer_high"] - r["cer"]) for r in members]]
    parts = ("", f" reflow={key[1]}", f" spacing {key[2]:g}", f" {Path(key[3]).stem}")
    label = "ours: " + key[0] + "".join(part for part, shown in zip(parts, varying) if shown and part)
    axis.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label)
    return [
        axis.annotate(f"{r['font_size']}px", (a, b), textcoords="offset points", xytext=(4, 4), fontsize=8)
        for r, a, b in zip(members, x, y)
    ]


def _move_clear(figure: Figure, movable: list, fixed: list, step_points: float = 9.0, tries: int = 40) -> None:
    """Raise each movable annotation (in steps of ``step_points``) until its box overlaps no fixed
    annotation and no movable one placed before it: published labels never cover our own."""
    renderer = FigureCanvasAgg(figure).get_renderer()
    taken = [_text_box(text, renderer) for text in fixed]
    for text in movable:
        x, y = text.xyann
        for _ in range(tries):
            if not any(_text_box(text, renderer).overlaps(other) for other in taken):
                break
            y += step_points
            text.xyann = (x, y)
        taken.append(_text_box(text, renderer))


def _text_box(annotation: Annotation, renderer):
    """The display-space box of an annotation's text alone (its own extent includes the arrow)."""
    annotation.update_positions(renderer)
    return Text.get_window_extent(annotation, renderer)


def label_boxes(figure: Figure) -> list[tuple[str, object]]:
    """(text, display-space box) of every annotation on the figure: what a reader sees overlapping."""
    renderer = FigureCanvasAgg(figure).get_renderer()
    return [
        (child.get_text(), _text_box(child, renderer))
        for axis in figure.axes
        for child in axis.get_children()
        if isinstance(child, Annotation)
    ]
