"""Answer extraction, intervals, paired tests and per-condition summaries.

Extraction follows the benchmark's official rule so our numbers compare with published
ones: markdown asterisks are dropped, then the first match of ``The correct answer is (X)``
wins, else the first ``The correct answer is X``; anything else (lower case included) is no
answer, and no answer counts as wrong.
"""

from __future__ import annotations

import math
import re
from itertools import combinations
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy.stats import binom, norm

from .config import DIFFICULTIES, LENGTHS

CHANCE = 0.25
LONGBENCH_V2_GROUPS = {"by_length": ("length", LENGTHS), "by_difficulty": ("difficulty", DIFFICULTIES)}
_WITH_PARENS = re.compile(r"The correct answer is \(([A-D])\)")
_BARE = re.compile(r"The correct answer is ([A-D])")


def extract_answer(output: str | None) -> str | None:
    """The letter the model chose, by the official two regexes; None when neither matches."""
    if not output:
        return None
    text = output.replace("*", "")
    for pattern in (_WITH_PARENS, _BARE):
        match = pattern.search(text)
        if match:
            return match.group(1)
    return None


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes={successes} must lie in [0, n={n}]")
    z = norm.ppf(0.5 + confidence / 2)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends: no rounding dust
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pair counts.

    Under the null each discordant pair is a fair coin, so the p-value is twice the binomial
    tail of the smaller count (capped at 1); with no discordant pairs it is 1.
    """
    discordant = only_first + only_second
    if discordant == 0:
        return 1.0
    return float(min(1.0, 2 * binom.cdf(min(only_first, only_second), discordant, 0.5)))


# ---------------------------------------------------------------------------------------
# Summaries over item rows (the records written to items.csv)


def row_score(row: Mapping[str, Any]) -> float:
    """A row's score in [0, 1]: its ``score`` column, or (rows of earlier versions) 1 when correct."""
    score = row.get("score")
    return float(score) if score is not None else (1.0 if row["correct"] else 0.0)


