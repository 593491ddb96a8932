"""IR metrics computed by trec_eval (through pytrec_eval), and bootstrap intervals of their means.

``TrecEvaluator`` holds the judgements (qrels) of every query once: for each query, the item
rows relevant to it in the whole corpus (the query itself excluded), all with gain 1. A run is
the ranked item rows of each query (the query itself removed), scored so that trec_eval keeps
our order. Measures, trec_eval's definitions (R = relevant items of the query in the corpus):

- ``mrr``: recip_rank, 1 / rank of the first relevant item in the retrieved depth, 0 when none.
- ``map_cut_20``: map_cut.20, sum over the top 20 of P@i * rel_i, divided by R (not min(R, 20):
  with R > 20 its maximum is 20/R).
- ``ndcg_at_10``: ndcg_cut.10, DCG over the top 10 / the ideal DCG of all R relevant items.
- ``recall_at_10`` / ``recall_at_20`` / ``recall_at_50`` / ``recall_at_100``: recall.k, relevant in the
  top k / R (k past the retrieved depth counts only what was retrieved).
- ``precision_at_1`` / ``precision_at_10``: P.1 / P.10.
- ``distinct_labels_at_20`` (ours, not trec_eval's): how many different labels the top 20 carry
  (every label of every retrieved item counts once), when the evaluator has the items' labels.

The head of a ranking is MRR and P@1 (``HEAD``); its tail is recall at 20, 50 and 100 and the
variety of the top 20 (``TAIL``): the two sides of the claim that energy search keeps the head
while reaching further into the relevant items.

Intervals (percentile bootstrap, seeded) come two ways: resampling queries, and resampling
label clusters (all queries that share a primary label go in or out together), because queries
that share a label are not independent; the cluster interval is the wider, honest one.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pytrec_eval

from ..bootstrap import percentile_interval, resample_ratios

# (our name, trec_eval's name) in the order they appear in tables and CSVs.
METRICS: tuple[tuple[str, str], ...] = (
    ("mrr", "recip_rank"),
    ("map_cut_20", "map_cut_20"),
    ("ndcg_at_10", "ndcg_cut_10"),
    ("recall_at_10", "recall_10"),
    ("recall_at_20", "recall_20"),
    ("precision_at_10", "P_10"),
    ("precision_at_1", "P_1"),
    ("recall_at_50", "recall_50"),
    ("recall_at_100", "recall_100"),
)
DISTINCT_LABELS = "distinct_labels_at_20"
METRIC_NAMES: tuple[str, ...] = tuple(name for name, _ in METRICS) + (DISTINCT_LABELS,)
TREC_MEASURES = {"recip_rank", "map_cut.20", "ndcg_cut.10", "recall.10,20,50,100", "P.1,10"}
MIN_DEPTH = 20  # the cutoff of MAP@20 and of the label variety (recall@50/@100 count what the depth holds)
HEAD = ("mrr", "precision_at_1")
TAIL = ("recall_at_20", "recall_at_50", "recall_at_100", DISTINCT_LABELS)


class TrecEvaluator:
    """trec_eval over fixed judgements: ``relevant[i]`` are the item rows relevant to query ``i``.

    ``labels`` (items x labels, bool), when given, counts the distinct labels of each top 20;
    without it that metric is NaN (not measured)."""

    def __init__(self, relevant: Sequence[np.ndarray], labels: Optional[np.ndarray] = None):
        if any(len(rows) == 0 for rows in relevant):
            raise ValueError("every query needs at least one relevant item")
        qrels = {str(q): dict.fromkeys(map(str, np.asarray(rows).tolist()), 1) for q, rows in enumerate(relevant)}
        self._evaluator = pytrec_eval.RelevanceEvaluator(qrels, TREC_MEASURES)
        self.n_queries = len(relevant)
        self.labels = labels

    def evaluate(self, ranked: np.ndarray, positions: Optional[np.ndarray] = None) -> dict[str, np.ndarray]:
        """Per-query metrics of ``ranked`` item rows (queries x depth, best first) of the queries at ``positions``."""
        ranked = np.asarray(ranked)
        positions = np.arange(ranked.shape[0]) if positions is None else np.asarray(positions)
        if ranked.ndim != 2 or ranked.shape[0] != positions.size:
            raise ValueError(
                f"ranked must be queries x depth with one row per position, got {ranked.shape} for {positions.size}"
            )
        if ranked.shape[1] < MIN_DEPTH:
            raise ValueError(f"rankings must cover at least {MIN_DEPTH} ranks, got {ranked.shape[1]}")
        scores = [float(ranked.shape[1] - r) for r in range(ranked.shape[1])]  # descending: trec_eval keeps our order
        run = {str(p): dict(zip(map(str, row), scores)) for p, row in zip(positions.tolist(), ranked.tolist())}
        out = self._evaluator.evaluate(run)
        metrics = {name: np.array([out[str(p)][trec] for p in positions.tolist()]) for name, trec in METRICS}
        metrics[DISTINCT_LABELS] = distinct_labels(ranked[:, :MIN_DEPTH], self.labels)
        return metrics


def distinct_labels(top: np.ndarray, labels: Optional[np.ndarray]) -> np.ndarray:
    """Per query: the number of different labels among the items of ``top`` (queries x k item rows)."""
    if labels is None:
        return np.full(top.shape[0], np.nan)
    return labels[top].any(axis=1).sum(axis=1).astype(np.float64)


# ---------------------------------------------------------------------------------------
# Bootstrap intervals (percentile method, seeded)


def _resample_means(values: np.ndarray, n_boot: int, seed: int, clusters: Optional[np.ndarray] = None) -> np.ndarray:
    """Means of ``n_boot`` resamples of ``values`` (queries x columns): of queries, or of whole clusters.

    A cluster resample draws clusters with replacement and averages every query of the drawn
    clusters (a ratio of sums, so large clusters weigh what they hold).
    """
    if clusters is None:
        sums, sizes = values, np.ones(values.shape[0])
    else:
        _, unit = np.unique(clusters, return_inverse=True)
        sums = np.zeros((unit.max() + 1,) + values.shape[1:])
        np.add.at(sums, unit, values)
        sizes = np.bincount(unit).astype(np.float64)
    return resample_ratios(sums, sizes, n_boot, seed)


def paired_bootstrap_difference(
    a: np.ndarray,
    b: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    clusters: Optional[np.ndarray] = None,
) -> dict[str, float]:
    """Mean of a - b over the same queries, its interval, and the share of resamples with a <= b.

    The queries (or, with ``clusters``, the label clusters) are resampled jointly for both
    methods, so per-query difficulty cancels. ``p_not_better`` is a one-sided bootstrap p-value
    for "a beats b".
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired values need equal 1-D shapes, got {a.shape} and {b.shape}")
    diff = a - b
    means = _resample_means(diff[:, None], n_boot, seed, clusters)[:, 0]
    low, high = percentile_interval(means, level)
    return {
        "difference": float(diff.mean()),
        "low": low,
        "high": high,
        "p_not_better": float((means <= 0).mean()),
    }


