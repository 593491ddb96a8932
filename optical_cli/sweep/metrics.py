"""Information-retrieval metrics per query, and bootstrap intervals of their means.

Input is a ranked relevance matrix ``hits`` (queries x depth, True where the item at that
rank is relevant to the query) plus ``n_relevant``, the number of items in the whole
corpus that are relevant to each query (the query itself excluded). Every metric uses
binary gains. Definitions (k = cutoff, R = n_relevant, rel_i = hits at rank i, 1-based):

- MRR: 1 / rank of the first relevant item within the retrieved depth, 0 when none.
- AP@k: sum_{i<=k} P@i * rel_i / min(R, k); MAP@k is its mean over queries.
- NDCG@k: DCG = sum_{i<=k} rel_i / log2(i + 1); the ideal DCG puts min(R, k) relevant
  items first. R counts ALL relevant items of the query, not the ones retrieved (the
  published sweep normalised by the retrieved list and overstated NDCG).
- Recall@k: relevant items in the top k / R.   Precision@k: relevant in the top k / k.

A query needs R >= 1; queries without relevant items are not valid and are rejected.
"""

from __future__ import annotations

import numpy as np

# (name, cutoff) in the order they appear in tables and CSVs.
METRICS: tuple[tuple[str, int | None], ...] = (
    ("mrr", None),
    ("map_at_20", 20),
    ("ndcg_at_10", 10),
    ("recall_at_10", 10),
    ("recall_at_20", 20),
    ("precision_at_10", 10),
)
METRIC_NAMES: tuple[str, ...] = tuple(name for name, _ in METRICS)
MIN_DEPTH = 20  # the deepest cutoff above


def _check(hits: np.ndarray, n_relevant: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    hits = np.asarray(hits, dtype=bool)
    n_relevant = np.asarray(n_relevant, dtype=np.int64)
    if hits.ndim != 2:
        raise ValueError(f"hits must be queries x depth, got shape {hits.shape}")
    if n_relevant.shape != (hits.shape[0],):
        raise ValueError(f"n_relevant must have one entry per query ({hits.shape[0]}), got {n_relevant.shape}")
    if np.any(n_relevant < 1):
        raise ValueError("every query needs at least one relevant item (n_relevant >= 1)")
    if np.any(hits.sum(axis=1) > n_relevant):
        raise ValueError("a query has more relevant hits than relevant items; n_relevant is wrong")
    return hits, n_relevant


def reciprocal_rank(hits: np.ndarray) -> np.ndarray:
    any_hit = hits.any(axis=1)
    first = hits.argmax(axis=1) + 1
    return np.where(any_hit, 1.0 / first, 0.0)


def precision_at(hits: np.ndarray, k: int) -> np.ndarray:
    return hits[:, :k].sum(axis=1) / k


def recall_at(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    return hits[:, :k].sum(axis=1) / n_relevant


def average_precision_at(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    top = hits[:, :k].astype(np.float64)
    ranks = np.arange(1, top.shape[1] + 1)
    precision_at_rank = np.cumsum(top, axis=1) / ranks
    return (precision_at_rank * top).sum(axis=1) / np.minimum(n_relevant, k)


def ndcg_at(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    top = hits[:, :k].astype(np.float64)
    dcg = top @ discounts[: top.shape[1]]
    ideal_cumulative = np.concatenate([[0.0], np.cumsum(discounts)])
    ideal = ideal_cumulative[np.minimum(n_relevant, k)]
    return dcg / ideal


def per_query_metrics(hits: np.ndarray, n_relevant: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric of ``METRICS`` per query; ``hits`` must be at least ``MIN_DEPTH`` deep."""
    hits, n_relevant = _check(hits, n_relevant)
    if hits.shape[1] < MIN_DEPTH:
        raise ValueError(f"hits must cover at least {MIN_DEPTH} ranks, got {hits.shape[1]}")
    return {
        "mrr": reciprocal_rank(hits),
        "map_at_20": average_precision_at(hits, n_relevant, 20),
        "ndcg_at_10": ndcg_at(hits, n_relevant, 10),
        "recall_at_10": recall_at(hits, n_relevant, 10),
        "recall_at_20": recall_at(hits, n_relevant, 20),
        "precision_at_10": precision_at(hits, 10),
    }


# ---------------------------------------------------------------------------------------
# Bootstrap intervals (percentile method, seeded)


def _resample_means(values: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Means of ``n_boot`` resamples of the rows of ``values`` (queries x columns)."""
    rng = np.random.default_rng(seed)
    n = values.shape[0]
    means = np.empty((n_boot,) + values.shape[1:], dtype=np.float64)
    chunk = max(1, 2_000_000 // max(n, 1))  # bound the index matrix to ~16 MB
    for start in range(0, n_boot, chunk):
        stop = min(start + chunk, n_boot)
        rows = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = values[rows].mean(axis=1)
    return means


def bootstrap_interval(values: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the mean over queries and its percentile bootstrap interval."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError("bootstrap_interval needs a non-empty 1-D array of per-query values")
    means = _resample_means(values[:, None], n_boot, seed)[:, 0]
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(values.mean()), float(low), float(high)


def paired_bootstrap_difference(a: np.ndarray, b: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Mean of a - b over the same queries, its interval, and the share of resamples with a <= b.

    The queries are resampled jointly for both methods, so per-query difficulty cancels.
    ``p_not_better`` is a one-sided bootstrap p-value for "a beats b".
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired values need equal 1-D shapes, got {a.shape} and {b.shape}")
    diff = a - b
    means = _resample_means(diff[:, None], n_boot, seed)[:, 0]
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return {
        "difference": float(diff.mean()),
        "low": float(low),
        "high": float(high),
        "p_not_better": float((means <= 0).mean()),
    }


def summarize(per_query: dict[str, np.ndarray], n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """Flat row: each metric's mean plus ``<metric>_low`` / ``<metric>_high`` interval bounds.

    All metrics share one set of resampled query indices, so their intervals are coherent.
    """
    names = [name for name in METRIC_NAMES if name in per_query]
    table = np.column_stack([np.asarray(per_query[name], dtype=np.float64) for name in names])
    means = _resample_means(table, n_boot, seed)
    low = np.percentile(means, 2.5, axis=0)
    high = np.percentile(means, 97.5, axis=0)
    row: dict[str, float] = {}
    for column, name in enumerate(names):
        row[name] = float(table[:, column].mean())
        row[f"{name}_low"] = float(low[column])
        row[f"{name}_high"] = float(high[column])
    return row
