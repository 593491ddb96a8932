"""The sweeps' reports: `sweep diffusion` (the grid against cosine with paired intervals, the best cells,
the tuned weights, the qualitative top-k tables) and `sweep frontier` (the compression frontier)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

from rich import box
from rich.markup import escape
from rich.table import Table

from .console import err

SWEEP_METRICS = (
    ("mrr", "MRR"),
    ("map_cut_20", "MAP@20"),
    ("ndcg_at_10", "NDCG@10"),
    ("recall_at_10", "R@10"),
    ("recall_at_20", "R@20"),
    ("precision_at_10", "P@10"),
)
# the head (kept?) and the tail (reached?) of the ranking: summary.json's head_tail
HEAD_TAIL_METRICS = (
    ("mrr", "MRR"),
    ("precision_at_1", "P@1"),
    ("recall_at_20", "R@20"),
    ("recall_at_50", "R@50"),
    ("recall_at_100", "R@100"),
    ("distinct_labels_at_20", "labels@20"),
)


def _table(
    title: str, columns: tuple[str, ...], left: tuple[str, ...] = ("metric",), min_width: int = 0, fixed=True, **options
) -> Table:
    """A report table: ``left`` columns left-aligned, the others right; ``fixed`` columns never wrap and are at
    least as wide as their name (and ``min_width``)."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, **options)
    for column in columns:
        width = {"no_wrap": True, "min_width": max(min_width, len(column))} if fixed else {}
        table.add_column(column, justify="left" if column in left else "right", **width)
    return table


def print_versus(title: str, entries: list[tuple[str, Optional[dict]]], cells: bool = False) -> None:
    """A metric per line: energy, cosine, the difference and both paired 95% intervals (queries; label
    clusters); the verdict follows the cluster interval. Narrow enough for an 80-column terminal."""
    # the best-cell table names its cell instead of repeating cosine (the table above has it): 80 columns
    second = ("cell",) if cells else ("cosine",)
    columns = ("metric", *second, "energy", "diff", "per-query 95%", "cluster 95%", "verdict")
    table = _table(title, columns, left=("metric", "verdict"), padding=(0, 1, 0, 0))
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


def cell_name(record: dict) -> str:
    return f"eta={record['eta']:g} steps={record['steps']}" if record["method"] == "energy" else ""


def print_sweep_report(summary: dict, path: Path) -> None:
    """Everything `sweep diffusion` prints after its grid: setup, the grid table, the comparisons with
    cosine, the tuning, the qualitative tables and the timing line."""
    _print_setup(summary["setup"])
    _print_grid(path / "sweep.csv")
    _print_comparisons(summary)
    if summary.get("tuning"):
        _print_tuning(summary["tuning"])
    _print_text_queries(summary.get("_text_query_rows") or [], summary.get("text_queries", {}).get("cell", {}))
    timing, setup = summary["timing"], summary["setup"]
    err.print(
        f"sweep {timing['sweep_seconds']:.1f} s ({timing['cells_evaluated']} evaluated, {timing['cells_skipped']} "
        f"resumed; embedding {setup['embed_seconds']:.1f} s{' cached' if setup['embedding_cache_hit'] else ''}, "
        f"prepare {setup['prepare_seconds']:.2f} s)"
    )


def _print_setup(setup: dict) -> None:
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


