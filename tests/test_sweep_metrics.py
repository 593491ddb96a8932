"""IR metrics from trec_eval against hand-computed rankings and scikit-learn; bootstraps by query and by cluster."""

import math

import numpy as np
import pytest

from optical_cli.sweep import metrics as m


def evaluate(relevant: list[list[int]], ranked: list[list[int]], depth: int = 20) -> dict:
    """trec_eval on item rows; rankings are padded to ``depth`` with never-relevant rows 1000, 1001, ..."""
    padded = [row + [1000 + i for i in range(depth - len(row))] for row in ranked]
    return m.TrecEvaluator([np.array(r) for r in relevant]).evaluate(np.array(padded))


def test_hand_computed_single_query():
    # relevant at ranks 2 and 5, 4 relevant items in the corpus (items 1..4)
    out = evaluate([[1, 2, 3, 4]], [[9, 1, 8, 7, 2]])
    assert out["mrr"][0] == pytest.approx(0.5)
    assert out["precision_at_10"][0] == pytest.approx(0.2)
    assert out["recall_at_10"][0] == pytest.approx(0.5)
    assert out["recall_at_20"][0] == pytest.approx(0.5)
    assert out["map_cut_20"][0] == pytest.approx((1 / 2 + 2 / 5) / 4)
    dcg = 1 / math.log2(3) + 1 / math.log2(6)
    idcg = sum(1 / math.log2(i + 1) for i in range(1, 5))  # ideal from ALL 4 relevant, not the 2 retrieved
    assert out["ndcg_at_10"][0] == pytest.approx(dcg / idcg)


def test_map_cut_divides_by_all_relevant_items_not_the_cutoff():
    """trec_eval's map_cut_20: 20 relevant retrieved in order out of 25 gives 20/25, not 1 (the min(R, 20) variant)."""
    perfect = list(range(20))
    out = evaluate([list(range(25)), [0]], [perfect, [5, 0]])
    assert out["map_cut_20"][0] == pytest.approx(20 / 25)
    assert out["recall_at_20"][0] == pytest.approx(20 / 25)
    assert out["ndcg_at_10"][0] == pytest.approx(1.0) and out["mrr"][0] == 1.0 and out["precision_at_10"][0] == 1.0
    assert out["map_cut_20"][1] == pytest.approx(0.5) and out["mrr"][1] == 0.5


def test_our_order_is_kept_and_no_hit_scores_zero():
    # trec_eval sorts by score: the evaluator must score so that rank 1 stays rank 1
    out = evaluate([[7], [3]], [[7, 1, 2], [1, 2]])
    assert out["mrr"].tolist() == [1.0, 0.0]
    for name, _ in m.METRICS:
        assert out[name][1] == 0.0
    assert np.isnan(out[m.DISTINCT_LABELS]).all()  # no labels given: not measured


def test_head_and_tail_metrics():
    """P@1, recall@50 and @100 by trec_eval; the top 20's distinct labels from the item labels."""
    relevant = [list(range(0, 200, 2))]  # 100 relevant items: the even rows
    ranking = [list(range(100))]  # 50 relevant in the top 100, 25 in the top 50, rank 1 relevant
    labels = np.zeros((200, 5), dtype=bool)
    labels[np.arange(200), np.arange(200) % 5] = True  # item i carries label i mod 5
    labels[3, 4] = True
    evaluator = m.TrecEvaluator([np.asarray(r) for r in relevant], labels=labels)
    out = evaluator.evaluate(np.asarray(ranking))
    assert out["precision_at_1"][0] == 1.0 and out["mrr"][0] == 1.0
    assert out["recall_at_50"][0] == pytest.approx(25 / 100) and out["recall_at_100"][0] == pytest.approx(50 / 100)
    assert out[m.DISTINCT_LABELS][0] == 5.0
    only_label_0 = evaluator.evaluate(np.asarray([list(range(0, 200, 5))[:20]]))
    assert only_label_0[m.DISTINCT_LABELS][0] == 1.0 and only_label_0["precision_at_1"][0] == 1.0


def test_subset_of_queries_by_position():
    evaluator = m.TrecEvaluator([np.array([1]), np.array([2]), np.array([3])])
    ranked = np.array([[3] + list(range(100, 119)), [9] + list(range(100, 119))])
    out = evaluator.evaluate(ranked, np.array([2, 0]))
    assert out["mrr"].tolist() == [1.0, 0.0]


