"""`optical bench longbench` as steps a caller (the CLI, a script) runs in order.

1. :func:`select` reads the data and the selection (a bad file fails before any model loads) and,
   on a resume, counts the rows already on disk;
2. :func:`build_reader` (``bench/models.py``) loads what the conditions need on the configured engine;
3. :func:`run` runs the rows still to do into a run directory and writes ``summary.json`` and the plots.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..distributed import Processes
from ..engines.reader import Reader, in_flight
from ..engines.vllm_import import vllm_version
from ..memory import PeakMemory, busiest
from ..models.loading import Download, require_downloads
from ..models.provenance import chain_downloads
from ..tracking import log_summary
from .config import LongBenchConfig
from .data import DatasetUnavailable, LongBenchItem
from .runner import BenchSettings, finish_run, load_selection, resume_progress, run_benchmark, settings_from, throughput

SUMMARY_FILES = ("summary.json", "accuracy_by_length.png", "cost_vs_length.png")


@dataclass
class Selection:
    settings: BenchSettings
    items: list[LongBenchItem]
    done: int = 0  # (item, condition) rows of this selection already on disk (a resume)

    @property
    def rows(self) -> int:
        return len(self.items) * len(self.settings.conditions)


def select(cfg: LongBenchConfig, resume_from: Path | None = None, progress=None) -> Selection:
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
    selection = Selection(settings_from(cfg.bench, cfg.runtime.seed), items)
    if resume_from is not None:
        selection.done = resume_progress(resume_from / "items.csv", selection.items, selection.settings)[0]
    return selection


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


def run(
    cfg: LongBenchConfig,
    selection: Selection,
    reader: Reader,
    out_dir: Path,
    *,
    resume: bool,
    procs: Processes,
    progress: Callable[..., None] | None = None,
) -> dict[str, Any] | None:
    """Run the selection's rows still to do into ``out_dir`` (items.csv) and write the summary and the
    plots; returns the summary in the main process, None in the others (under accelerate launch)."""
    memory = PeakMemory(reader.device)
    started = time.perf_counter()
    rows = run_benchmark(
        reader,
        selection.items,
        selection.settings,
        out_dir / "items.csv",
        resume=resume,
        progress=progress,
        procs=procs,
        memory=memory,
    )
    wall_s = time.perf_counter() - started
    peaks = procs.gather(memory.run_peak())  # every process's; the report keeps the busiest
    if rows is None:
        return None
    conditions = len(selection.settings.conditions)
    summary = finish_run(
        rows,
        selection.settings,
        out_dir,
        reader_description=reader.description,
        random_weights=reader.random_weights,
        data_source=cfg.bench.data,
        plots=cfg.bench.plots,
        parameters=reader.parameters,
        peak_memory_gib=busiest(peaks),
        conventions=reader.conventions,
        throughput=throughput(len(rows) - selection.done, wall_s, conditions, in_flight(reader) * procs.count),
    )
    log_summary(cfg.bench.log_with, out_dir, "bench-longbench", summary)
    return summary


def failed_conditions(summary: dict[str, Any]) -> list[str]:
    """Conditions every item of which failed: the run fails (exit 1), its results kept."""
    return [name for name, block in summary["conditions"].items() if block["n"] and not block["completed"]]
