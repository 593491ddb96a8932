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

from scipy.stats import binom, norm

from .data import DIFFICULTIES, LENGTHS

CHANCE = 0.25
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


def _accuracy_block(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    correct = sum(1 for row in rows if row["correct"])
    low, high = wilson_interval(correct, n)
    return {"n": n, "correct": correct, "accuracy": correct / n if n else None, "ci95": [low, high]}


def _mean(values: Iterable[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summarize_condition(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Overall accuracy (failures count as wrong) with its Wilson interval, completion,
    accuracy on completed items, per-bucket and per-difficulty accuracy, tokens and time."""
    completed = [row for row in rows if row["status"] == "ok"]
    overall = _accuracy_block(rows)
    on_completed = _accuracy_block(completed)
    failures: dict[str, int] = {}
    for row in rows:
        if row["status"] != "ok":
            failures[row["status"]] = failures.get(row["status"], 0) + 1
    context_tokens = _mean(row["context_tokens"] for row in completed)
    doc_tokens = _mean(row["doc_tokens"] for row in completed)
    return {
        **overall,
        "chance": CHANCE,
        "completed": len(completed),
        "completion_rate": len(completed) / len(rows) if rows else None,
        "failures": failures,
        "accuracy_on_completed": on_completed["accuracy"],
        "accuracy_on_completed_ci95": on_completed["ci95"],
        "by_length": {
            b: _accuracy_block([r for r in rows if r["length"] == b])
            for b in LENGTHS
            if any(r["length"] == b for r in rows)
        },
        "by_difficulty": {
            d: _accuracy_block([r for r in rows if r["difficulty"] == d])
            for d in DIFFICULTIES
            if any(r["difficulty"] == d for r in rows)
        },
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
    """McNemar's exact test for every pair of conditions on the items both have."""
    tests = []
    for first, second in combinations(rows_by_condition, 2):
        a = {row["id"]: bool(row["correct"]) for row in rows_by_condition[first]}
        b = {row["id"]: bool(row["correct"]) for row in rows_by_condition[second]}
        shared = sorted(set(a) & set(b))
        only_first = sum(1 for i in shared if a[i] and not b[i])
        only_second = sum(1 for i in shared if b[i] and not a[i])
        tests.append(
            {
                "first": first,
                "second": second,
                "n": len(shared),
                "only_first_correct": only_first,
                "only_second_correct": only_second,
                "both_correct": sum(1 for i in shared if a[i] and b[i]),
                "p_value": mcnemar_exact(only_first, only_second),
            }
        )
    return tests


def summarize_run(rows: Sequence[Mapping[str, Any]], conditions: Sequence[str]) -> dict[str, Any]:
    """The whole run's summary: one block per condition plus the paired tests."""
    by_condition = {c: [row for row in rows if row["condition"] == c] for c in conditions}
    by_condition = {c: r for c, r in by_condition.items() if r}
    return {
        "chance": CHANCE,
        "conditions": {c: summarize_condition(r) for c, r in by_condition.items()},
        "mcnemar": paired_tests(by_condition),
    }
