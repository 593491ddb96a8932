"""The `optical` command line: parse -> build -> run -> report, one short function per command.

Human output and progress go to stderr; ``--json`` prints one JSON document (or JSON lines
for streams) to stdout. Exit codes: 0 success, 1 failed run, 2 bad usage, config or input.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from . import config as config_mod
from .artifacts import Run, start_run, to_json_line
from .errors import OpticalError

app = typer.Typer(
    name="optical",
    help="Compress information before a model sees it: optical context compression and energy-informed vector search.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Show and validate config files.", no_args_is_help=True)
app.add_typer(config_app, name="config")

err = Console(stderr=True, highlight=False)

# ---------------------------------------------------------------------------------------
# Options every command shares

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config (default: the command's file in configs/).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a config key: --set key.path=value (repeatable).")]
OutputDirOpt = Annotated[Optional[Path], typer.Option("--output-dir", "-o", help="Write artifacts directly into this directory instead of results/<command>/<run>/.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON to stdout.")]


@contextlib.contextmanager
def handled_errors() -> Iterator[None]:
    """One line and exit 2 for a user's mistake, one line and exit 1 for a failed run."""
    try:
        yield
    except OpticalError as exc:
        err.print(f"[bold red]error:[/] {exc}", markup=True, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None
    except Exception as exc:  # noqa: BLE001 - a failed run, not a traceback for the user
        if os.environ.get("OPTICAL_DEBUG"):
            raise
        err.print(f"[bold red]run failed:[/] {type(exc).__name__}: {exc} (set OPTICAL_DEBUG=1 for the traceback)", soft_wrap=True)
        raise typer.Exit(1) from None


def load(command: str, config: Optional[Path], sets: Optional[list[str]]) -> Any:
    return config_mod.load_config(command, config, sets or [])


@contextlib.contextmanager
def run_dir(command: str, cfg: Any, output_dir: Optional[Path], name: str | None = None) -> Iterator[Run]:
    runtime = getattr(cfg, "runtime", None)
    with start_run(
        command,
        config_mod.dump_config(cfg),
        output_dir=output_dir,
        name=name,
        seed=getattr(runtime, "seed", None),
        device=getattr(runtime, "device", None),
    ) as run:
        yield run
    err.print(f"[dim]artifacts: {run.path}[/]")


def emit_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def emit_json_line(record: dict) -> None:
    sys.stdout.write(to_json_line(record) + "\n")
    sys.stdout.flush()


@contextlib.contextmanager
def progress_bar(description: str, total: int | None = None) -> Iterator[Callable[..., None]]:
    """A Rich progress bar on stderr; yields ``advance(n=1, total=None, description=None)``."""
    progress = Progress(
        TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=False,
    )
    with progress:
        task = progress.add_task(description, total=total)

        def advance(n: int = 1, total: int | None = None, description: str | None = None) -> None:
            fields = {}
            if total is not None:
                fields["total"] = total
            if description is not None:
                fields["description"] = description
            progress.update(task, advance=n, **fields)

        yield advance


def print_table(title: str, rows: list[tuple[str, Any]]) -> None:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("key", style="bold")
    table.add_column("value", justify="right")
    for key, value in rows:
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    err.print(table)


# ---------------------------------------------------------------------------------------
# optical config


@config_app.command("show")
def config_show(
    command: Annotated[str, typer.Argument(help="Command whose config to show, e.g. render.")],
    config: ConfigOpt = None,
    sets: SetOpt = None,
) -> None:
    """Print the resolved config of COMMAND (defaults + file + --set) as YAML."""
    with handled_errors():
        cfg = load(command, config, sets)
        sys.stdout.write(config_mod.dump_config(cfg))


@config_app.command("validate")
def config_validate(
    files: Annotated[list[Path], typer.Argument(help="Config files to check.")],
    command: Annotated[Optional[str], typer.Option("--command", help="Schema to check against (default: judged by file name).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Check config files against their command's schema; exit 2 if any is invalid."""
    results = []
    for path in files:
        name = command or config_mod.command_for_file(path)
        try:
            if name is None:
                raise OpticalError(
                    f"{path}: cannot tell which command this config is for; pass --command "
                    f"({', '.join(sorted(config_mod.COMMANDS))})"
                )
            config_mod.load_config(name, path)
            results.append({"file": str(path), "command": name, "ok": True})
            err.print(f"[green]ok[/]    {path} ({name})")
        except OpticalError as exc:
            results.append({"file": str(path), "command": name, "ok": False, "error": str(exc)})
            err.print(f"[red]error[/] {exc}", soft_wrap=True)
    if json_out:
        emit_json(results)
    if not all(r["ok"] for r in results):
        raise typer.Exit(2)


# ---------------------------------------------------------------------------------------
# optical index build-energy / optical index search  (config: "energy", configs/energy.yaml)

index_app = typer.Typer(help="Energy-informed vector index: build and search.", no_args_is_help=True)
app.add_typer(index_app, name="index")


def _energy_config(config: Optional[Path], sets: Optional[list[str]], **changes: Any) -> Any:
    """Load the energy config, then apply the command-line flags given (None = not given)."""
    cfg = load("energy", config, sets)
    for dotted, value in changes.items():
        if value is None:
            continue
        section, key = dotted.split("__")
        part = getattr(cfg, section)
        setattr(cfg, section, config_mod.validate(type(part), part.model_dump() | {key: value}, f"--{key.replace('_', '-')}"))
    return cfg


@index_app.command("build-energy")
def index_build_energy(
    input_file: Annotated[Optional[Path], typer.Option("--input", "-i", help="Texts (.jsonl/.csv) or vectors (.npy/.parquet/.safetensors); default: the bundled CVE corpus.")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Seeded random subset of N items (0 = all; default input.limit).")] = None,
    drop_invalid: Annotated[Optional[bool], typer.Option("--drop-invalid/--no-drop-invalid", help="Drop NaN/Inf/zero rows instead of failing.")] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    output_dir: OutputDirOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Build an energy index (lambdas, vectors, feature Laplacian) from texts or vectors."""
    from .index.build import build as build_energy
    from .index.pipeline import corpus_vectors
    from .index.store import save_index
    from .models.loading import resolve_device

    with handled_errors():
        cfg = _energy_config(config, sets, input__path=str(input_file) if input_file else None,
                             input__limit=(limit or None) if limit is not None else None,
                             input__drop_invalid=drop_invalid)
        if limit == 0:
            cfg.input.limit = None
        device = resolve_device(cfg.runtime.device)
        with progress_bar("embedding", total=None) as advance:
            corpus = corpus_vectors(cfg, None, progress=advance)
        with run_dir("index", cfg, output_dir, name="energy") as run:
            started = time.perf_counter()
            index = build_energy(corpus.vectors, cfg.build, corpus.ids, cfg.runtime.seed, device)
            build_seconds = time.perf_counter() - started
            index.model, index.texts = corpus.model, corpus.texts
            run.update(**save_index(index, run.path, manifest=False), input=corpus.source, **corpus.info,
                       build_seconds=round(build_seconds, 4))
        summary = {"index": str(run.path), "input": corpus.source, "items": len(index), "dim": index.dim,
                   **corpus.info, **index.stats, "tau": index.tau, "build_seconds": round(build_seconds, 4)}
        print_table("energy index", list(summary.items()))
        if json_out:
            emit_json(summary)


@index_app.command("search")
def index_search(
    index_dir: Annotated[Path, typer.Option("--index", help="Index directory written by build-energy.")],
    query: Annotated[Optional[list[str]], typer.Option("--query", "-q", help="Query text (repeatable).")] = None,
    query_vector: Annotated[Optional[Path], typer.Option("--query-vector", help="Query vector(s): .npy (1-D or 2-D), .parquet or .safetensors.")] = None,
    queries: Annotated[Optional[Path], typer.Option("--queries", help="Query file: .jsonl/.csv with id and text fields (or a vector file).")] = None,
    k: Annotated[Optional[int], typer.Option("-k", "--k", help="Results per query.")] = None,
    mode: Annotated[Optional[str], typer.Option("--mode", help="energy | energy-window | cosine | hybrid.")] = None,
    w_lambda: Annotated[Optional[float], typer.Option("--w-lambda", help="Weight of |lambda_q - lambda_i|.")] = None,
    w_g: Annotated[Optional[float], typer.Option("--w-g", help="Weight of |G_q - G_i|.")] = None,
    w_d: Annotated[Optional[float], typer.Option("--w-d", help="Weight of the bounded Dirichlet energy of q - x_i.")] = None,
    alpha: Annotated[Optional[float], typer.Option("--alpha", help="Hybrid: alpha*cosine distance + (1-alpha)*energy.")] = None,
    candidate_m: Annotated[Optional[int], typer.Option("--candidate-m", help="energy-window: candidates nearest in lambda.")] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON line per hit to stdout.")] = False,
) -> None:
    """Search an energy index by text, vector or a file of queries."""
    import numpy as np

    from .index.inputs import read_vectors
    from .index.pipeline import query_vectors, read_query_file
    from .index.search import SearchParams, Searcher
    from .index.store import load_index
    from .models.loading import resolve_device

    with handled_errors():
        cfg = _energy_config(config, sets, search__k=k, search__mode=mode, search__w_lambda=w_lambda, search__w_G=w_g,
                             search__w_D=w_d, search__alpha=alpha, search__candidate_m=candidate_m)
        given = [name for name, value in (("--query", query), ("--query-vector", query_vector), ("--queries", queries)) if value]
        if len(given) != 1:
            raise OpticalError("give exactly one of --query, --query-vector or --queries" + (f" (got {', '.join(given)})" if given else ""))
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
        results = Searcher(index).search(vectors, params)
        for position, hits in enumerate(results):
            label = texts[position] if texts else ids[position]
            _print_hits(f"{ids[position]}: {label[:80]}  ({params.mode})", hits, index.texts)
            if json_out:
                for hit in hits:
                    emit_json_line({"query_id": ids[position], "query": texts[position] if texts else None,
                                    "mode": params.mode, **hit.as_dict()})


def _print_hits(title: str, hits: list, texts: Optional[list[str]]) -> None:
    shown = [name for name in ("d_lambda", "d_G", "dirichlet", "cosine") if hits and name in hits[0].terms]
    table = Table(title=title, title_justify="left")
    for column in ("rank", "id", "score", *shown, *(("text",) if texts else ())):
        table.add_column(column, justify="left" if column in ("id", "text") else "right",
                         overflow="ellipsis", no_wrap=column == "text")
    for hit in hits:
        row = [str(hit.rank), hit.id, f"{hit.score:.4f}", *(f"{hit.terms[name]:.3g}" for name in shown)]
        if texts:
            row.append(texts[hit.index])
        table.add_row(*row)
    err.print(table)

def main() -> None:
    app()


if __name__ == "__main__":
    main()
