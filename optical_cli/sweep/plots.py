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
from matplotlib.colors import TwoSlopeNorm
from matplotlib.patches import Rectangle

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
