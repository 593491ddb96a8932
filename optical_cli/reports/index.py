"""The index commands' reports: a table of hits per query (or one summary line for a batch) and JSON lines
with --json; the report of an add or delete, with the rebuild advice."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from .console import emit_json, emit_json_line, err, print_table, warn

MAX_TABLES = 10  # more queries than this: one summary line on stderr instead of a table each


def print_hits(outcome: Any, json_out: bool) -> None:
    """Tables on stderr (a few queries) or one summary line; JSON lines on stdout with --json."""
    params, queries, results = outcome.params, outcome.queries, outcome.results
    tables = not json_out and len(results) <= MAX_TABLES
    for note in outcome.notes if len(results) <= MAX_TABLES else ():  # a batch gets its one summary line only
        err.print(f"[dim]note: {escape(note)}[/]")
    if not tables:
        err.print(
            f"{len(results)} queries, k={params.k}, mode {params.mode}, candidates {params.candidates}: "
            f"search {outcome.seconds:.3f} s"
        )
    for position, hits in enumerate(results):
        query_id, text = queries.ids[position], queries.texts[position] if queries.texts else None
        if tables:
            label = text or query_id
            _print_query_hits(f"{query_id}: {label[:80]}  ({params.mode}, {params.candidates})", hits)
        if json_out:
            for hit in hits:
                emit_json_line({"query_id": query_id, "query": text, "mode": params.mode, **hit.as_dict()})


def print_change(report: Any, json_out: bool) -> None:
    fields = report.as_dict()
    print_table(f"index {report.operation}", list(fields.items()))
    if report.rebuild_due:
        warn(
            f"{report.changed_share:.0%} of the build's items were added or deleted since it (store.rebuild_after "
            f"{report.rebuild_after:g}): rebuild the index with `optical index build-energy` for the best results"
        )
    if json_out:
        emit_json(fields)


def _print_query_hits(title: str, hits: list) -> None:
    shown = [name for name in ("d_lambda", "dirichlet", "cosine") if hits and name in hits[0].terms]  # all in --json
    header = ["rank", "id", "score", *shown]
    rows = [[str(h.rank), str(h.id), f"{h.score:.4f}", *(f"{h.terms[name]:.3g}" for name in shown)] for h in hits]
    table = Table(title=escape(title), title_justify="left", box=None, pad_edge=False)
    for position, column in enumerate(header):
        width = max(len(column), *(len(row[position]) for row in rows)) if rows else len(column)
        table.add_column(column, justify="left" if column == "id" else "right", min_width=width, no_wrap=True)
    texts = any(hit.text for hit in hits)
    if texts:
        table.add_column("text", no_wrap=True)
    room = (
        max(20, err.width - sum(max(len(c), *(len(r[i]) for r in rows)) + 2 for i, c in enumerate(header)) - 2)
        if rows
        else 20
    )
    for hit, row in zip(hits, rows):
        text = hit.text or ""
        shown_text = text if len(text) <= room else text[: room - 1] + "\u2026"
        table.add_row(*map(escape, row), *((escape(shown_text),) if texts else ()))
    err.print(table)