def compare(a: np.ndarray, b: np.ndarray, n_boot: int, seed: int, clusters: np.ndarray) -> dict[str, float]:
    """a - b with both intervals: ``low``/``high`` resample queries, ``cluster_low``/``cluster_high`` label clusters."""
    by_query = paired_bootstrap_difference(a, b, n_boot, seed)
    by_cluster = paired_bootstrap_difference(a, b, n_boot, seed, clusters=clusters)
    return {
        **by_query,
        "cluster_low": by_cluster["low"],
        "cluster_high": by_cluster["high"],
        "cluster_p_not_better": by_cluster["p_not_better"],
    }


def summarize_metrics(
    per_query: dict[str, np.ndarray], n_boot: int = 1000, seed: int = 0, clusters: Optional[np.ndarray] = None
) -> dict[str, float]:
    """Flat row: each metric's mean, ``<metric>_low``/``_high`` (queries resampled) and, with
    ``clusters``, ``<metric>_cluster_low``/``_cluster_high`` (label clusters resampled).

    All metrics share one set of resamples, so their intervals are coherent.
    """
    names = [name for name in METRIC_NAMES if name in per_query]
    table = np.column_stack([np.asarray(per_query[name], dtype=np.float64) for name in names])
    row: dict[str, float] = {}
    intervals = [("", None)] + ([("_cluster", clusters)] if clusters is not None else [])
    for column, name in enumerate(names):
        row[name] = float(table[:, column].mean())
    for suffix, groups in intervals:
        low, high = percentile_interval(_resample_means(table, n_boot, seed, groups))
        for column, name in enumerate(names):
            row[f"{name}{suffix}_low"] = float(low[column])
            row[f"{name}{suffix}_high"] = float(high[column])
    return row
