"""Plots of a benchmark run (matplotlib, Agg backend, atomic writes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from ..plotting import new_figure, save_png
from .config import LENGTHS
from .scoring import CHANCE, condition_key, score_block


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


def _errorbar(ax, xs, blocks, label, style="o-"):
    ys = [b["accuracy"] or 0.0 for b in blocks]
    low = [max(0.0, y - b["ci95"][0]) for y, b in zip(ys, blocks)]
    high = [max(0.0, b["ci95"][1] - y) for y, b in zip(ys, blocks)]
    ax.errorbar(xs, ys, yerr=[low, high], fmt=style, capsize=3, markersize=4, linewidth=1, label=label)


def plot_score_by_length(rows: Sequence[Mapping[str, Any]], path: Path, title: str, note: str = "") -> Path:
    """Mean score against target length, one line per condition (per render setting in a grid), 95% intervals."""
    fig, ax = new_figure((7.5, 4.5))
    for key in dict.fromkeys(condition_key(r) for r in rows):
        mine = [r for r in rows if condition_key(r) == key]
        lengths = sorted({r["length"] for r in mine})
        _errorbar(ax, lengths, [score_block([r for r in mine if r["length"] == n]) for n in lengths], key)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("target length (tokens of the reader)")
    ax.set_ylabel("score (failures count 0)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"{title}: score by length, 95% intervals{note}", fontsize=10)
    fig.tight_layout()
    save_png(fig, path)
    return path


def _compression_points(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[float, list]]]:
    """Per page condition and setting: (mean text tokens per vision token, rows) at each length."""
    points: dict[str, list[tuple[float, list]]] = {}
    for key in dict.fromkeys(condition_key(r) for r in rows if r.get("render") and r["condition"] == "optical"):
        mine = [r for r in rows if condition_key(r) == key]
        for length in sorted({r["length"] for r in mine}):
            at = [r for r in mine if r["length"] == length]
            ratios = [
                r["doc_tokens"] / r["context_tokens"] for r in at if r.get("context_tokens") and r.get("doc_tokens")
            ]
            if ratios:
                points.setdefault(key, []).append((sum(ratios) / len(ratios), at))
    return points


def plot_score_by_compression(
    rows: Sequence[Mapping[str, Any]],
    legibility: Mapping[str, Any] | None,
    path: Path,
    title: str,
    note: str = "",
) -> Path:
    """Left: optical score against text tokens per vision token, one point per render setting and length.
    Right: the share of needles the OCR judge reads exactly at the same points (real with random weights)."""
    fig, (left, right) = new_figure((12, 4.5), 1, 2)
    points = _compression_points(rows)
    for key, found in points.items():
        found = sorted(found, key=lambda p: p[0])
        _errorbar(left, [x for x, _ in found], [score_block(at) for _, at in found], key, "o")
        render = key.split("@", 1)[1]
        per_length = (legibility or {}).get(render, {}).get("by_length", {})
        blocks = [per_length.get(str(at[0]["length"])) for _, at in found]
        xs = [x for (x, _), b in zip(found, blocks) if b and b["needles"]]
        chosen = [{"accuracy": b["share"], "ci95": b["ci95"]} for b in blocks if b and b["needles"]]
        if chosen:
            _errorbar(right, xs, chosen, render, "s")
    for ax, label in ((left, "score of the optical condition"), (right, "needles read exactly (OCR judge)")):
        ax.set_xlabel("text tokens per vision token")
        ax.set_ylabel(label)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    left.set_title(f"{title}: score against compression{note}", fontsize=10)
    right.set_title("needle_legible: can the page show the needle? (95% Wilson)", fontsize=10)
    fig.tight_layout()
    save_png(fig, path)
    return path
