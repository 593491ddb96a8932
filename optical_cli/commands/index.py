"""`optical index build-energy|search|add|delete`: the energy-informed vector index (config: energy)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..lists import split_list
from ..reports.console import emit_json, print_table, progress_bar, warn
from ..reports.index import print_change, print_hits
from .common import (
    ConfigOpt,
    JsonOpt,
    OutputDirOpt,
    OverwriteOpt,
    SetOpt,
    all_if_zero,
    claim_output,
    config_default,
    config_option,
    handled_errors,
    load,
    run_dir,
    with_flags,
)

app = typer.Typer(help="Energy-informed vector index: build, search, add and delete.", no_args_is_help=True)


def _index_config(config: Optional[Path], sets: Optional[list[str]], flags: dict | None = None) -> Any:
    return with_flags(load("index", config, sets), flags or {})


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


IndexLimitOpt = Annotated[
    Optional[int], config_option("index", "input.limit", "--limit", help="Seeded random subset of N items (0 = all).")
]
KOpt = Annotated[Optional[int], config_option("index", "search.k", "-k", "--k", help="Results per query.")]
SearchModeOpt = Annotated[
    Optional[str], config_option("index", "search.mode", "--mode", help="energy | cosine | hybrid.")
]
WLambdaOpt = Annotated[
    Optional[float], config_option("index", "search.w_lambda", "--w-lambda", help="Weight of |lambda_q - lambda_i|.")
]
WGOpt = Annotated[Optional[float], config_option("index", "search.w_G", "--w-g", help="Weight of |G_q - G_i|.")]
WDOpt = Annotated[
    Optional[float],
    config_option("index", "search.w_D", "--w-d", help="Weight of the bounded Dirichlet energy of q - x_i."),
]
AlphaOpt = Annotated[
    Optional[float],
    config_option("index", "search.alpha", "--alpha", help="Hybrid: alpha*cosine distance + (1-alpha)*energy."),
]
CandidatesOpt = Annotated[
    Optional[str],
    config_option(
        "index",
        "search.candidates",
        "--candidates",
        help="exact: score every item; ann: FAISS (or Milvus) candidates nearest in Dirichlet energy, rescored "
        "exactly (search.ann_candidates per query).",
    ),
]


@app.command("build-energy")
def index_build_energy(
    input_file: InputOpt = None,
    limit: IndexLimitOpt = None,
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
        flags = {
            "--input": ("input.path", str(input_file) if input_file else None),
            "--limit": ("input.limit", all_if_zero(limit)),
            "--drop-invalid": ("input.drop_invalid", drop_invalid),
        }
        cfg = _index_config(config, sets, flags)
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
    k: KOpt = None,
    mode: SearchModeOpt = None,
    w_lambda: WLambdaOpt = None,
    w_g: WGOpt = None,
    w_d: WDOpt = None,
    alpha: AlphaOpt = None,
    candidates: CandidatesOpt = None,
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
        flags = {"--k": ("search.k", k), "--mode": ("search.mode", mode), "--w-lambda": ("search.w_lambda", w_lambda)}
        flags |= {"--w-g": ("search.w_G", w_g), "--w-d": ("search.w_D", w_d), "--alpha": ("search.alpha", alpha)}
        cfg = _index_config(config, sets, flags | {"--candidates": ("search.candidates", candidates)})
        outcome = search_index(index_dir, read_queries(query, query_vector, queries, cfg), cfg)
        print_hits(outcome, json_out)


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
        cfg = _index_config(config, sets, {"--drop-invalid": ("input.drop_invalid", drop_invalid)})
        with progress_bar("embedding", total=None) as advance:
            report = add_items(index_dir, cfg, input_file, upsert, progress=advance)
        print_change(report, json_out)


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
        cfg = _index_config(config, sets)
        report = delete_items(index_dir, cfg, [i for value in ids for i in split_list(value, "--ids", "CVE-1,CVE-2")])
        print_change(report, json_out)
