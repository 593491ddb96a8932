"""The diffusion grid: parsing ``--eta``/``--steps`` lists and running the cells resumably.

Every cell's result is appended to ``cells.jsonl`` the moment it finishes (with its
per-query metrics), and ``sweep.csv`` is rebuilt atomically from those records, so an
interrupted sweep loses at most the cell in flight and ``--resume`` skips finished cells.
A fingerprint of everything the numbers depend on (corpus, queries, weights, seed...) is
stored with each record; resuming against a different setup is refused.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from ..artifacts import atomic_write_text
from ..lists import parse_list
from ..records import KeyedLog, count_done
from .metrics import METRIC_NAMES

# ---------------------------------------------------------------------------------------
# Parsing


def parse_eta_list(text: str, option: str = "--eta") -> list[float]:
    """``"0.05,0.1"`` -> [0.05, 0.1]; each eta in (0, 1], the diffusion step sizes an index builds with."""

    def check(value: float) -> str | None:
        if not math.isfinite(value) or not 0 < value <= 1:
            return "must be a number in (0, 1] (eta 0 is no diffusion, where every step count gives the same index)"
        return None

    return parse_list(text, option, "0.05,0.1", float, "a number", check)


def parse_steps_list(text: str, option: str = "--steps") -> list[int]:
    """``"2,4"`` -> [2, 4]; each value a whole number >= 1."""

    def check(value: int) -> str | None:
        if value < 1:
            return (
                "must be >= 1 (0 steps is no diffusion, where every eta gives the same index: a grid of identical "
                "cells)"
            )
        return None

    return parse_list(text, option, "2,4,6,8", int, "a whole number", check)


# ---------------------------------------------------------------------------------------
# Cells and their records


@dataclass(frozen=True)
class DiffusionCell:
    eta: float
    steps: int

    def key(self) -> tuple:
        return ("energy", self.eta, self.steps)


def grid_cells(etas: Iterable[float], steps: Iterable[int]) -> list[DiffusionCell]:
    return [DiffusionCell(float(eta), int(step)) for eta in etas for step in steps]


# Keys that may change between a sweep and its --resume: how it runs, never what it writes (a changed
# grid, tuning or query set would leave cells.jsonl and sweep.csv saying one thing and the summary another:
# run it in a new --output-dir, where the embedding cache makes the corpus free).
DIFFUSION_RESUMABLE = {"runtime.workers", "embed.batch_size", "embed.cache_dir"}


def result_key(record: dict) -> tuple:
    """Identity of a result row: the method and, for energy rows, the cell."""
    if record["method"] == "energy":
        return ("energy", float(record["eta"]), int(record["steps"]))
    return (record["method"], None, None)


def diffusion_cells_done(path: Path, etas: list[float], steps: list[int]) -> int:
    """Energy cells of this grid already recorded in a sweep's cells.jsonl."""
    return count_done(path, result_key, [cell.key() for cell in grid_cells(etas, steps)])


def open_cell_log(path: Path, fingerprint: str, resume: bool) -> KeyedLog:
    """The sweep's cells.jsonl: every result row with the setup's fingerprint; the source of sweep.csv."""
    return KeyedLog(path, result_key, resume=resume, fingerprint=fingerprint)


def ordered_rows(log: KeyedLog) -> list[dict]:
    """Baseline rows first, then energy cells in grid order of insertion."""
    records = list(log.records.values())
    return [r for r in records if r["method"] != "energy"] + [r for r in records if r["method"] == "energy"]


def run_cells(
    log: KeyedLog,
    cells: list[DiffusionCell],
    evaluate: Callable[[DiffusionCell], dict],
    on_done: Callable[[dict, bool], None] | None = None,
) -> None:
    """Evaluate every cell not yet in ``log``; ``on_done(record, skipped)`` after each."""
    for cell in cells:
        key = cell.key()
        if log.done(key):
            if on_done:
                on_done(log.records[key], True)
            continue
        record = log.add({"method": "energy", "eta": cell.eta, "steps": cell.steps, **evaluate(cell)})
        if on_done:
            on_done(record, False)


# ---------------------------------------------------------------------------------------
# sweep.csv and per_query.csv

TIMING_COLUMNS = ("build_seconds", "search_seconds")


def summary_columns() -> list[str]:
    columns = ["method", "eta", "steps"]
    columns += list(METRIC_NAMES)
    columns += [f"{name}_{bound}" for name in METRIC_NAMES for bound in ("low", "high", "cluster_low", "cluster_high")]
    columns += list(TIMING_COLUMNS) + ["n_queries", "n_items"]
    return columns


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_sweep_csv(path: Path, rows: list[dict]) -> Path:
    columns = summary_columns()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(column)) for column in columns])
    return atomic_write_text(path, buffer.getvalue())


def write_per_query_csv(path: Path, rows: list[dict], query_ids: list[str]) -> Path:
    """Long format: one line per (method, cell, query) with every metric of that query."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "eta", "steps", "query_id", *METRIC_NAMES])
    for row in rows:
        per_query = row["per_query"]
        for position, query_id in enumerate(query_ids):
            values = [f"{per_query[name][position]:.6g}" for name in METRIC_NAMES]
            writer.writerow([row["method"], _cell(row.get("eta")), _cell(row.get("steps")), query_id, *values])
    return atomic_write_text(path, buffer.getvalue())
