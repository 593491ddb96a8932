"""`optical index build-energy|search|add|delete`: the energy-informed vector index (config: energy)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..config.validation import validate
from .common import (
    ConfigOpt,
    JsonOpt,
    OutputDirOpt,
    OverwriteOpt,
    SetOpt,
    claim_output,
    config_default,
    emit_json,
    emit_json_line,
    err,
    handled_errors,
    load,
    print_table,
    progress_bar,
    run_dir,
    warn,
)

app = typer.Typer(help="Energy-informed vector index: build, search, add and delete.", no_args_is_help=True)
MAX_TABLES = 10  # more queries than this: one summary line on stderr instead of a table each


def _energy_config(config: Optional[Path], sets: Optional[list[str]], **changes: Any) -> Any:
    """The one way flags reach the config: load it (with --set), then apply each flag given (None = not
    given) as ``section__key=value``; ``--limit 0`` means every item."""
    cfg = load("index", config, sets)
    for dotted, value in changes.items():
        if value is None:
            continue
        section, key = dotted.split("__")
        part = getattr(cfg, section)
        value = None if (dotted == "input__limit" and value == 0) else value
        setattr(
            cfg,
            section,
            validate(type(part), part.model_dump() | {key: value}, f"--{key.replace('_', '-')}"),
        )
    return cfg


InputOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--input",
        "-i",
        help="Texts (.jsonl/.csv) or vectors (.npy/.parquet/.safetensors); default: the bundled CVE corpus.",
    ),
]
IndexOpt = Annotated[Path, typer.Option("--index", help="Index directory written by build-energy.")]
DropInvalidOpt = Annotated[
    Optional[bool],
    typer.Option(
        "--drop-invalid/--no-drop-invalid",
        help="Drop NaN/Inf/zero rows instead of failing.",
        show_default=config_default("index", "input.drop_invalid"),
    ),
]


@app.command("build-energy")
def index_build_energy(
    input_file: InputOpt = None,
    limit: Annotated[
        Optional[int],
        typer.Option(
            "--limit",
            help="Seeded random subset of N items (0 = all).",
            show_default=config_default("index", "input.limit"),
        ),
    ] = None,
    drop_invalid: DropInvalidOpt = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    output_dir: OutputDirOpt = None,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Build an energy index (lambdas, vectors, feature Laplacian, ANN candidates) from texts or vectors."""
    from ..devices import resolve_device
    from ..index.create import check_store, create_index, summary
    from ..index.pipeline import corpus_vectors

    with handled_errors():
        cfg = _energy_config(
            config,
            sets,
            input__path=str(input_file) if input_file else None,
            input__limit=limit,
            input__drop_invalid=drop_invalid,
        )
        check_store(cfg)
        claim = claim_output("index build-energy", output_dir, overwrite=overwrite, resumable=False)
        device = resolve_device(cfg.runtime.device)
        with progress_bar("embedding", total=None) as advance:
            corpus = corpus_vectors(cfg, None, progress=advance)
        with run_dir("index build-energy", cfg, claim, name="energy", device=str(device)) as run:
            index, fields, seconds = create_index(cfg, corpus, run.path, device)
            for warning in index.warnings:
                warn(warning)
            seconds = {key: round(value, 4) for key, value in seconds.items()}
            run.update(**fields, input=corpus.source, **corpus.info, **seconds)
        report = summary(index, corpus, fields, seconds, cfg, run.path)
        print_table("energy index", list(report.items()))
        if json_out:
            emit_json(report)


