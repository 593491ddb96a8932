"""`optical sweep diffusion`: energy search over an eta x steps grid against labels (config: sweep)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from .. import config as config_mod
from .common import (
    ConfigOpt,
    JsonOpt,
    OutputDirOpt,
    OverwriteOpt,
    SetOpt,
    check_resumable,
    claim_output,
    config_default,
    emit_json,
    err,
    handled_errors,
    load,
    progress_bar,
    report_resume,
    run_dir,
    warn,
)

app = typer.Typer(help="Sweep energy-index parameters against real relevance labels.", no_args_is_help=True)

_SWEEP_METRICS = (("mrr", "MRR"), ("map_cut_20", "MAP@20"), ("ndcg_at_10", "NDCG@10"), ("recall_at_10", "R@10"),
                  ("recall_at_20", "R@20"), ("precision_at_10", "P@10"))


@app.command("diffusion")
def sweep_diffusion(
    eta: Annotated[Optional[str], typer.Option("--eta", help="Comma-separated eta values, e.g. 0.05,0.1,0.15,0.2.", show_default=config_default("sweep", "sweep.etas"))] = None,
    steps: Annotated[Optional[str], typer.Option("--steps", help="Comma-separated diffusion step counts, e.g. 2,4,6,8.", show_default=config_default("sweep", "sweep.steps"))] = None,
    num_queries: Annotated[Optional[int], typer.Option("--num-queries", help="Seeded sample of N labelled records as queries (null: all).", show_default=config_default("sweep", "sweep.num_queries"))] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Seeded corpus subset of N records (0 = all).", show_default=config_default("sweep", "sweep.limit"))] = None,
    corpus: Annotated[Optional[Path], typer.Option("--corpus", help="JSONL with id, text and label fields, or Parquet with id, vector and label columns (default: the bundled CVE corpus).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Skip cells already finished in --output-dir.")] = False,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    output_dir: OutputDirOpt = None,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Energy search over an eta x steps grid vs cosine, judged by shared labels (CWE ids)."""
    from ..sweep.diffusion import faiss_available, read_sweep_inputs
    from ..sweep.grid import RESUMABLE_CHANGES, cells_done, parse_eta_list, parse_steps_list
    from ..sweep.pipeline import Hooks, run_diffusion_sweep

    with handled_errors():
        cfg = load("sweep", config, sets)
        etas = parse_eta_list(eta) if eta is not None else list(cfg.sweep.etas)
        step_list = parse_steps_list(steps) if steps is not None else list(cfg.sweep.steps)
        cfg.sweep = config_mod.validate(type(cfg.sweep), cfg.sweep.model_dump() | {"etas": etas, "steps": step_list}
                                        | ({"num_queries": num_queries} if num_queries is not None else {})
                                        | ({"limit": limit or None} if limit is not None else {})
                                        | ({"corpus": str(corpus)} if corpus is not None else {}), "command line")
        claim = claim_output("sweep diffusion", output_dir, resume=resume, overwrite=overwrite)
        check_resumable(claim, cfg, "sweep", RESUMABLE_CHANGES)  # before the corpus is embedded
        if resume:
            done = cells_done(output_dir / "cells.jsonl", etas, step_list)
            report_resume(f"{done} of {len(etas) * len(step_list)} cells done in {output_dir}")
        inputs = read_sweep_inputs(cfg)  # a bad corpus fails here, before the run directory exists
        with_faiss = cfg.sweep.faiss and faiss_available()
        if cfg.sweep.faiss and not with_faiss:
            warn("sweep.faiss=true but faiss is not installed (pip install faiss-cpu); the FAISS baseline is skipped")
        with run_dir("sweep diffusion", cfg, claim) as run, progress_bar("sweep", total=None) as advance:
            embedded = [0]

            def embed_progress(n: int, total: int | None = None) -> None:
                embedded[0] += n
                advance(0, description=f"embedding corpus {embedded[0]}/{total}")

            hooks = Hooks(
                embed=embed_progress,
                stage=lambda name: advance(0, description=name),
                cell=lambda record, skipped: advance(1, total=len(etas) * len(step_list) + 1 + with_faiss,
                                                     description=f"{record['method']} {_cell_name(record)}{' (resumed)' if skipped else ''}"),
                trial=lambda n: advance(0, description="tuning weights"),
            )
            summary = run_diffusion_sweep(cfg, etas, step_list, run.path, resume, hooks, inputs)
            run.record_existing("cells.jsonl", "sweep.csv", "per_query.csv", "heatmaps.png", "tuning.csv", "summary.json", "text_queries.json")
            run.update(sweep_seconds=summary["timing"]["sweep_seconds"])
        _print_sweep_report(summary, run.path)
        for warning in summary.get("warnings", []):
            warn(warning)
        if json_out:
            emit_json({k: v for k, v in summary.items() if not k.startswith("_")})


