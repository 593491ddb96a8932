"""`optical bench longbench` as steps a caller (the CLI, a script) runs in order.

1. :func:`select` reads the data and the selection (a bad file fails before any model loads) and,
   on a resume, counts the rows already on disk;
2. :func:`build_reader` (``bench/models.py``) loads what the conditions need on the configured engine;
3. :func:`run` runs the rows still to do into a run directory and writes ``summary.json`` and the plots.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from ..engines.vllm_import import vllm_version
from ..models.loading import Download, require_downloads
from ..models.provenance import chain_downloads
from .benchmark import LONGBENCH_V2
from .config import LongBenchConfig
from .data import DatasetUnavailable
from .plots import plot_accuracy_by_length, plot_cost_vs_length
from .runner import load_selection, settings_from
from .steps import BenchSelection, run_selection

SUMMARY_FILES = ("summary.json", "accuracy_by_length.png", "cost_vs_length.png")


def select(cfg: LongBenchConfig, resume_from: Path | None = None, progress=None) -> BenchSelection:
    """The items and settings ``cfg`` asks for; with ``resume_from`` (a run directory), the rows done there.

    A bad data file fails here, before any model loads; offline, every missing download (the dataset,
    the adapter, Qwen3-VL, DeepEncoder) is named in one error, with the line that fetches each. (``progress``:
    the shared steps' item bar; LongBench's items are read at once.)"""
    try:
        items, missing = load_selection(cfg.bench, cfg.runtime.seed), []
    except DatasetUnavailable as exc:
        items, missing, unavailable = None, [_dataset_download(cfg)], exc
    require_downloads([] if cfg.bench.server else model_downloads(cfg), known_missing=missing)
    if items is None:
        raise unavailable
    selection = BenchSelection(settings_from(cfg.bench, cfg.runtime.seed), items, LONGBENCH_V2, cfg.bench.data)
    return selection.count_done(resume_from)


def _dataset_download(cfg: LongBenchConfig) -> Download:
    return Download("LongBench v2's items", cfg.bench.data, "data.json", "bench.data", repo_type="dataset")


def model_downloads(cfg: LongBenchConfig) -> list[Download]:
    """What the conditions will load: Qwen3-VL and its tokenizer, the adapter (optical), DeepEncoder's
    weights (optical and native-matched, whose budget is the pages' tokens)."""
    conditions = set(cfg.bench.conditions)
    adapter = cfg.bench.adapter if "optical" in conditions else None
    encoder = cfg.deepencoder.weights if conditions & {"optical", "native-matched"} else None
    return chain_downloads(cfg.vlm, encoder, adapter, "bench.adapter")


def engine_record(cfg: LongBenchConfig) -> dict[str, Any]:
    """For the manifest: the engine (or the server), and with vLLM its version and parallel layout."""
    if cfg.bench.server:
        return {"engine": "server", "server": {"url": cfg.bench.server, "model": cfg.bench.served_model_name}}
    if cfg.bench.engine != "vllm":
        return {"engine": "hf"}
    section = cfg.vllm
    keys = ("tensor_parallel_size", "pipeline_parallel_size", "dtype", "enforce_eager", "max_model_len")
    keys += ("max_num_seqs", "prefix_caching", "pages")
    return {"engine": "vllm", "vllm": {"version": vllm_version(), **{key: getattr(section, key) for key in keys}}}


def plot_longbench(rows: list[dict[str, Any]], summary: dict[str, Any], out_dir: Path, random_weights: bool) -> None:
    """LongBench v2's plots: accuracy by length bucket, cost against length."""
    note = " [random weights: not a result]" if random_weights else ""
    plot_accuracy_by_length(summary, out_dir / "accuracy_by_length.png", note)
    conditions = summary["settings"]["conditions"]
    plot_cost_vs_length(rows, conditions, out_dir / "cost_vs_length.png", note)


# Run the selection's rows still to do into a run directory, then summary.json and the plots: the summary
# in the main process, None in the others (under accelerate launch).
run = partial(run_selection, name="bench-longbench", plot=plot_longbench)


def failed_conditions(summary: dict[str, Any]) -> list[str]:
    """Conditions every item of which failed: the run fails (exit 1), its results kept."""
    return [name for name, block in summary["conditions"].items() if block["n"] and not block["completed"]]
