"""The whole `optical sweep diffusion` run as one function, for the CLI and for Python callers.

Artifacts (all in ``out_dir``): cells.jsonl (resumable per-cell records), sweep.csv,
per_query.csv, heatmaps.png, tuning.csv, summary.json, text_queries.json.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ..artifacts import atomic_write_json, atomic_write_text
from ..index.search import Searcher
from ..tracking import log_summary
from . import grid as grid_mod
from . import tuning as tuning_mod
from .config import DiffusionConfig
from .diffusion import (
    SweepInputs,
    SweepResult,
    baseline_row,
    best_cells,
    evaluate_ranking,
    finish_cell,
    query_block,
    run_sweep,
    setup_sweep,
    summary_document,
    text_query_table,
)
from .metrics import METRIC_NAMES
from .plots import write_heatmaps


@dataclass
class DiffusionHooks:
    """Progress callbacks of the CLI layer (all optional)."""

    embed: Optional[Callable[[int], None]] = None  # texts embedded
    cell: Optional[Callable[[dict, bool], None]] = None  # a row finished (record, skipped)
    trial: Optional[Callable[[int], None]] = None  # tuning trials done
    stage: Optional[Callable[[str], None]] = None  # a named stage starts


def _stage(hooks: DiffusionHooks, name: str) -> None:
    if hooks.stage:
        hooks.stage(name)


def write_tuning_csv(path: Path, trials: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    columns = [*tuning_mod.WEIGHT_NAMES, *METRIC_NAMES]
    writer.writerow(columns)
    for trial in trials:
        writer.writerow([f"{trial[c]:.6g}" for c in columns])
    atomic_write_text(path, buffer.getvalue())


def run_tuning(result: SweepResult, out_dir: Path, hooks: DiffusionHooks) -> Optional[dict]:
    setup = result.setup
    cfg = setup.cfg
    cosine = baseline_row(result.rows)
    if not cfg.tuning.enabled or cosine is None:
        return None
    tune_positions, held_positions = setup.split.tune, setup.split.held
    cell = tuning_mod.choose_cell(result.rows, tune_positions, cfg.tuning.metric)
    searcher = Searcher(finish_cell(setup, cell)[0])
    defaults = {"w_lambda": cfg.search.w_lambda, "w_G": cfg.search.w_G, "w_D": cfg.search.w_D}
    report, trials = tuning_mod.tune(
        searcher,
        cell,
        setup.query_vectors(),
        lambda ranked, positions: evaluate_ranking(setup, ranked, positions),
        cosine["per_query"],
        defaults,
        cfg.tuning,
        tune_positions,
        held_positions,
        setup.held_clusters,
        cfg.sweep.depth + 1,
        cfg.sweep.bootstrap,
        cfg.runtime.seed,
        block=query_block(len(setup.corpus)),
        progress=hooks.trial,
    )
    write_tuning_csv(out_dir / "tuning.csv", trials)
    return report


DIFFUSION_FILES = (
    "cells.jsonl",
    "sweep.csv",
    "per_query.csv",
    "heatmaps.png",
    "tuning.csv",
    "summary.json",
    "text_queries.json",
)


def run_diffusion_sweep(
    cfg: DiffusionConfig,
    out_dir: Path,
    resume: bool = False,
    hooks: Optional[DiffusionHooks] = None,
    inputs: Optional[SweepInputs] = None,
) -> dict:
    """Set up, sweep the ``cfg.sweep`` grid, tune, plot and summarise; returns the summary document
    (also summary.json).

    ``inputs`` (``read_sweep_inputs``) lets a caller check the corpus before creating ``out_dir``.
    """
    hooks = hooks or DiffusionHooks()
    etas, steps = list(cfg.sweep.etas), list(cfg.sweep.steps)
    out_dir = Path(out_dir)
    started = time.perf_counter()
    _stage(hooks, "embedding corpus")
    setup = setup_sweep(cfg, hooks.embed, inputs)
    _stage(hooks, "sweeping")
    result = run_sweep(setup, etas, steps, out_dir, resume, hooks.cell)
    grid_mod.write_per_query_csv(out_dir / "per_query.csv", result.rows, setup.query_ids)
    write_heatmaps(out_dir / "heatmaps.png", result.rows, etas, steps, baseline_row(result.rows))
    _stage(hooks, "tuning weights")
    tuning_started = time.perf_counter()
    tuning = run_tuning(result, out_dir, hooks)
    document = summary_document(result, tuning)
    document["timing"]["tuning_seconds"] = round(time.perf_counter() - tuning_started, 3)
    best = best_cells(result).get("ndcg_at_10")
    if best is not None and cfg.sweep.text_queries:
        _stage(hooks, "text queries")
        cell = grid_mod.DiffusionCell(best["eta"], best["steps"])
        table = text_query_table(setup, cell)
        atomic_write_json(out_dir / "text_queries.json", table)
        document["text_queries"] = {
            "cell": {"eta": cell.eta, "steps": cell.steps},
            "cell_chosen_by": "best NDCG@10 on the tuning queries (not build.eta/build.steps)",
            "queries": list(cfg.sweep.text_queries),
            "source": "ours (the published post did not give its query texts)",
        }
        document["_text_query_rows"] = table
    document["timing"]["total_seconds"] = round(time.perf_counter() - started, 3)
    public = {k: v for k, v in document.items() if not k.startswith("_")}
    atomic_write_json(out_dir / "summary.json", public)
    log_summary(cfg.sweep.log_with, out_dir, "sweep-diffusion", public)
    return document