def _print_versus(title: str, entries: list[tuple[str, Optional[dict]]], cells: bool = False) -> None:
    """A metric per line: energy, cosine, the difference and both paired 95% intervals (queries; label
    clusters); the verdict follows the cluster interval. Narrow enough for an 80-column terminal."""
    from rich import box

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    # the best-cell table names its cell instead of repeating cosine (the table above has it): 80 columns
    columns = ("metric", *(("cell",) if cells else ("cosine",)), "energy", "diff", "per-query 95%", "cluster 95%", "verdict")
    for column in columns:
        table.add_column(column, justify="left" if column in ("metric", "verdict") else "right", no_wrap=True, min_width=len(column))
    for name, entry in entries:
        if not entry or "vs_cosine" not in entry:
            continue
        diff = entry["vs_cosine"]
        verdict = "energy" if entry["beats_cosine"] else "cosine" if entry["worse_than_cosine"] else "tie"
        table.add_row(name, f"{entry['eta']:g}/{entry['steps']}" if cells else f"{entry['cosine']:.4f}", f"{entry['value']:.4f}",
                      f"{diff['difference']:+.4f}", escape(f"[{diff['low']:+.3f},{diff['high']:+.3f}]"),
                      escape(f"[{diff['cluster_low']:+.3f},{diff['cluster_high']:+.3f}]"), verdict)
    err.print(table)


def _cell_name(record: dict) -> str:
    return f"eta={record['eta']:g} steps={record['steps']}" if record["method"] == "energy" else ""


def _print_sweep_report(summary: dict, path: Path) -> None:
    import csv as _csv

    from rich import box

    setup = summary["setup"]
    err.print(f"[bold]{setup['items']} items, {setup['queries']} queries[/] (relevance: shared label; "
              f"{setup['mean_relevant_per_query']:.1f} relevant per query on average), corpus {escape(str(setup['corpus']))}")
    err.print(f"split by label: {setup['tune_queries']} tuning queries ({setup['tune_labels']} labels) make every choice; "
              f"{setup['held_out_queries']} held-out queries ({setup['held_out_labels']} labels, {setup['held_out_clusters']} clusters) "
              f"are scored; {setup['mixed_label_queries_left_out']} queries with labels on both sides left out")
    table = Table(title="sweep: mean over the held-out queries (both 95% intervals in sweep.csv)", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("method", "eta", "steps", *(title for _, title in _SWEEP_METRICS)):
        table.add_column(column, justify="left" if column == "method" else "right", no_wrap=True, min_width=max(4, len(column)))
    with open(path / "sweep.csv", encoding="utf-8") as handle:
        for row in _csv.DictReader(handle):
            table.add_row(escape(row["method"]), row["eta"], row["steps"], *(f"{float(row[m]):.4f}" for m, _ in _SWEEP_METRICS))
    err.print(table)
    default = summary.get("default")
    if default:
        _print_versus(f"default energy (eta={default['eta']:g}, steps={default['steps']}) vs cosine on the held-out queries",
                      [(title, default["metrics"].get(metric)) for metric, title in _SWEEP_METRICS])
    _print_versus("best cell (eta/steps) per metric, chosen on the tuning queries, vs cosine on the held-out queries",
                  [(title, summary["best"].get(metric)) for metric, title in _SWEEP_METRICS], cells=True)
    tuning = summary.get("tuning")
    if tuning:
        weights = ", ".join(f"{k}={v:g}" for k, v in tuning["chosen_weights"].items())
        held = Table(title=f"weight tuning: {tuning['trials']} trials on {tuning['tune_queries']} queries at eta={tuning['cell']['eta']:g} "
                           f"steps={tuning['cell']['steps']} -> {weights}; scored on {tuning['held_out_queries']} held-out queries",
                     title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        for column in ("setting", *(title for _, title in _SWEEP_METRICS)):
            held.add_column(column, justify="left" if column == "setting" else "right")
        for name, row in tuning["held_out"].items():
            held.add_row(name, *(f"{row[m]:.4f}" for m, _ in _SWEEP_METRICS))
        err.print(held)
        diffs = tuning["held_out_tuned_vs_cosine"]
        _print_versus("tuned weights vs cosine on the held-out queries", [
            (title, {"value": tuning["held_out"]["tuned"][m], "cosine": tuning["held_out"]["cosine"][m], "vs_cosine": diffs[m],
                     "beats_cosine": diffs[m]["cluster_low"] > 0, "worse_than_cosine": diffs[m]["cluster_high"] < 0})
            for m, title in _SWEEP_METRICS])
    rows = summary.get("_text_query_rows") or []
    cell = summary.get("text_queries", {}).get("cell", {})
    text_width = max(30, err.width - 38)  # rank, id, CWE and padding take about 38 columns
    for query in dict.fromkeys(row["query"] for row in rows):
        for method in ("energy", "cosine"):
            where = (f" at the best tuned cell (eta={cell['eta']:g} steps={cell['steps']}: best NDCG@10 on the tuning queries)"
                     if method == "energy" else "")
            texts = Table(title=escape(f"{method}{where}: {query!r} (our query)"), title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
            for column in ("#", "id", "CWE", "text"):
                texts.add_column(column, justify="right" if column == "#" else "left")
            for row in rows:
                if row["query"] == query and row["method"] == method:
                    text = row["text"] if len(row["text"]) <= text_width else row["text"][: text_width - 1] + "\u2026"
                    texts.add_row(str(row["rank"]), escape(row["id"]), escape(",".join(row["labels"]) or "-"), escape(text))
            err.print(texts)
    timing = summary["timing"]
    err.print(f"sweep {timing['sweep_seconds']:.1f} s ({timing['cells_evaluated']} evaluated, {timing['cells_skipped']} resumed; "
              f"embedding {setup['embed_seconds']:.1f} s{' cached' if setup['embedding_cache_hit'] else ''}, prepare {setup['prepare_seconds']:.2f} s)")
