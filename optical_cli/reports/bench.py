"""`bench longbench`'s report: one table per condition (accuracy with its Wilson interval, completion,
compression, latency by stage, memory), then throughput, parameters and the McNemar tests."""

from __future__ import annotations

from rich.markup import escape

from ..bench.config import DIFFICULTIES, LENGTHS
from .console import err, print_table, random_weights_banner

BENCH_RANDOM_WEIGHTS = (
    "the models are random (tiny test models or random full-size ones). The accuracies below test the pipeline; "
    "they are not results and say nothing about reading."
)
LATENCY_STAGES = ("render", "encode", "adapter", "prefill", "decode", "latency")


def print_longbench(summary: dict) -> None:
    if summary["random_weights"]:
        random_weights_banner(BENCH_RANDOM_WEIGHTS)
    suffix = " [random weights: not a result]" if summary["random_weights"] else ""
    for condition, block in summary["conditions"].items():
        print_table(f"LongBench v2: {condition}{suffix}", condition_rows(block, summary["chance"]))
    _print_run_lines(summary)


def accuracy_text(block: dict | None) -> str:
    """``42.0% (21/50) [29.4%, 55.7%]``: accuracy, counts and the 95% Wilson interval."""
    if not block or block.get("accuracy") is None:
        return "-"
    low, high = block["ci95"]
    return f"{block['accuracy']:.1%} ({block['correct']}/{block['n']}) [{low:.1%}, {high:.1%}]"


def _formatted(value: float | None, form: str) -> str:
    return "-" if value is None else format(value, form)


def condition_rows(block: dict, chance: float) -> list[tuple[str, str]]:
    """The rows of one condition's table."""
    failures = ", ".join(f"{k} {v}" for k, v in block["failures"].items())
    completed = f"{block['completed']}/{block['n']} ({block['completion_rate']:.0%})"
    rows = [
        ("accuracy, failures wrong [95% Wilson]", accuracy_text(block)),
        ("chance", f"{chance:.0%}"),
        ("completed", completed + (f"  failures: {failures}" if failures else "")),
        ("accuracy on completed", _formatted(block["accuracy_on_completed"], ".1%")),
    ]
    rows += [(f"  {b}", accuracy_text(block["by_length"].get(b))) for b in LENGTHS if b in block["by_length"]]
    rows += [
        (f"  {d}", accuracy_text(block["by_difficulty"].get(d))) for d in DIFFICULTIES if d in block["by_difficulty"]
    ]
    return rows + _cost_rows(block)


def _cost_rows(block: dict) -> list[tuple[str, str]]:
    latency = block["mean_latency_s"]
    ratio = block["compression_ratio"]
    return [
        ("mean input tokens", _formatted(block["mean_input_tokens"], ".0f")),
        ("truncated (completed items)", str(block["truncated"])),
        ("compression (doc tokens / context tokens)", "-" if ratio is None else f"{ratio:.2f}x"),
        ("characters per page", _formatted(block["mean_chars_per_page"], ".0f")),
        (
            "latency s: render / encode / adapter / prefill / decode / total",
            " / ".join(_formatted(latency[k], ".3f") for k in LATENCY_STAGES),
        ),
        ("peak memory GiB (largest item)", _formatted(block["max_peak_memory_gib"], ".2f")),
    ]


def _print_run_lines(summary: dict) -> None:
    rate = summary.get("throughput") or {}
    if rate.get("rows"):
        err.print(
            f"throughput: {rate['rows']} rows in {rate['wall_s']:.1f} s = {rate['rows_per_s']:.3g} rows/s, "
            f"{rate['items_per_s']:.3g} items/s ({rate['in_flight']} request(s) in flight; model loading not counted)"
        )
    counts = ", ".join(f"{name} {count:,}" for name, count in summary["parameters"].items() if count is not None)
    memory = ", ".join(f"{key} {value:.2f}" for key, value in summary["peak_memory_gib"].items())
    err.print(f"parameters: {counts}; run peak memory: {memory}")
    for test in summary["mcnemar"]:
        err.print(
            escape(
                f"McNemar exact {test['first']} vs {test['second']}: n={test['n']}, only {test['first']} right "
                f"{test['only_first_correct']}, only {test['second']} right {test['only_second_correct']}, "
                f"p={test['p_value']:.3g}"
            )
        )


# ---------------------------------------------------------------------------------------
# RULER, MRCR, LongBench v1: the same tables, their own groups and headline tables

_GROUP_KEYS = ("by_task", "by_length", "by_dataset", "by_needles", "by_bin")


def print_benchmark(summary: dict) -> None:
    """Any benchmark's report: a table per condition (score with its interval, completion, per group, cost),
    then the benchmark's own table (RULER's per-task scores), needle legibility, run lines and paired tests."""
    if summary["random_weights"]:
        random_weights_banner(BENCH_RANDOM_WEIGHTS)
    suffix = " [random weights: not a result]" if summary["random_weights"] else ""
    title = summary.get("benchmark", "benchmark")
    for condition, block in summary["conditions"].items():
        rows = [
            ("score, failures 0 [95% interval]", accuracy_text(block)),
            ("completed", f"{block['completed']}/{block['n']} ({block['completion_rate']:.0%})"),
            ("score on completed", _formatted(block["accuracy_on_completed"], ".1%")),
        ]
        for key in _GROUP_KEYS:
            rows += [(f"  {key[3:]} {value}", accuracy_text(group)) for value, group in block.get(key, {}).items()]
        print_table(f"{title}: {condition}{suffix}", rows + _cost_rows(block))
    for condition, per_length in (summary.get("ruler") or {}).items():
        table = [
            (f"{length}", "  ".join(f"{t} {v:.1f}" for t, v in scores.items())) for length, scores in per_length.items()
        ]
        print_table(f"RULER task scores (x100, as RULER prints them): {condition}{suffix}", table)
    table = summary.get("longbench_v1")
    for condition, scores in (table or {}).items():
        rows = [(name, f"{value:.2f}") for name, value in scores.items()]
        print_table(f"LongBench v1 scores (x100, as LongBench prints them): {condition}{suffix}", rows)
    for label, block in (summary.get("needle_legible") or {}).items():
        low, high = block["ci95"]
        share = "-" if block["share"] is None else f"{block['share']:.1%}"
        err.print(
            f"needle_legible {label}: {share} ({block['legible']}/{block['needles']} read exactly, "
            f"{block['shown']} on the pages read) [{low:.1%}, {high:.1%}]"
        )
    lengths = summary.get("lengths")
    if lengths:
        err.print(
            f"prompt lengths: {lengths['within_1_percent']}/{lengths['items']} within 1% of their targets "
            f"(largest shortfall {lengths['max_shortfall']:.2%}, over target: {lengths['over_target']})"
        )
    _print_run_lines(summary)