def _print_grid(sweep_csv: Path) -> None:
    columns = ("method", "eta", "steps", *(title for _, title in SWEEP_METRICS))
    title = "sweep: mean over the held-out queries (both 95% intervals in sweep.csv)"
    table = _table(title, columns, ("method",), min_width=4)
    with open(sweep_csv, encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            values = (f"{float(row[m]):.4f}" for m, _ in SWEEP_METRICS)
            table.add_row(escape(row["method"]), row["eta"], row["steps"], *values)
    err.print(table)


def _print_comparisons(summary: dict) -> None:
    default = summary.get("default")
    if default:
        cell = f"eta={default['eta']:g}, steps={default['steps']}"
        print_versus(
            f"default energy ({cell}) vs cosine on the held-out queries",
            [(title, default["metrics"].get(metric)) for metric, title in SWEEP_METRICS],
        )
        print_versus(
            "head (MRR, P@1) and tail (recall@20/50/100, distinct labels in the top 20): default energy vs cosine",
            [(title, default["metrics"].get(metric)) for metric, title in HEAD_TAIL_METRICS],
        )
    print_versus(
        "best cell (eta/steps) per metric, chosen on the tuning queries, vs cosine on the held-out queries",
        [(title, summary["best"].get(metric)) for metric, title in SWEEP_METRICS],
        cells=True,
    )


def _print_tuning(tuning: dict) -> None:
    weights = ", ".join(f"{k}={v:g}" for k, v in tuning["chosen_weights"].items())
    cell = f"eta={tuning['cell']['eta']:g} steps={tuning['cell']['steps']}"
    title = (
        f"weight tuning: {tuning['trials']} trials on {tuning['tune_queries']} queries at {cell} -> {weights}; "
        f"scored on {tuning['held_out_queries']} held-out queries"
    )
    held = _table(title, ("setting", *(name for _, name in SWEEP_METRICS)), ("setting",), fixed=False)
    for name, row in tuning["held_out"].items():
        held.add_row(name, *(f"{row[m]:.4f}" for m, _ in SWEEP_METRICS))
    err.print(held)
    diffs = tuning["held_out_tuned_vs_cosine"]
    versus = {
        m: {
            "value": tuning["held_out"]["tuned"][m],
            "cosine": tuning["held_out"]["cosine"][m],
            "vs_cosine": diffs[m],
            "beats_cosine": diffs[m]["cluster_low"] > 0,
            "worse_than_cosine": diffs[m]["cluster_high"] < 0,
        }
        for m, _ in SWEEP_METRICS
    }
    print_versus("tuned weights vs cosine on the held-out queries", [(t, versus[m]) for m, t in SWEEP_METRICS])


def _print_text_queries(rows: list[dict], cell: dict) -> None:
    """Our query texts' top-k tables, energy at the best tuned cell and cosine, texts cut to the terminal."""
    text_width = max(30, err.width - 38)  # rank, id, CWE and padding take about 38 columns
    for query in dict.fromkeys(row["query"] for row in rows):
        for method in ("energy", "cosine"):
            where = (
                f" at the best tuned cell (eta={cell['eta']:g} steps={cell['steps']}: best NDCG@10 on the tuning "
                "queries)"
                if method == "energy"
                else ""
            )
            title = escape(f"{method}{where}: {query!r} (our query)")
            texts = _table(title, ("#", "id", "CWE", "text"), ("id", "CWE", "text"), fixed=False)
            for row in rows:
                if row["query"] == query and row["method"] == method:
                    text = row["text"] if len(row["text"]) <= text_width else row["text"][: text_width - 1] + "\u2026"
                    labels = ",".join(row["labels"]) or "-"
                    texts.add_row(str(row["rank"]), escape(row["id"]), escape(labels), escape(text))
            err.print(texts)


FRONTIER_HEADERS = ("mode", "px", "reflow", "ls", "pages", "chars/pg", "tok/vt", "full", "cer", "cer 95%")
OPERATING_KEYS = ("font_size", "mode", "reflow", "line_spacing", "font")


def print_frontier(summary: dict) -> None:
    err.print(f"judge: {escape(summary['judge'])}")
    title = "compression frontier (tok/vt: text tokens per vision token)"
    table = _table(title, FRONTIER_HEADERS, ("mode",), padding=(0, 1, 0, 0))
    chosen = summary["operating_point"]
    for row in summary["cells"]:
        table.add_row(*_frontier_row(row, chosen))
    err.print(table)
    if chosen:
        err.print(
            f"operating point (*): densest cell with cer <= {summary['max_error']:g}: "
            + escape(" ".join(summary["operating_point_set"]))
        )


def _frontier_row(row: dict, chosen: Optional[dict]) -> tuple[str, ...]:
    mark = "*" if chosen and all(row[k] == chosen[k] for k in OPERATING_KEYS) else ""
    font = "" if row["font"] == "DejaVuSansMono" else " " + Path(row["font"]).stem  # only when the grid varies it
    return (
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
