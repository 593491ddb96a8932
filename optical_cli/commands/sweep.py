"""`optical sweep diffusion` (energy search over an eta x steps grid against labels) and `optical sweep frontier`
(rendering settings against an OCR judge's legibility)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from .common import (
    ConfigOpt,
    JsonOpt,
    OutputDirOpt,
    OverwriteOpt,
    SetOpt,
    all_if_zero,
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
    with_flags,
)

app = typer.Typer(
    help="Sweeps: energy-index parameters against real relevance labels (diffusion); rendering settings against "
    "legibility (frontier).",
    no_args_is_help=True,
)

_SWEEP_METRICS = (
    ("mrr", "MRR"),
    ("map_cut_20", "MAP@20"),
    ("ndcg_at_10", "NDCG@10"),
    ("recall_at_10", "R@10"),
    ("recall_at_20", "R@20"),
    ("precision_at_10", "P@10"),
)
# the head (kept?) and the tail (reached?) of the ranking: summary.json's head_tail
_HEAD_TAIL_METRICS = (
    ("mrr", "MRR"),
    ("precision_at_1", "P@1"),
    ("recall_at_20", "R@20"),
    ("recall_at_50", "R@50"),
    ("recall_at_100", "R@100"),
    ("distinct_labels_at_20", "labels@20"),
)


@app.command("diffusion")
def sweep_diffusion(
    eta: Annotated[
        Optional[str],
        typer.Option(
            "--eta",
            help="Comma-separated eta values, e.g. 0.05,0.1,0.15,0.2.",
            show_default=config_default("diffusion", "sweep.etas"),
        ),
    ] = None,
    steps: Annotated[
        Optional[str],
        typer.Option(
            "--steps",
            help="Comma-separated diffusion step counts, e.g. 2,4,6,8.",
            show_default=config_default("diffusion", "sweep.steps"),
        ),
    ] = None,
    num_queries: Annotated[
        Optional[int],
        typer.Option(
            "--num-queries",
            help="Seeded sample of N labelled records as queries (null: all).",
            show_default=config_default("diffusion", "sweep.num_queries"),
        ),
    ] = None,
    limit: Annotated[
        Optional[int],
        typer.Option(
            "--limit",
            help="Seeded corpus subset of N records (0 = all).",
            show_default=config_default("diffusion", "sweep.limit"),
        ),
    ] = None,
    corpus: Annotated[
        Optional[Path],
        typer.Option(
            "--corpus",
            help="JSONL with id, text and label fields, or Parquet with id, vector and label columns (default: the "
            "bundled CVE corpus).",
        ),
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Skip cells already finished in --output-dir.")] = False,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    output_dir: OutputDirOpt = None,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Energy search over an eta x steps grid vs cosine, judged by shared labels (CWE ids)."""
    from ..sweep.diffusion import read_sweep_inputs
    from ..sweep.grid import RESUMABLE_CHANGES, cells_done, parse_eta_list, parse_steps_list
    from ..sweep.pipeline import OUTPUT_FILES, run_diffusion_sweep

    with handled_errors():
        flags = {
            "--eta": ("sweep.etas", None if eta is None else parse_eta_list(eta)),
            "--steps": ("sweep.steps", None if steps is None else parse_steps_list(steps)),
            "--num-queries": ("sweep.num_queries", num_queries),
            "--limit": ("sweep.limit", all_if_zero(limit)),
            "--corpus": ("sweep.corpus", None if corpus is None else str(corpus)),
        }
        cfg = with_flags(load("diffusion", config, sets), flags)
        claim = claim_output("sweep diffusion", output_dir, resume=resume, overwrite=overwrite)
        check_resumable(claim, cfg, "diffusion", RESUMABLE_CHANGES)  # before the corpus is embedded
        cells = len(cfg.sweep.etas) * len(cfg.sweep.steps)
        if claim.resuming:
            done = cells_done(output_dir / "cells.jsonl", cfg.sweep.etas, cfg.sweep.steps)
            report_resume(f"{done} of {cells} cells done in {output_dir}")
        inputs = read_sweep_inputs(cfg)  # a bad corpus fails here, before the run directory exists
        with run_dir("sweep diffusion", cfg, claim) as run, progress_bar("sweep", total=cells) as advance:
            summary = run_diffusion_sweep(cfg, run.path, resume, _diffusion_hooks(advance), inputs)
            run.record_existing(*OUTPUT_FILES)
            run.update(sweep_seconds=summary["timing"]["sweep_seconds"])
        _print_sweep_report(summary, run.path)
        for warning in summary.get("warnings", []):
            warn(warning)
        if json_out:
            emit_json({k: v for k, v in summary.items() if not k.startswith("_")})