@app.command("search")
def index_search(
    index_dir: IndexOpt,
    query: Annotated[
        Optional[list[str]], typer.Option("--query", "-q", metavar="TEXT", help="Query text (repeatable).")
    ] = None,
    query_vector: Annotated[
        Optional[Path],
        typer.Option("--query-vector", help="Query vector(s): .npy (1-D or 2-D), .parquet or .safetensors."),
    ] = None,
    queries: Annotated[
        Optional[Path],
        typer.Option("--queries", help="Query file: .jsonl/.csv with id and text fields (or a vector file)."),
    ] = None,
    k: Annotated[
        Optional[int],
        typer.Option("-k", "--k", help="Results per query.", show_default=config_default("index", "search.k")),
    ] = None,
    mode: Annotated[
        Optional[str],
        typer.Option("--mode", help="energy | cosine | hybrid.", show_default=config_default("index", "search.mode")),
    ] = None,
    w_lambda: Annotated[
        Optional[float],
        typer.Option(
            "--w-lambda",
            help="Weight of |lambda_q - lambda_i|.",
            show_default=config_default("index", "search.w_lambda"),
        ),
    ] = None,
    w_g: Annotated[
        Optional[float],
        typer.Option("--w-g", help="Weight of |G_q - G_i|.", show_default=config_default("index", "search.w_G")),
    ] = None,
    w_d: Annotated[
        Optional[float],
        typer.Option(
            "--w-d",
            help="Weight of the bounded Dirichlet energy of q - x_i.",
            show_default=config_default("index", "search.w_D"),
        ),
    ] = None,
    alpha: Annotated[
        Optional[float],
        typer.Option(
            "--alpha",
            help="Hybrid: alpha*cosine distance + (1-alpha)*energy.",
            show_default=config_default("index", "search.alpha"),
        ),
    ] = None,
    candidates: Annotated[
        Optional[str],
        typer.Option(
            "--candidates",
            help="exact: score every item; ann: FAISS (or Milvus) candidates nearest in Dirichlet energy, rescored "
            "exactly (search.ann_candidates per query).",
            show_default=config_default("index", "search.candidates"),
        ),
    ] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    json_out: Annotated[
        bool,
        typer.Option(
            "--json", help="Print one JSON line per hit to stdout (and one summary line, no tables, to stderr)."
        ),
    ] = False,
) -> None:
    """Search an energy index by text, vector or a file of queries.

    With --json, or more than 10 queries, stderr gets one summary line instead of a table per query.
    """
    from ..index.query import read_queries, search_index

    with handled_errors():
        cfg = _energy_config(
            config,
            sets,
            search__k=k,
            search__mode=mode,
            search__w_lambda=w_lambda,
            search__w_G=w_g,
            search__w_D=w_d,
            search__alpha=alpha,
            search__candidates=candidates,
        )
        outcome = search_index(index_dir, read_queries(query, query_vector, queries, cfg), cfg)
        _report_hits(outcome, json_out)


def _report_hits(outcome: Any, json_out: bool) -> None:
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
            _print_hits(f"{query_id}: {label[:80]}  ({params.mode}, {params.candidates})", hits)
        if json_out:
            for hit in hits:
                emit_json_line({"query_id": query_id, "query": text, "mode": params.mode, **hit.as_dict()})


ChangeJsonOpt = Annotated[bool, typer.Option("--json", help="Print the change's report as JSON to stdout.")]


@app.command("add")
def index_add(
    index_dir: IndexOpt,
    input_file: Annotated[
        Path,
        typer.Option(
            "--input",
            "-i",
            help="New items: texts (.jsonl/.csv, embedded with the index's model) or vectors "
            "(.npy/.parquet/.safetensors); every record is added.",
        ),
    ],
    upsert: Annotated[
        bool, typer.Option("--upsert", help="Replace items whose id is already in the index (default: an error).")
    ] = False,
    drop_invalid: DropInvalidOpt = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    json_out: ChangeJsonOpt = False,
) -> None:
    """Add items to an index without a rebuild: lambdas from the stored energy model, committed atomically."""
    from ..index.update import add_items

    with handled_errors():
        cfg = _energy_config(config, sets, input__drop_invalid=drop_invalid)
        with progress_bar("embedding", total=None) as advance:
            report = add_items(index_dir, cfg, input_file, upsert, progress=advance)
        _report_change(report, json_out)


@app.command("delete")
def index_delete(
    index_dir: IndexOpt,
    ids: Annotated[
        list[str], typer.Option("--ids", help="Ids to delete, comma-separated or repeated (--ids a,b --ids c).")
    ],
    config: ConfigOpt = None,
    sets: SetOpt = None,
    json_out: ChangeJsonOpt = False,
) -> None:
    """Delete items from an index: they stop appearing in results at once, committed atomically."""
    from ..index.update import delete_items

    with handled_errors():
        cfg = _energy_config(config, sets)
        report = delete_items(index_dir, cfg, [i.strip() for value in ids for i in value.split(",")])
        _report_change(report, json_out)


def _report_change(report: Any, json_out: bool) -> None:
    fields = report.as_dict()
    print_table(f"index {report.operation}", list(fields.items()))
    if report.rebuild_due:
        warn(
            f"{report.changed_share:.0%} of the build's items were added or deleted since it (store.rebuild_after "
            f"{report.rebuild_after:g}): rebuild the index with `optical index build-energy` for the best results"
        )
    if json_out:
        emit_json(fields)


def _print_hits(title: str, hits: list) -> None:
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
