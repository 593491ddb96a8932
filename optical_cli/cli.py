"""The `optical` command line: parse -> build -> run -> report, one short function per command.

Human output and progress go to stderr; ``--json`` prints one JSON document (or JSON lines
for streams) to stdout. Exit codes: 0 success, 1 failed run, 2 bad usage, config or input.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
from .errors import InputError, OpticalError

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
# optical render

SAMPLE_DOCUMENT = config_mod.REPO_ROOT / "data" / "sample" / "optical_compression.md"


@app.command("render")
def render(
    inputs: Annotated[Optional[list[str]], typer.Argument(help="Text files, directories of .txt/.md, or - for stdin (default: the bundled sample).", show_default=False)] = None,
    input_opt: Annotated[Optional[list[str]], typer.Option("--input", "-i", help="Same as the positional INPUTS (repeatable).")] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    output_dir: OutputDirOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Render text to page images (page_0001.png, ...) plus layout.jsonl, sized for a DeepEncoder mode."""
    from .render import PageRenderer, read_documents, render_to_dir

    with handled_errors():
        cfg = load("render", config, sets)
        renderer = PageRenderer(cfg.render)  # font and geometry problems surface before any output
        sources = list(inputs or []) + list(input_opt or []) or [str(SAMPLE_DOCUMENT)]
        documents = read_documents(sources, cfg.render)
        if not any(doc.text.strip() for doc in documents):
            err.print("[yellow]warning:[/] the input holds no text; zero pages rendered")
        with run_dir("render", cfg, output_dir) as run, progress_bar("rendering pages") as advance:
            report = render_to_dir(documents, renderer, run.path, cfg.runtime.workers, progress=advance)
            run.update(report=report.as_dict())
        summary = report.as_dict()
        summary["output_dir"] = str(run.path)
        print_table("render", [(k, v) for k, v in summary.items() if k != "per_document" and v is not None])
        if json_out:
            emit_json(summary)


# ---------------------------------------------------------------------------------------
# optical bench longbench

