"""Plots of a benchmark run (matplotlib, Agg backend, atomic writes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from ..plotting import new_figure, save_png
from .config import LENGTHS
from .scoring import CHANCE


def plot_accuracy_by_length(summary: Mapping[str, Any], path: Path, title_note: str = "") -> Path:
    """Grouped bars: accuracy per length bucket and condition, Wilson 95% intervals, chance line."""
    conditions = list(summary["conditions"])
    buckets = [b for b in LENGTHS if any(b in summary["conditions"][c]["by_length"] for c in conditions)] + ["overall"]
    width = 0.8 / max(1, len(conditions))
    fig, ax = new_figure((1.8 + 1.6 * len(buckets), 4.2))
    for index, condition in enumerate(conditions):
        block = summary["conditions"][condition]
        stats = [block["by_length"].get(b) if b != "overall" else block for b in buckets]
        xs = [i + (index - (len(conditions) - 1) / 2) * width for i in range(len(buckets))]
        acc = [s["accuracy"] if s and s["accuracy"] is not None else 0.0 for s in stats]
        low = [max(0.0, a - s["ci95"][0]) if s else 0.0 for a, s in zip(acc, stats)]
        high = [max(0.0, s["ci95"][1] - a) if s else 0.0 for a, s in zip(acc, stats)]
        ax.bar(xs, acc, width, yerr=[low, high], capsize=3, label=condition)
    ax.axhline(CHANCE, color="grey", linestyle="--", linewidth=1, label="chance (25%)")
    ax.set_xticks(range(len(buckets)))
    ax.set_xticklabels([f"{b}\n(n={_bucket_n(summary, conditions, b)})" for b in buckets])
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (failures count as wrong)")
    ax.set_title("LongBench v2 accuracy by length, 95% Wilson intervals" + title_note, fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    save_png(fig, path)
    return path


def _bucket_n(summary: Mapping[str, Any], conditions: Sequence[str], bucket: str) -> int:
    block = summary["conditions"][conditions[0]]
    return block["n"] if bucket == "overall" else block["by_length"].get(bucket, {}).get("n", 0)


def plot_cost_vs_length(
    rows: Sequence[Mapping[str, Any]], conditions: Sequence[str], path: Path, title_note: str = ""
) -> Path:
    """Three panels against document length in text tokens: input tokens, latency and peak memory per item."""
    fig, axes = new_figure((14, 4), 1, 3)
    panels = (
        ("input_tokens", "input tokens"),
        ("latency_s", "latency per item (s)"),
        ("peak_memory_gib", "peak memory per item (GiB)"),
    )
    for condition in conditions:
        done = sorted(
            (r for r in rows if r["condition"] == condition and r["status"] == "ok" and r["doc_tokens"]),
            key=lambda r: r["doc_tokens"],
        )
        for ax, (key, _) in zip(axes, panels):
            points = [(r["doc_tokens"], r[key]) for r in done if r.get(key) is not None]
            if points:
                ax.plot(*zip(*points), "o-", markersize=4, linewidth=0.8, label=condition)
    for ax, (_, label) in zip(axes, panels):
        ax.set_xlabel("document length (text tokens)")
        ax.set_ylabel(label)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(LogLocator(base=2))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle("Cost against document length" + title_note, fontsize=10)
    fig.tight_layout()
    save_png(fig, path)
    return path