def _diffusion_hooks(advance):
    """The progress bar counts grid cells; baselines and later stages show in its description."""
    from ..sweep.pipeline import Hooks

    state = {"stage": "cells", "embedded": 0}

    def embed(n: int, total: int | None = None) -> None:
        state["embedded"] += n
        advance(0, description=f"embedding corpus {state['embedded']}/{total}")

    def cell(record: dict, skipped: bool) -> None:
        energy = record["method"] == "energy"
        name = f"{record['method']} {_cell_name(record)}" if energy else f"{record['method']} baseline"
        advance(1 if energy else 0, description=f"cells: {name}{' (resumed)' if skipped else ''}")

    def stage(name: str) -> None:  # embedding, sweeping, then the stages after the grid
        if name == "sweeping":
            state["stage"] = "sweeping"
        before = state["stage"] == "cells"
        advance(0, description=name if before else "cells" if name == "sweeping" else f"cells done; {name}")

    return Hooks(
        embed=embed, stage=stage, cell=cell, trial=lambda n: advance(0, description="cells done; tuning weights")
    )


def _print_versus(title: str, entries: list[tuple[str, Optional[dict]]], cells: bool = False) -> None:
    """A metric per line: energy, cosine, the difference and both paired 95% intervals (queries; label
    clusters); the verdict follows the cluster interval. Narrow enough for an 80-column terminal."""
    from rich import box

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    # the best-cell table names its cell instead of repeating cosine (the table above has it): 80 columns
    columns = (
        "metric",
        *(("cell",) if cells else ("cosine",)),
        "energy",
        "diff",
        "per-query 95%",
        "cluster 95%",
        "verdict",
    )
    for column in columns:
        table.add_column(
            column, justify="left" if column in ("metric", "verdict") else "right", no_wrap=True, min_width=len(column)
        )
    for name, entry in entries:
        if not entry or "vs_cosine" not in entry:
            continue
        diff = entry["vs_cosine"]
        verdict = "energy" if entry["beats_cosine"] else "cosine" if entry["worse_than_cosine"] else "tie"
        table.add_row(
            name,
            f"{entry['eta']:g}/{entry['steps']}" if cells else f"{entry['cosine']:.4f}",
            f"{entry['value']:.4f}",
            f"{diff['difference']:+.4f}",
            escape(f"[{diff['low']:+.3f},{diff['high']:+.3f}]"),
            escape(f"[{diff['cluster_low']:+.3f},{diff['cluster_high']:+.3f}]"),
            verdict,
        )
    err.print(table)


def _cell_name(record: dict) -> str:
    return f"eta={record['eta']:g} steps={record['steps']}" if record["method"] == "energy" else ""


