"""`optical index build-energy|search`: the energy-informed vector index (config: energy)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from .. import config as config_mod
from ..errors import OpticalError
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

app = typer.Typer(help="Energy-informed vector index: build and search.", no_args_is_help=True)
MAX_TABLES = 10  # more queries than this: one summary line on stderr instead of a table each


def _energy_config(config: Optional[Path], sets: Optional[list[str]], **changes: Any) -> Any:
    """Load the energy config, then apply the command-line flags given (None = not given)."""
    cfg = load("energy", config, sets)
    for dotted, value in changes.items():
        if value is None:
            continue
        section, key = dotted.split("__")
        part = getattr(cfg, section)
        setattr(
            cfg,
            section,
            config_mod.validate(type(part), part.model_dump() | {key: value}, f"--{key.replace('_', '-')}"),
        )
    return cfg


@app.command("build-energy")
def index_build_energy(
    input_file: Annotated[
        Optional[Path],
        typer.Option(
            "--input",
            "-i",
            help="Texts (.jsonl/.csv) or vectors (.npy/.parquet/.safetensors); default: the bundled CVE corpus.",
        ),
    ] = None,
    limit: Annotated[
        Optional[int],
        typer.Option(
            "--limit",
            help="Seeded random subset of N items (0 = all).",
            show_default=config_default("energy", "input.limit"),
        ),
    ] = None,
    drop_invalid: Annotated[
        Optional[bool],
        typer.Option(
            "--drop-invalid/--no-drop-invalid",
            help="Drop NaN/Inf/zero rows instead of failing.",
            show_default=config_default("energy", "input.drop_invalid"),
        ),
    ] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    output_dir: OutputDirOpt = None,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Build an energy index (lambdas, vectors, feature Laplacian, ANN candidates) from texts or vectors."""
    from ..devices import resolve_device
    from ..index.ann import build_ann
    from ..index.build import build as build_energy
    from ..index.pipeline import corpus_vectors
    from ..index.store import save_index

    with handled_errors():
        cfg = _energy_config(
            config,
            sets,
            input__path=str(input_file) if input_file else None,
            input__limit=(limit or None) if limit is not None else None,
            input__drop_invalid=drop_invalid,
        )
        if limit == 0:
            cfg.input.limit = None
        claim = claim_output("index build-energy", output_dir, overwrite=overwrite, resumable=False)
        device = resolve_device(cfg.runtime.device)
        with progress_bar("embedding", total=None) as advance:
            corpus = corpus_vectors(cfg, None, progress=advance)
        with run_dir("index build-energy", cfg, claim, name="energy", device=str(device)) as run:
            started = time.perf_counter()
            index = build_energy(corpus.vectors, cfg.build, corpus.ids, cfg.runtime.seed, device)
            build_seconds = time.perf_counter() - started
            for warning in index.warnings:
                warn(warning)
            started = time.perf_counter()
            index.ann = build_ann(
                index.vectors, index.dirichlet_metric(index.vectors.device), cfg.build.ann, cfg.build.ann_ivf_from
            )
            ann_seconds = time.perf_counter() - started
            index.model, index.texts = corpus.model, corpus.texts
            fields = save_index(index, run.path, manifest=False)
            run.update(
                **fields,
                input=corpus.source,
                **corpus.info,
                build_seconds=round(build_seconds, 4),
                ann_seconds=round(ann_seconds, 4),
            )
        summary = {
            "index": str(run.path),
            "input": corpus.source,
            "items": len(index),
            "dim": index.dim,
            **corpus.info,
            **index.stats,
            **index.scales.as_dict(),
            "dirichlet_scale": index.dirichlet_scale,
            "dirichlet_beta": index.dirichlet_beta,
            "build_seconds": round(build_seconds, 4),
            "ann": (fields["ann"] or {}).get("kind", "none"),
            "ann_seconds": round(ann_seconds, 4),
        }
        print_table("energy index", list(summary.items()))
        if json_out:
            emit_json(summary)