def bootstrap_mean_interval(values: Sequence[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """A percentile 95% interval of the mean, over ``resamples`` seeded resamples of the values."""
    if not values:
        return 0.0, 1.0
    data = np.asarray(values, dtype=np.float64)
    picks = np.random.default_rng(seed).integers(0, len(data), size=(resamples, len(data)))
    low, high = np.percentile(data[picks].mean(axis=1), [2.5, 97.5])
    return float(low), float(high)


def score_block(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean score (failures count 0) with a 95% interval: Wilson when every score is 0 or 1, else a
    bootstrap of the mean; ``correct`` counts full-credit rows."""
    scores = [row_score(row) for row in rows]
    n = len(scores)
    correct = sum(1 for s in scores if s == 1.0)
    binary = all(s in (0.0, 1.0) for s in scores)
    low, high = wilson_interval(correct, n) if binary else bootstrap_mean_interval(scores)
    return {
        "n": n,
        "correct": correct,
        "accuracy": sum(scores) / n if n else None,
        "ci95": [low, high],
        "interval": "wilson" if binary else "bootstrap",
    }


def _mean(values: Iterable[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _grouped(rows: Sequence[Mapping[str, Any]], column: str, order: Sequence[Any]) -> dict[Any, dict[str, Any]]:
    values = list(order) or list(dict.fromkeys(row.get(column) for row in rows))
    return {
        value: score_block([row for row in rows if row.get(column) == value])
        for value in values
        if any(row.get(column) == value for row in rows)
    }


def summarize_condition(
    rows: Sequence[Mapping[str, Any]],
    groups: Mapping[str, tuple[str, Sequence[Any]]] | None = None,
    chance: float | None = CHANCE,
) -> dict[str, Any]:
    """Overall score (failures count as 0) with its interval, completion, the score on completed
    rows, the score per group (LongBench v2: per length bucket and difficulty), tokens and time."""
    if groups is None:
        groups = LONGBENCH_V2_GROUPS
    completed = [row for row in rows if row["status"] == "ok"]
    on_completed = score_block(completed)
    failures: dict[str, int] = {}
    for row in rows:
        if row["status"] != "ok":
            failures[row["status"]] = failures.get(row["status"], 0) + 1
    context_tokens = _mean(row["context_tokens"] for row in completed)
    doc_tokens = _mean(row["doc_tokens"] for row in completed)
    return {
        **score_block(rows),
        "chance": chance,
        "completed": len(completed),
        "completion_rate": len(completed) / len(rows) if rows else None,
        "failures": failures,
        "accuracy_on_completed": on_completed["accuracy"],
        "accuracy_on_completed_ci95": on_completed["ci95"],
        **{name: _grouped(rows, column, order) for name, (column, order) in groups.items()},
        "truncated": sum(1 for row in completed if row["truncated"]),
        "mean_input_tokens": _mean(row["input_tokens"] for row in completed),
        "mean_context_tokens": context_tokens,
        "mean_pages": _mean(row["pages"] for row in completed if row["pages"]),
        # document text tokens per token of context the model actually received
        "compression_ratio": doc_tokens / context_tokens if doc_tokens and context_tokens else None,
        "mean_chars_per_page": _mean(row["chars_per_page"] for row in completed if row["pages"]),
        "mean_latency_s": {
            stage: _mean(row[f"{stage}_s"] for row in completed)
            for stage in ("render", "encode", "adapter", "prefill", "decode", "latency")
        },
        "max_peak_memory_gib": max(
            (row["peak_memory_gib"] for row in rows if row["peak_memory_gib"] is not None), default=None
        ),
    }


def paired_tests(rows_by_condition: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """For every pair of conditions, on the items both have: an exact two-sided sign test on the
    items where one scored higher than the other; with scores of 0 or 1 that is McNemar's exact test."""
    tests = []
    for first, second in combinations(rows_by_condition, 2):
        if "@" in first and "@" in second and first.split("@")[0] != second.split("@")[0]:
            if first.split("@")[1] != second.split("@")[1]:
                continue  # a grid: page conditions are compared within a setting, and each to the text ones
        a = {row["id"]: row_score(row) for row in rows_by_condition[first]}
        b = {row["id"]: row_score(row) for row in rows_by_condition[second]}
        shared = sorted(set(a) & set(b))
        only_first = sum(1 for i in shared if a[i] > b[i])
        only_second = sum(1 for i in shared if b[i] > a[i])
        tests.append(
            {
                "first": first,
                "second": second,
                "n": len(shared),
                "only_first_correct": only_first,
                "only_second_correct": only_second,
                "both_correct": sum(1 for i in shared if a[i] == b[i] == 1.0),
                "p_value": mcnemar_exact(only_first, only_second),
            }
        )
    return tests


def condition_key(row: Mapping[str, Any]) -> str:
    """The summary's name for a row's condition: ``optical`` or, in a render grid, ``optical@12px-tiny``."""
    render = row.get("render") or ""
    return f"{row['condition']}@{render}" if render else row["condition"]


def summarize_run(
    rows: Sequence[Mapping[str, Any]],
    conditions: Sequence[str],
    groups: Mapping[str, tuple[str, Sequence[Any]]] | None = None,
    chance: float | None = CHANCE,
) -> dict[str, Any]:
    """The whole run's summary: one block per condition (per render setting in a grid) plus the paired tests."""
    keys = [key for c in conditions for key in dict.fromkeys(condition_key(r) for r in rows if r["condition"] == c)]
    by_condition = {key: [row for row in rows if condition_key(row) == key] for key in keys}
    return {
        "chance": chance,
        "conditions": {c: summarize_condition(r, groups, chance) for c, r in by_condition.items()},
        "mcnemar": paired_tests(by_condition),
    }
