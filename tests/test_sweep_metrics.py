"""IR metrics against hand-computed rankings and scikit-learn's ndcg_score."""

import math

import numpy as np
import pytest

from optical_cli.sweep import metrics as m


def _pad(ranks: list[int], depth: int = 20) -> np.ndarray:
    """Binary hit row with True at the given 1-based ranks."""
    row = np.zeros(depth, dtype=bool)
    row[[r - 1 for r in ranks]] = True
    return row


def test_hand_computed_single_query():
    # relevant at ranks 2 and 5, 4 relevant items in the corpus
    hits = _pad([2, 5])[None, :]
    n_rel = np.array([4])
    out = m.per_query_metrics(hits, n_rel)
    assert out["mrr"][0] == pytest.approx(0.5)
    assert out["precision_at_10"][0] == pytest.approx(0.2)
    assert out["recall_at_10"][0] == pytest.approx(0.5)
    assert out["recall_at_20"][0] == pytest.approx(0.5)
    # AP@20 = (1/2 + 2/5) / min(4, 20)
    assert out["map_at_20"][0] == pytest.approx((0.5 + 0.4) / 4)
    dcg = 1 / math.log2(3) + 1 / math.log2(6)
    idcg = sum(1 / math.log2(i + 1) for i in range(1, 5))  # ideal from ALL 4 relevant, not the 2 retrieved
    assert out["ndcg_at_10"][0] == pytest.approx(dcg / idcg)


def test_ideal_dcg_uses_all_relevant_items_not_retrieved_list():
    # one hit at rank 1 is perfect for the retrieved list but not when 10 items are relevant
    hits = _pad([1])[None, :]
    few = m.ndcg_at(hits, np.array([1]), 10)[0]
    many = m.ndcg_at(hits, np.array([10]), 10)[0]
    assert few == pytest.approx(1.0)
    assert many == pytest.approx(1.0 / sum(1 / math.log2(i + 1) for i in range(1, 11)))


def test_no_hits_and_perfect_ranking():
    hits = np.vstack([_pad([]), _pad(list(range(1, 21)))])
    out = m.per_query_metrics(hits, np.array([3, 25]))
    for name in m.METRIC_NAMES:
        assert out[name][0] == 0.0
    assert out["mrr"][1] == 1.0
    assert out["ndcg_at_10"][1] == pytest.approx(1.0)
    assert out["map_at_20"][1] == pytest.approx(1.0)  # min(25, 20) = 20 relevant retrieved in order
    assert out["recall_at_20"][1] == pytest.approx(20 / 25)
    assert out["precision_at_10"][1] == 1.0


def test_ap_denominator_is_min_of_relevant_and_cutoff():
    hits = _pad([1, 2])[None, :]
    assert m.average_precision_at(hits, np.array([2]), 20)[0] == pytest.approx(1.0)
    assert m.average_precision_at(hits, np.array([40]), 20)[0] == pytest.approx(2 / 20)


def test_matches_sklearn_ndcg_when_whole_ranking_is_given():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    n_items, n_queries = 60, 12
    truth = rng.random((n_queries, n_items)) < 0.15
    truth[:, 0] = True  # at least one relevant item per query
    scores = rng.random((n_queries, n_items))  # distinct, so no tie averaging
    order = np.argsort(-scores, axis=1)
    hits = np.take_along_axis(truth, order, axis=1)
    ours = m.ndcg_at(hits, truth.sum(axis=1), 10)
    for q in range(n_queries):
        theirs = sklearn_metrics.ndcg_score(truth[q:q + 1].astype(float), scores[q:q + 1], k=10)
        assert ours[q] == pytest.approx(theirs, abs=1e-12)


def test_rejects_inconsistent_inputs():
    with pytest.raises(ValueError, match="at least one relevant"):
        m.per_query_metrics(_pad([1])[None, :], np.array([0]))
    with pytest.raises(ValueError, match="n_relevant is wrong"):
        m.per_query_metrics(_pad([1, 2, 3])[None, :], np.array([2]))
    with pytest.raises(ValueError, match="at least 20"):
        m.per_query_metrics(np.zeros((1, 10), dtype=bool), np.array([1]))


def test_bootstrap_interval_is_seeded_and_contains_mean():
    values = np.random.default_rng(0).random(200)
    first = m.bootstrap_interval(values, n_boot=500, seed=7)
    again = m.bootstrap_interval(values, n_boot=500, seed=7)
    assert first == again
    mean, low, high = first
    assert low < mean < high
    assert high - low < 0.2
    # a constant sample has a zero-width interval
    assert m.bootstrap_interval(np.full(50, 0.3), n_boot=200) == pytest.approx((0.3, 0.3, 0.3))


def test_paired_difference_detects_a_consistent_gain():
    rng = np.random.default_rng(1)
    base = rng.random(300)
    better = base + 0.05 + rng.normal(0, 0.01, 300)
    result = m.paired_bootstrap_difference(better, base, n_boot=500, seed=0)
    assert result["difference"] == pytest.approx(0.05, abs=0.01)
    assert 0 < result["low"] < result["difference"] < result["high"]
    assert result["p_not_better"] == 0.0
    same = m.paired_bootstrap_difference(base, base, n_boot=200)
    assert same["difference"] == 0.0 and same["low"] == 0.0 and same["high"] == 0.0


def test_summarize_has_mean_and_bounds_for_every_metric():
    hits = np.random.default_rng(2).random((40, 20)) < 0.2
    per_query = m.per_query_metrics(hits, np.maximum(hits.sum(axis=1), 1) + 5)
    row = m.summarize(per_query, n_boot=200, seed=0)
    for name in m.METRIC_NAMES:
        assert row[f"{name}_low"] <= row[name] <= row[f"{name}_high"]
        assert row[name] == pytest.approx(per_query[name].mean())