bench_app = typer.Typer(help="Benchmarks: LongBench v2, native text against optical pages.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

RANDOM_BANNER = (
    "RANDOM WEIGHTS: the models are random (tiny test models or random full-size ones). The accuracies "
    "below test the pipeline; they are not results and say nothing about reading."
)


def _csv_list(value: Optional[str]) -> list[str] | None:
    return None if value is None else [part.strip() for part in value.split(",") if part.strip()]


def _longbench_cfg(cfg: Any, flags: dict[str, Any]) -> Any:
    """Fold the command's flags into the config (validated like the file), so config.yaml
    records what actually ran."""
    from .bench.runner import parse_conditions

    update = {key: value for key, value in flags.items() if value is not None}
    if "conditions" in update:
        update["conditions"] = list(parse_conditions(update["conditions"]))
    if not update:
        return cfg
    data = cfg.model_dump(mode="json")
    data["bench"].update(update)
    return config_mod.validate(type(cfg), data, "command-line flags")


def _print_longbench(summary: dict) -> None:
    from .bench.data import DIFFICULTIES, LENGTHS

    if summary["random_weights"]:
        err.print(f"[bold yellow]{RANDOM_BANNER}[/]", soft_wrap=True)
    suffix = " [random weights: not a result]" if summary["random_weights"] else ""

    def pct(block: dict | None) -> str:
        if not block or block.get("accuracy") is None:
            return "-"
        low, high = block["ci95"]
        return f"{block['accuracy']:.1%} ({block['correct']}/{block['n']}) [{low:.1%}, {high:.1%}]"

    for condition, block in summary["conditions"].items():
        latency = block["mean_latency_s"]
        rows = [
            ("accuracy, failures wrong [95% Wilson]", pct(block)),
            ("chance", f"{summary['chance']:.0%}"),
            ("completed", f"{block['completed']}/{block['n']} ({block['completion_rate']:.0%})"
             + (f"  failures: {', '.join(f'{k} {v}' for k, v in block['failures'].items())}" if block["failures"] else "")),
            ("accuracy on completed", "-" if block["accuracy_on_completed"] is None else f"{block['accuracy_on_completed']:.1%}"),
        ]
        rows += [(f"  {b}", pct(block["by_length"].get(b))) for b in LENGTHS if b in block["by_length"]]
        rows += [(f"  {d}", pct(block["by_difficulty"].get(d))) for d in DIFFICULTIES if d in block["by_difficulty"]]
        rows += [
            ("mean input tokens", "-" if block["mean_input_tokens"] is None else f"{block['mean_input_tokens']:.0f}"),
            ("truncated (completed items)", str(block["truncated"])),
            ("compression (doc tokens / context tokens)", "-" if block["compression_ratio"] is None else f"{block['compression_ratio']:.2f}x"),
            ("latency s: render / encode / prefill / decode / total",
             " / ".join("-" if latency[k] is None else f"{latency[k]:.3f}" for k in ("render", "encode", "prefill", "decode", "latency"))),
        ]
        print_table(f"LongBench v2: {condition}{suffix}", rows)
    for test in summary["mcnemar"]:
        err.print(
            f"McNemar exact {test['first']} vs {test['second']}: n={test['n']}, only {test['first']} right "
            f"{test['only_first_correct']}, only {test['second']} right {test['only_second_correct']}, p={test['p_value']:.3g}"
        )


@bench_app.command("longbench")
def bench_longbench(
    num_samples: Annotated[Optional[int], typer.Option("--num-samples", "-n", help="Seeded sample stratified by length and difficulty.")] = None,
    ids: Annotated[Optional[str], typer.Option("--ids", help="Comma-separated item ids to run (instead of a sample).")] = None,
    conditions: Annotated[Optional[str], typer.Option("--conditions", help="Comma-separated: native, optical, native-matched, no-context.")] = None,
    lengths: Annotated[Optional[str], typer.Option("--lengths", help="Keep only these length buckets: short, medium, long (comma-separated).")] = None,
    difficulties: Annotated[Optional[str], typer.Option("--difficulties", help="Keep only easy and/or hard items (comma-separated).")] = None,
    domains: Annotated[Optional[str], typer.Option("--domains", help="Keep only these domains, e.g. 'Multi-Document QA' (comma-separated).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --output-dir, skipping finished (item, condition) pairs.")] = False,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    output_dir: OutputDirOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """LongBench v2: native text vs optical pages (and native at the optical budget, and no context) on the same items."""
    with handled_errors():
        from .bench.models import build_reader
        from .bench.runner import check_resume_compatible, finish_run, load_selection, run_benchmark, settings_from

        flags = {"num_samples": num_samples, "ids": _csv_list(ids), "conditions": _csv_list(conditions),
                 "lengths": _csv_list(lengths), "difficulties": _csv_list(difficulties), "domains": _csv_list(domains)}
        cfg = _longbench_cfg(load("longbench", config, sets), flags)
        if resume and output_dir is None:
            raise InputError("--resume needs --output-dir pointing at the run to continue")
        if resume and (output_dir / "config.yaml").is_file():
            check_resume_compatible(load("longbench", output_dir / "config.yaml", None), cfg)
        settings = settings_from(cfg.bench, cfg.runtime.seed)
        items = load_selection(cfg.bench, cfg.runtime.seed)   # bad data fails before any model loads
        reader = build_reader(cfg, settings.conditions)
        if reader.random_weights:
            err.print(f"[bold yellow]{RANDOM_BANNER}[/]", soft_wrap=True)
        with run_dir("longbench", cfg, output_dir) as run:
            with progress_bar("longbench", total=len(items) * len(settings.conditions)) as advance:
                rows = run_benchmark(reader, items, settings, run.file("items.csv"), resume=resume, progress=advance)
            summary = finish_run(
                rows, settings, run.path, reader_description=reader.description,
                random_weights=reader.random_weights, data_source=cfg.bench.data, plots=cfg.bench.plots,
            )
            run.record_existing("summary.json", "accuracy_by_length.png", "cost_vs_length.png")
        _print_longbench(summary)
        if json_out:
            emit_json(summary)


# ---------------------------------------------------------------------------------------
# optical train-adapter


ResumeOpt = Annotated[Optional[Path], typer.Option("--resume", help="Continue the run in this directory from its latest checkpoint (or from this checkpoint directory).")]


def _resume_target(resume: Path) -> tuple[Path, Path]:
    """(run directory, path to resume from) for --resume RUN_DIR or --resume RUN_DIR/checkpoints/step-N."""
    from .errors import InputError

    if not resume.is_dir():
        raise InputError(f"--resume {resume}: not a directory; pass a train-adapter run directory")
    run_path = resume.parent.parent if (resume / "trainer_state.pth").is_file() else resume
    if not (run_path / "config.yaml").is_file():
        raise InputError(f"--resume {resume}: no config.yaml in {run_path}; pass a train-adapter run directory")
    return run_path, resume


TRAIN_RANDOM_BANNER = (
    "RANDOM WEIGHTS: Qwen3-VL or DeepEncoder is random (vlm.source / deepencoder.weights = random). The losses "
    "and the reading check below test the pipeline; they are not results."
)


@app.command("train-adapter")
def train_adapter_command(
    config: ConfigOpt = None,
    sets: SetOpt = None,
    output_dir: OutputDirOpt = None,
    resume: ResumeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Train the vision-token adapter (DeepEncoder and Qwen3-VL frozen); writes adapter.pth, metrics.jsonl, loss.png."""
    from .models.loading import RANDOM_SOURCE
    from .train import read_documents, train_adapter

    with handled_errors():
        resume_from = None
        if resume is not None:
            run_path, resume_from = _resume_target(resume)
            config = config or run_path / "config.yaml"
            output_dir = output_dir or run_path
        cfg = load("train-adapter", config, sets)
        documents = read_documents(cfg)  # an unusable corpus fails here, before the run directory exists
        random_weights = cfg.vlm.source == RANDOM_SOURCE or cfg.deepencoder.weights == "random"
        if random_weights:
            err.print(f"[bold yellow]{TRAIN_RANDOM_BANNER}[/]", soft_wrap=True)
        with run_dir("train-adapter", cfg, output_dir) as run, progress_bar("training", None) as advance:
            def on_event(event: dict) -> None:
                if event["event"] == "start":
                    advance(event["step"], total=event["total"], description="training")
                elif event["event"] == "encode":
                    advance(0, description=f"encoding pages (+{event['pages']})")
                elif event["event"] == "step":
                    shown = f"step {event['step']} loss {event['loss']:.4f}"
                    if event.get("eval_loss") is not None:
                        shown += f" eval {event['eval_loss']:.4f}"
                    advance(1, description=shown)
                elif event["event"] == "reading":
                    advance(0, description=f"reading check on {event['pages']} held-out pages")

            result = train_adapter(cfg, run.path, resume=resume_from, progress=on_event, documents=documents)
            run.record_existing("adapter.pth", "adapter.json", "metrics.jsonl", "loss.png", "reading.jsonl")
            run.update(result=dataclasses.asdict(result), random_weights=random_weights)
        if os.environ.get("RANK", "0") != "0":  # under accelerate launch only the main process reports
            return
        summary = {**dataclasses.asdict(result), "random_weights": random_weights}
        rows = [(k, v) for k, v in summary.items() if k != "reading"] + [(f"reading.{k}", v) for k, v in result.reading.items()]
        print_table("train-adapter", rows)
        if json_out:
            emit_json({"run_dir": str(run.path), **summary})


# ---------------------------------------------------------------------------------------
# optical encode


@app.command("encode")
def encode(
    inputs: Annotated[Optional[list[Path]], typer.Option("--input", "-i", help="Image file, directory of images, or render run directory (repeatable).")] = None,
    text: Annotated[Optional[Path], typer.Option("--text", help="Text file to render (at the mode's page size) and encode in one go.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", help="Features .safetensors (default: features.safetensors in the run directory).")] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    output_dir: OutputDirOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Encode pages with DeepEncoder: features (pages x tokens x 1280) plus compression metrics."""
    from .encode import build_encoder, plan_inputs, run_encode
    from .errors import InputError

    with handled_errors():
        cfg = load("encode", config, sets)
        if output is not None and output.suffix != ".safetensors":
            raise InputError(f"--output {output}: the features file must end in .safetensors")
        plan = plan_inputs(list(inputs or []), text, cfg)
        encoder = build_encoder(cfg)  # bad or missing weights fail here, before any output
        with run_dir("encode", cfg, output_dir) as run:
            with progress_bar("encoding pages", len(plan.pages) or None) as advance:
                summary = run_encode(cfg, plan, encoder, output or run.file("features.safetensors"), run.file("metrics.json"), advance)
            run.update(result=summary)
        print_table("encode", list(summary.items()))
        if json_out:
            emit_json({**summary, "metrics": str(run.path / "metrics.json")})



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
    shown = [name for name in ("d_lambda", "dirichlet", "cosine") if hits and name in hits[0].terms]  # all in --json
    header = ["rank", "id", "score", *shown]
    rows = [[str(h.rank), h.id, f"{h.score:.4f}", *(f"{h.terms[name]:.3g}" for name in shown)] for h in hits]
    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    for position, column in enumerate(header):
        width = max(len(column), *(len(row[position]) for row in rows)) if rows else len(column)
        table.add_column(column, justify="left" if column == "id" else "right", min_width=width, no_wrap=True)
    if texts:
        table.add_column("text", no_wrap=True)
    room = max(20, err.width - sum(max(len(c), *(len(r[i]) for r in rows)) + 2 for i, c in enumerate(header)) - 2) if rows else 20
    for hit, row in zip(hits, rows):
        text = texts[hit.index] if texts else ""
        table.add_row(*row, *((text if len(text) <= room else text[:room - 1] + "\u2026",) if texts else ()))
    err.print(table)

# ---------------------------------------------------------------------------------------
# optical sweep diffusion  (config: "sweep", configs/sweep.yaml)

sweep_app = typer.Typer(help="Sweep energy-index parameters against real relevance labels.", no_args_is_help=True)
app.add_typer(sweep_app, name="sweep")

_SWEEP_METRICS = (("mrr", "MRR"), ("map_at_20", "MAP@20"), ("ndcg_at_10", "NDCG@10"), ("recall_at_10", "R@10"),
                  ("recall_at_20", "R@20"), ("precision_at_10", "P@10"))


@sweep_app.command("diffusion")
def sweep_diffusion(
    eta: Annotated[Optional[str], typer.Option("--eta", help="Comma-separated eta values, e.g. 0.05,0.1,0.15,0.2 (default sweep.etas).")] = None,
    steps: Annotated[Optional[str], typer.Option("--steps", help="Comma-separated diffusion step counts, e.g. 2,4,6,8 (default sweep.steps).")] = None,
    num_queries: Annotated[Optional[int], typer.Option("--num-queries", help="Seeded sample of N labelled records as queries (default: all).")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Seeded corpus subset of N records (0 = all; default sweep.limit).")] = None,
    corpus: Annotated[Optional[Path], typer.Option("--corpus", help="JSONL with id, text and label fields (default: the bundled CVE corpus).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Skip cells already finished in --output-dir.")] = False,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    output_dir: OutputDirOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Energy search over an eta x steps grid vs cosine, judged by shared labels (CWE ids)."""
    from .sweep.diffusion import faiss_available, read_sweep_inputs
    from .sweep.grid import parse_eta_list, parse_steps_list
    from .sweep.pipeline import Hooks, run_diffusion_sweep

    with handled_errors():
        cfg = load("sweep", config, sets)
        etas = parse_eta_list(eta) if eta is not None else list(cfg.sweep.etas)
        step_list = parse_steps_list(steps) if steps is not None else list(cfg.sweep.steps)
        cfg.sweep = config_mod.validate(type(cfg.sweep), cfg.sweep.model_dump() | {"etas": etas, "steps": step_list}
                                        | ({"num_queries": num_queries} if num_queries is not None else {})
                                        | ({"limit": limit or None} if limit is not None else {})
                                        | ({"corpus": str(corpus)} if corpus is not None else {}), "command line")
        if resume and output_dir is None:
            raise OpticalError("--resume needs --output-dir DIR: the directory of the sweep to continue")
        inputs = read_sweep_inputs(cfg)  # a bad corpus fails here, before the run directory exists
        with_faiss = cfg.sweep.faiss and faiss_available()
        if cfg.sweep.faiss and not with_faiss:
            err.print("[yellow]warning:[/] sweep.faiss=true but faiss is not installed (pip install 'optical[faiss]'); "
                      "the FAISS baseline is skipped", soft_wrap=True)
        with run_dir("sweep", cfg, output_dir, name="diffusion") as run, progress_bar("sweep", total=None) as advance:
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
        if json_out:
            emit_json({k: v for k, v in summary.items() if not k.startswith("_")})


def _cell_name(record: dict) -> str:
    return f"eta={record['eta']:g} steps={record['steps']}" if record["method"] == "energy" else ""


def _print_sweep_report(summary: dict, path: Path) -> None:
    import csv as _csv

    from rich import box

    setup = summary["setup"]
    err.print(f"[bold]{setup['items']} items, {setup['queries']} queries[/] (relevance: shared label; "
              f"{setup['mean_relevant_per_query']:.1f} relevant per query on average), corpus {setup['corpus']}")
    table = Table(title="sweep: mean over queries (95% bootstrap intervals in sweep.csv)", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("method", "eta", "steps", *(title for _, title in _SWEEP_METRICS)):
        table.add_column(column, justify="left" if column == "method" else "right", no_wrap=True, min_width=max(4, len(column)))
    with open(path / "sweep.csv", encoding="utf-8") as handle:
        for row in _csv.DictReader(handle):
            table.add_row(row["method"], row["eta"], row["steps"], *(f"{float(row[m]):.4f}" for m, _ in _SWEEP_METRICS))
    err.print(table)
    best = Table(title="best cell per metric vs cosine (paired bootstrap 95% interval of the difference)", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("metric", "eta", "steps", "energy", "cosine", "diff", "95% interval", "better"):
        best.add_column(column, justify="left" if column in ("metric", "better") else "right", no_wrap=True, min_width=len(column))
    for metric, title in _SWEEP_METRICS:
        entry = summary["best"].get(metric)
        if not entry or "vs_cosine" not in entry:
            continue
        diff = entry["vs_cosine"]
        verdict = "energy" if entry["beats_cosine"] else "cosine" if entry["worse_than_cosine"] else "unclear"
        best.add_row(title, f"{entry['eta']:g}", str(entry["steps"]), f"{entry['value']:.4f}", f"{entry['cosine']:.4f}",
                     f"{diff['difference']:+.4f}", f"[{diff['low']:+.3f},{diff['high']:+.3f}]", verdict)
    err.print(best)
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
        diffs = tuning["held_out_tuned_vs_cosine"]
        held.add_row("tuned - cosine", *(f"{diffs[m]['difference']:+.4f}" for m, _ in _SWEEP_METRICS))
        held.add_row("  95% low", *(f"{diffs[m]['low']:+.4f}" for m, _ in _SWEEP_METRICS))
        held.add_row("  95% high", *(f"{diffs[m]['high']:+.4f}" for m, _ in _SWEEP_METRICS))
        err.print(held)
    rows = summary.get("_text_query_rows") or []
    cell = summary.get("text_queries", {}).get("cell", {})
    text_width = max(30, err.width - 38)  # rank, id, CWE and padding take about 38 columns
    for query in dict.fromkeys(row["query"] for row in rows):
        for method in ("energy", "cosine"):
            where = f" at eta={cell['eta']:g} steps={cell['steps']}" if method == "energy" else ""
            texts = Table(title=f"{method}{where}: {query!r} (our query)", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
            for column in ("#", "id", "CWE", "text"):
                texts.add_column(column, justify="right" if column == "#" else "left")
            for row in rows:
                if row["query"] == query and row["method"] == method:
                    text = row["text"] if len(row["text"]) <= text_width else row["text"][: text_width - 1] + "\u2026"
                    texts.add_row(str(row["rank"]), row["id"], ",".join(row["labels"]) or "-", text)
            err.print(texts)
    timing = summary["timing"]
    err.print(f"sweep {timing['sweep_seconds']:.1f} s ({timing['cells_evaluated']} evaluated, {timing['cells_skipped']} resumed; "
              f"embedding {setup['embed_seconds']:.1f} s{' cached' if setup['embedding_cache_hit'] else ''}, prepare {setup['prepare_seconds']:.2f} s)")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