@app.command("search")
def index_search(
    index_dir: Annotated[Path, typer.Option("--index", help="Index directory written by build-energy.")],
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
        typer.Option("-k", "--k", help="Results per query.", show_default=config_default("energy", "search.k")),
    ] = None,
    mode: Annotated[
        Optional[str],
        typer.Option("--mode", help="energy | cosine | hybrid.", show_default=config_default("energy", "search.mode")),
    ] = None,
    w_lambda: Annotated[
        Optional[float],
        typer.Option(
            "--w-lambda",
            help="Weight of |lambda_q - lambda_i|.",
            show_default=config_default("energy", "search.w_lambda"),
        ),
    ] = None,
    w_g: Annotated[
        Optional[float],
        typer.Option("--w-g", help="Weight of |G_q - G_i|.", show_default=config_default("energy", "search.w_G")),
    ] = None,
    w_d: Annotated[
        Optional[float],
        typer.Option(
            "--w-d",
            help="Weight of the bounded Dirichlet energy of q - x_i.",
            show_default=config_default("energy", "search.w_D"),
        ),
    ] = None,
    alpha: Annotated[
        Optional[float],
        typer.Option(
            "--alpha",
            help="Hybrid: alpha*cosine distance + (1-alpha)*energy.",
            show_default=config_default("energy", "search.alpha"),
        ),
    ] = None,
    candidates: Annotated[
        Optional[str],
        typer.Option(
            "--candidates",
            help="exact: score every item; ann: FAISS candidates nearest in Dirichlet energy, rescored exactly "
            "(search.ann_candidates per query).",
            show_default=config_default("energy", "search.candidates"),
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

    With --json, or more than a few queries, stderr gets one summary line instead of a table per query.
    """
    import numpy as np

    from ..devices import resolve_device
    from ..index.inputs import read_vectors
    from ..index.pipeline import query_vectors, read_query_file
    from ..index.search import Searcher, SearchParams
    from ..index.store import load_index

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
        given = [
            name
            for name, value in (("--query", query), ("--query-vector", query_vector), ("--queries", queries))
            if value
        ]
        if len(given) != 1:
            raise OpticalError(
                "give exactly one of --query, --query-vector or --queries"
                + (f" (got {', '.join(given)})" if given else "")
            )
        blank = [position + 1 for position, text in enumerate(query or []) if not text.strip()]
        if blank:
            raise OpticalError(
                f'--query number {blank[0]} is empty; give the text to search for, e.g. -q "SQL injection in the '
                'login page"'
            )
        device = resolve_device(cfg.runtime.device)
        index = load_index(index_dir, device)
        texts = None
        if query:
            ids, texts, vectors = [f"q{i + 1}" for i in range(len(query))], list(query), None
        elif query_vector:
            if query_vector.suffix.lower() == ".npy":
                try:
                    vectors = np.atleast_2d(np.load(query_vector, allow_pickle=False)).astype(np.float32)
                except Exception as exc:  # noqa: BLE001
                    raise OpticalError(f"{query_vector}: cannot read a vector ({type(exc).__name__}: {exc})") from None
                ids = [f"q{i + 1}" for i in range(vectors.shape[0])]
            else:
                items = read_vectors(query_vector, cfg.input.id_field, cfg.input.vector_field)
                ids, vectors = items.ids, items.vectors
        else:
            ids, texts, vectors = read_query_file(queries, cfg.input.id_field, cfg.input.text_field)
        if vectors is None:
            vectors = query_vectors(index.model, texts, cfg.runtime.device, cfg.embed.batch_size)
        params = SearchParams.from_section(cfg.search)
        if (
            params.mode != "cosine"
            and index.scales.lambda_is_dispersion
            and params.w_lambda
            and params.w_G
            and len(vectors) <= MAX_TABLES
        ):  # a batch gets its one summary line only
            err.print(
                f"[dim]note: this index has lambda_blend 0, so lambda is the dispersion G~ and w_lambda and w_G "
                f"weigh the same term (together {params.w_lambda + params.w_G:g}); hits show it once, as d_lambda[/]"
            )
        started = time.perf_counter()
        results = Searcher(index).search(vectors, params)
        search_seconds = time.perf_counter() - started
        tables = not json_out and len(results) <= MAX_TABLES
        if not tables:
            err.print(
                f"{len(results)} queries, k={params.k}, mode {params.mode}, candidates {params.candidates}: "
                f"search {search_seconds:.3f} s"
            )
        for position, hits in enumerate(results):
            if tables:
                label = texts[position] if texts else ids[position]
                _print_hits(f"{ids[position]}: {label[:80]}  ({params.mode}, {params.candidates})", hits, index.texts)
            if json_out:
                for hit in hits:
                    emit_json_line(
                        {
                            "query_id": ids[position],
                            "query": texts[position] if texts else None,
                            "mode": params.mode,
                            **hit.as_dict(),
                        }
                    )


def _print_hits(title: str, hits: list, texts: Optional[list[str]]) -> None:
    shown = [name for name in ("d_lambda", "dirichlet", "cosine") if hits and name in hits[0].terms]  # all in --json
    header = ["rank", "id", "score", *shown]
    rows = [[str(h.rank), str(h.id), f"{h.score:.4f}", *(f"{h.terms[name]:.3g}" for name in shown)] for h in hits]
    table = Table(title=escape(title), title_justify="left", box=None, pad_edge=False)
    for position, column in enumerate(header):
        width = max(len(column), *(len(row[position]) for row in rows)) if rows else len(column)
        table.add_column(column, justify="left" if column == "id" else "right", min_width=width, no_wrap=True)
    if texts:
        table.add_column("text", no_wrap=True)
    room = (
        max(20, err.width - sum(max(len(c), *(len(r[i]) for r in rows)) + 2 for i, c in enumerate(header)) - 2)
        if rows
        else 20
    )
    for hit, row in zip(hits, rows):
        text = texts[hit.index] if texts else ""
        shown_text = text if len(text) <= room else text[: room - 1] + "\u2026"
        table.add_row(*map(escape, row), *((escape(shown_text),) if texts else ()))
    err.print(table)
