"""The steps a benchmark run shares after its items are chosen: rows through the one runner, the summary,
the plots (score by length unless the benchmark brings its own), the trackers. LongBench v2, MRCR and
LongBench v1 run exactly these; RULER adds its grid's readers, its generated set and the needles."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from ..artifacts import atomic_write_json
from ..distributed import Processes
from ..engines.reader import Reader, in_flight
from ..memory import PeakMemory, busiest
from ..tracking import log_summary
from .benchmark import Benchmark, item_columns
from .plots import plot_score_by_length
from .runner import BenchSettings, resume_progress, run_benchmark, throughput, wanted_keys, write_summary

# The plots of a finished run: (rows, summary, out_dir, random_weights) -> None.
PlotRun = Callable[[list[dict[str, Any]], dict[str, Any], Path, bool], None]


@dataclass
class BenchSelection:
    settings: BenchSettings
    items: list[Any]
    benchmark: Benchmark
    data_source: str
    done: int = 0  # rows of this selection already on disk (a resume)

    @property
    def rows(self) -> int:
        return len(wanted_keys(self.items, self.settings))

    def count_done(self, resume_from: Path | None) -> "BenchSelection":
        if resume_from is not None:
            columns = item_columns(self.benchmark)
            self.done = resume_progress(resume_from / "items.csv", self.items, self.settings, columns)[0]
        return self


def run_selection(
    cfg,
    selection: BenchSelection,
    reader,
    out_dir: Path,
    *,
    resume: bool,
    procs: Processes,
    name: str,
    progress: Callable[..., None] | None = None,
    extra: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None,
    plot: PlotRun | None = None,
    page_readers: Mapping[str, Reader] | None = None,
) -> dict[str, Any] | None:
    """Every row still to do, then (main process) summary.json (plus ``extra(rows)``), the plots (``plot``;
    by default score_by_length.png, with ``cfg.bench.plots``) and ``cfg.bench.log_with``'s trackers; the
    summary in the main process, None in the others. A benchmark's run is this with its ``name`` (its
    trackers' run name) bound; ``page_readers``: one reader per render setting (RULER's grid)."""
    memory, started = PeakMemory(reader.device), time.perf_counter()
    rows = run_benchmark(
        reader,
        selection.items,
        selection.settings,
        out_dir / "items.csv",
        resume=resume,
        progress=progress,
        procs=procs,
        memory=memory,
        benchmark=selection.benchmark,
        page_readers=page_readers,
    )
    wall_s = time.perf_counter() - started
    peaks = procs.gather(memory.run_peak())  # every process's; the report keeps the busiest
    if rows is None:
        return None
    conditions = len(selection.settings.conditions)
    summary = write_summary(
        rows,
        selection.settings,
        out_dir,
        benchmark=selection.benchmark,
        reader_description=reader.description,
        random_weights=reader.random_weights,
        data_source=selection.data_source,
        parameters=reader.parameters,
        peak_memory_gib=busiest(peaks),
        conventions=reader.conventions,
        throughput=throughput(len(rows) - selection.done, wall_s, conditions, in_flight(reader) * procs.count),
    )
    if extra is not None:
        summary.update(extra(rows))
        write_summary_file(out_dir, summary)
    if cfg.bench.plots and rows:
        (plot or _score_by_length(selection.benchmark.title))(rows, summary, out_dir, reader.random_weights)
    log_summary(cfg.bench.log_with, out_dir, name, summary)
    return summary


def _score_by_length(title: str) -> PlotRun:
    def plot(rows: list[dict[str, Any]], summary: dict[str, Any], out_dir: Path, random_weights: bool) -> None:
        note = " [random weights]" if random_weights else ""
        plot_score_by_length(rows, out_dir / "score_by_length.png", title, note)

    return plot


def write_summary_file(out_dir: Path, summary: dict[str, Any]) -> None:
    atomic_write_json(out_dir / "summary.json", summary)