def test_matches_sklearn_ndcg_when_whole_ranking_is_given():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    n_items, n_queries = 60, 12
    truth = rng.random((n_queries, n_items)) < 0.15
    truth[:, 0] = True  # at least one relevant item per query
    scores = rng.random((n_queries, n_items))  # distinct, so no tie averaging
    order = np.argsort(-scores, axis=1)
    ours = m.TrecEvaluator([np.flatnonzero(t) for t in truth]).evaluate(order)["ndcg_at_10"]
    for q in range(n_queries):
        theirs = sklearn_metrics.ndcg_score(truth[q : q + 1].astype(float), scores[q : q + 1], k=10)
        assert ours[q] == pytest.approx(theirs, abs=1e-9)


def test_rejects_inconsistent_inputs():
    with pytest.raises(ValueError, match="at least one relevant"):
        m.TrecEvaluator([np.array([], dtype=int)])
    with pytest.raises(ValueError, match="at least 20"):
        m.TrecEvaluator([np.array([1])]).evaluate(np.zeros((1, 10), dtype=int))


def test_the_bootstrap_interval_is_seeded_and_contains_the_mean():
    values = np.random.default_rng(0).random(200)
    row = m.summarize_metrics({"mrr": values}, n_boot=500, seed=7)
    assert row == m.summarize_metrics({"mrr": values}, n_boot=500, seed=7)
    assert row["mrr"] == pytest.approx(values.mean()) and row["mrr_low"] < row["mrr"] < row["mrr_high"]
    assert row["mrr_high"] - row["mrr_low"] < 0.2
    # a constant sample has a zero-width interval
    constant = m.summarize_metrics({"mrr": np.full(50, 0.3)}, n_boot=200)
    assert (constant["mrr_low"], constant["mrr"], constant["mrr_high"]) == pytest.approx((0.3, 0.3, 0.3))


def test_the_cer_bootstrap_is_the_same_engine_as_the_sweeps():
    """A ratio of sums over resampled segments (bootstrap.py): the frontier's CER interval."""
    from optical_cli.bootstrap import percentile_interval, resample_ratios
    from optical_cli.render.frontier import bootstrap_cer

    rng = np.random.default_rng(3)
    edits, chars = rng.integers(0, 4, 60).astype(float), rng.integers(20, 40, 60).astype(float)
    cer, low, high = bootstrap_cer(edits, chars, 400, seed=5)
    assert cer == pytest.approx(edits.sum() / chars.sum()) and low < cer < high
    assert (low, high) == percentile_interval(resample_ratios(edits, chars, 400, 5))


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


def test_summarize_has_mean_and_both_bounds_for_every_metric():
    rng = np.random.default_rng(2)
    per_query = {name: rng.random(40) for name in m.METRIC_NAMES}
    row = m.summarize_metrics(per_query, n_boot=200, seed=0, clusters=rng.integers(0, 8, 40))
    for name in m.METRIC_NAMES:
        assert row[f"{name}_low"] <= row[name] <= row[f"{name}_high"]
        assert row[f"{name}_cluster_low"] <= row[name] <= row[f"{name}_cluster_high"]
        assert row[name] == pytest.approx(per_query[name].mean())


def test_cluster_bootstrap_is_wider_when_queries_in_a_cluster_agree():
    """Queries sharing a label move together: resampling clusters shows the real uncertainty."""
    rng = np.random.default_rng(4)
    clusters = np.repeat(np.arange(10), 30)  # 10 labels, 30 queries each
    values = rng.normal(0, 1, 10)[clusters] + rng.normal(0, 0.05, 300)  # almost all variance between clusters
    row = m.summarize_metrics({"mrr": values}, n_boot=500, seed=0, clusters=clusters)
    assert row["mrr_cluster_high"] - row["mrr_cluster_low"] > 3 * (row["mrr_high"] - row["mrr_low"])
    # one query per cluster: both resample the same units
    singles = m.summarize_metrics({"mrr": values[:50]}, n_boot=300, seed=1, clusters=np.arange(50))
    assert (singles["mrr_cluster_low"], singles["mrr_cluster_high"]) == (singles["mrr_low"], singles["mrr_high"])


def test_compare_reports_both_intervals():
    rng = np.random.default_rng(5)
    base = rng.random(120)
    out = m.compare(base + 0.1, base, n_boot=200, seed=0, clusters=np.repeat(np.arange(12), 10))
    assert out["difference"] == pytest.approx(0.1)
    assert out["low"] == pytest.approx(0.1) and out["cluster_high"] == pytest.approx(0.1)