def _print_sweep_report(summary: dict, path: Path) -> None:
    import csv as _csv

    from rich import box

    setup = summary["setup"]
    err.print(
        f"[bold]{setup['items']} items, {setup['queries']} queries[/] (relevance: shared label; "
        f"{setup['mean_relevant_per_query']:.1f} relevant per query on average), corpus {escape(str(setup['corpus']))}"
    )
    err.print(
        f"split by label: {setup['tune_queries']} tuning queries ({setup['tune_labels']} labels) make every choice; "
        f"{setup['held_out_queries']} held-out queries ({setup['held_out_labels']} labels, "
        f"{setup['held_out_clusters']} clusters) "
        f"are scored; {setup['mixed_label_queries_left_out']} queries with labels on both sides left out"
    )
    table = Table(
        title="sweep: mean over the held-out queries (both 95% intervals in sweep.csv)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for column in ("method", "eta", "steps", *(title for _, title in _SWEEP_METRICS)):
        table.add_column(
            column, justify="left" if column == "method" else "right", no_wrap=True, min_width=max(4, len(column))
        )
    with open(path / "sweep.csv", encoding="utf-8") as handle:
        for row in _csv.DictReader(handle):
            table.add_row(
                escape(row["method"]), row["eta"], row["steps"], *(f"{float(row[m]):.4f}" for m, _ in _SWEEP_METRICS)
            )
    err.print(table)
    default = summary.get("default")
    if default:
        _print_versus(
            f"default energy (eta={default['eta']:g}, steps={default['steps']}) vs cosine on the held-out queries",
            [(title, default["metrics"].get(metric)) for metric, title in _SWEEP_METRICS],
        )
        _print_versus(
            "head (MRR, P@1) and tail (recall@20/50/100, distinct labels in the top 20): default energy vs cosine",
            [(title, default["metrics"].get(metric)) for metric, title in _HEAD_TAIL_METRICS],
        )
    _print_versus(
        "best cell (eta/steps) per metric, chosen on the tuning queries, vs cosine on the held-out queries",
        [(title, summary["best"].get(metric)) for metric, title in _SWEEP_METRICS],
        cells=True,
    )
    tuning = summary.get("tuning")
    if tuning:
        weights = ", ".join(f"{k}={v:g}" for k, v in tuning["chosen_weights"].items())
        held = Table(
            title=f"weight tuning: {tuning['trials']} trials on {tuning['tune_queries']} queries at "
            f"eta={tuning['cell']['eta']:g} "
            f"steps={tuning['cell']['steps']} -> {weights}; scored on {tuning['held_out_queries']} held-out queries",
            title_justify="left",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
        )
        for column in ("setting", *(title for _, title in _SWEEP_METRICS)):
            held.add_column(column, justify="left" if column == "setting" else "right")
        for name, row in tuning["held_out"].items():
            held.add_row(name, *(f"{row[m]:.4f}" for m, _ in _SWEEP_METRICS))
        err.print(held)
        diffs = tuning["held_out_tuned_vs_cosine"]
        _print_versus(
            "tuned weights vs cosine on the held-out queries",
            [
                (
                    title,
                    {
                        "value": tuning["held_out"]["tuned"][m],
                        "cosine": tuning["held_out"]["cosine"][m],
                        "vs_cosine": diffs[m],
                        "beats_cosine": diffs[m]["cluster_low"] > 0,
                        "worse_than_cosine": diffs[m]["cluster_high"] < 0,
                    },
                )
                for m, title in _SWEEP_METRICS
            ],
        )
    rows = summary.get("_text_query_rows") or []
    cell = summary.get("text_queries", {}).get("cell", {})
    text_width = max(30, err.width - 38)  # rank, id, CWE and padding take about 38 columns
    for query in dict.fromkeys(row["query"] for row in rows):
        for method in ("energy", "cosine"):
            where = (
                f" at the best tuned cell (eta={cell['eta']:g} steps={cell['steps']}: best NDCG@10 on the tuning "
                "queries)"
                if method == "energy"
                else ""
            )
            texts = Table(
                title=escape(f"{method}{where}: {query!r} (our query)"),
                title_justify="left",
                box=box.SIMPLE_HEAD,
                pad_edge=False,
            )
            for column in ("#", "id", "CWE", "text"):
                texts.add_column(column, justify="right" if column == "#" else "left")
            for row in rows:
                if row["query"] == query and row["method"] == method:
                    text = row["text"] if len(row["text"]) <= text_width else row["text"][: text_width - 1] + "\u2026"
                    texts.add_row(
                        str(row["rank"]), escape(row["id"]), escape(",".join(row["labels"]) or "-"), escape(text)
                    )
            err.print(texts)
    timing = summary["timing"]
    err.print(
        f"sweep {timing['sweep_seconds']:.1f} s ({timing['cells_evaluated']} evaluated, {timing['cells_skipped']} "
        "resumed; "
        f"embedding {setup['embed_seconds']:.1f} s{' cached' if setup['embedding_cache_hit'] else ''}, prepare "
        f"{setup['prepare_seconds']:.2f} s)"
    )


@app.command("frontier")
def sweep_frontier(
    context: typer.Context,
    inputs: Annotated[
        Optional[list[str]],
        typer.Option(
            "--input",
            "-i",
            metavar="PATH",
            help="A document (.txt/.md/.pdf) or a directory of them (repeatable; default: the bundled sample and CVE "
            "text).",
            show_default=False,
        ),
    ] = None,
    font_size: Annotated[
        Optional[str],
        typer.Option(
            "--font-size",
            help="Comma-separated font sizes in px, e.g. 6,8,10,12.",
            show_default=config_default("frontier", "sweep.font_sizes"),
        ),
    ] = None,
    mode: Annotated[
        Optional[str],
        typer.Option(
            "--mode",
            help="Comma-separated DeepEncoder modes: tiny, small, base, large, gundam.",
            show_default=config_default("frontier", "sweep.modes"),
        ),
    ] = None,
    judge: Annotated[
        Optional[str],
        typer.Option(
            "--judge",
            help="Who reads the pages: ocr (PP-OCRv4 recogniser on each drawn line segment).",
            show_default=config_default("frontier", "sweep.judge"),
        ),
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Skip cells already finished in --output-dir.")] = False,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    output_dir: OutputDirOpt = None,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """The compression frontier: text tokens per vision token against an OCR judge's error, over font size x mode
    x reflow x line spacing x font."""
    from ..render.frontier import (
        OUTPUT_FILES,
        RESUMABLE_CHANGES,
        Hooks,
        cells_done,
        check_cells,
        read_inputs,
        run_render_sweep,
    )

    if context.info_name == "render":
        warn("`optical sweep render` is the old name of `optical sweep frontier`; use `sweep frontier`")
    with handled_errors():
        cfg = with_flags(load("frontier", config, sets), _render_flags(inputs, font_size, mode, judge))
        claim = claim_output("sweep frontier", output_dir, resume=resume, overwrite=overwrite)
        check_resumable(claim, cfg, "frontier", RESUMABLE_CHANGES)
        done, cells = cells_done(cfg, claim.path if claim.resuming else None)
        if claim.resuming:
            report_resume(f"{done} of {cells} cells done in {output_dir}")
        documents = read_inputs(cfg)  # bad inputs fail here, before the run directory exists
        check_cells(cfg)  # a font or size that cannot lay out a page fails before any work
        directory = run_dir("sweep frontier", cfg, claim, device="cpu")
        with directory as run, progress_bar("sweep frontier", cells) as advance:
            summary = run_render_sweep(cfg, documents, run.path, resume, _render_hooks(advance, Hooks))
            run.record_existing(*OUTPUT_FILES)
            run.update(sweep_seconds=summary["timing"]["seconds"])
        _print_frontier(summary)
        if "warning" in summary:
            warn(summary["warning"])
        if json_out:
            emit_json(summary | {"output_dir": str(run.path)})


# the name of earlier versions: the same command, announced as deprecated when run under it
app.command("render", hidden=True)(sweep_frontier)


def _render_flags(inputs, font_size, mode, judge) -> dict:
    """sweep frontier's flags as config keys (``with_flags``), each list checked by its parser."""
    from ..render.frontier import MODE_CHOICES, parse_choices, parse_int_list

    hint = "the trained-reader judge is not built yet"
    judged = None if judge is None else parse_choices(judge, "--judge", ("ocr",), True, hint)
    return {
        "--input": ("sweep.inputs", list(inputs) if inputs else None),
        "--font-size": ("sweep.font_sizes", None if font_size is None else parse_int_list(font_size, "--font-size")),
        "--mode": ("sweep.modes", None if mode is None else parse_choices(mode, "--mode", MODE_CHOICES)),
        "--judge": ("sweep.judge", judged),
    }


def _render_hooks(advance, hooks_class):
    """Progress per finished cell (its CER), and the stage names."""

    def cell(record: dict, skipped: bool) -> None:
        resumed = " (resumed)" if skipped else ""
        advance(1, description=f"{_render_cell_name(record)}: cer {record['cer']:.3f}{resumed}")

    return hooks_class(cell=cell, stage=lambda name: advance(0, description=name))


def _render_cell_name(record: dict) -> str:
    return (
        f"{record['mode']} {record['font_size']}px{' reflow' if record['reflow'] else ''} x{record['line_spacing']:g}"
    )


def _print_frontier(summary: dict) -> None:
    from rich import box

    err.print(f"judge: {escape(summary['judge'])}")
    table = Table(
        title="compression frontier (tok/vt: text tokens per vision token)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        padding=(0, 1, 0, 0),
    )
    for column in ("mode", "px", "reflow", "ls", "pages", "chars/pg", "tok/vt", "full", "cer", "cer 95%"):
        table.add_column(column, justify="left" if column == "mode" else "right", no_wrap=True, min_width=len(column))
    chosen = summary["operating_point"]
    for row in summary["cells"]:
        mark = (
            "*"
            if chosen and all(row[k] == chosen[k] for k in ("font_size", "mode", "reflow", "line_spacing", "font"))
            else ""
        )
        font = (
            "" if row["font"] == "DejaVuSansMono" else " " + Path(row["font"]).stem
        )  # only when the grid varies the font
        table.add_row(
            row["mode"] + mark + font,
            str(row["font_size"]),
            "yes" if row["reflow"] else "no",
            f"{row['line_spacing']:g}",
            str(row["pages"]),
            f"{row['characters_per_page']:.0f}",
            f"{row['tokens_per_vision_token']:.2f}",
            f"{row['full_page_tokens_per_vision_token']:.2f}",
            f"{row['cer']:.4f}",
            escape(f"[{row['cer_low']:.3f},{row['cer_high']:.3f}]"),
        )
    err.print(table)
    if chosen:
        err.print(
            f"operating point (*): densest cell with cer <= {summary['max_error']:g}: "
            + escape(" ".join(summary["operating_point_set"]))
        )
