"""Figures for files: matplotlib's object API (no pyplot, so no backend to choose and no window, whatever the
user's default backend), written atomically as PNG."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from .artifacts import atomic_path


def new_figure(figsize: tuple[float, float], nrows: int = 1, ncols: int = 1, **subplots) -> tuple[Figure, object]:
    """A figure and its axes (``Figure.subplots``: one Axes, or an array of them)."""
    figure = Figure(figsize=figsize)
    return figure, figure.subplots(nrows, ncols, **subplots)


def save_png(figure: Figure, path: str | Path, dpi: int = 120) -> Path:
    """The figure as a PNG at ``path``, written atomically (an interrupted run never leaves half an image)."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi)
    return Path(path)
