"""Weight tuning: the split, the candidate set, cell choice on tuning queries only, and that
re-weighting the precomputed terms ranks exactly like the index's own search."""

import numpy as np
import torch

from optical_cli.index.build import build
from optical_cli.index.config import EnergyBuildSection
from optical_cli.index.search import Searcher, SearchParams, topk_rows
from optical_cli.sweep import tuning
from optical_cli.sweep.config import SweepTuningSection


def test_candidates_grid_and_random():
    section = SweepTuningSection(method="grid", w_lambda=[0.0, 1.0], w_G=[0.0], w_D=[0.0, 0.5], alpha=[0.0, 0.5])
    combos = tuning.candidate_weights(section, seed=0)
    # (0, 0, 0, *) has no energy term at all and is skipped: 2*1*2*2 - 2
    assert len(combos) == 6
    assert all(c["w_lambda"] + c["w_G"] + c["w_D"] > 0 for c in combos)
    random = SweepTuningSection(
        method="random", trials=3, w_lambda=[0.0, 1.0], w_G=[0.0], w_D=[0.0, 0.5], alpha=[0.0, 0.5]
    )
    picked = tuning.candidate_weights(random, seed=0)
    assert len(picked) == 3 and all(c in combos for c in picked)
    assert picked == tuning.candidate_weights(random, seed=0)


def test_choose_cell_looks_only_at_tuning_queries():
    rows = [
        {"method": "cosine", "eta": None, "steps": None, "per_query": {"mrr": [1, 1, 1, 1]}},
        {"method": "energy", "eta": 0.1, "steps": 2, "per_query": {"mrr": [1.0, 1.0, 0.0, 0.0]}},
        {"method": "energy", "eta": 0.2, "steps": 2, "per_query": {"mrr": [0.0, 0.0, 1.0, 1.0]}},
    ]
    assert tuning.choose_cell(rows, np.array([0, 1]), "mrr") == tuning.DiffusionCell(0.1, 2)
    assert tuning.choose_cell(rows, np.array([2, 3]), "mrr") == tuning.DiffusionCell(0.2, 2)


def test_reweighted_terms_rank_like_the_index_search():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(120, 16)).astype(np.float32)
    index = build(vectors, EnergyBuildSection(kmeans_iters=3), seed=0)
    searcher = Searcher(index)
    queries = torch.from_numpy(vectors[:10] + 0.1 * rng.normal(size=(10, 16)).astype(np.float32))
    terms = tuning.ScoreTerms.compute(searcher, queries)
    for weights in (
        {"w_lambda": 1.0, "w_G": 0.5, "w_D": 0.25, "alpha": 0.0},
        {"w_lambda": 0.5, "w_G": 0.0, "w_D": 2.0, "alpha": 0.5},
    ):
        mode = "energy" if weights["alpha"] == 0 else "hybrid"
        params = SearchParams(k=8, mode=mode, **weights)
        theirs = topk_rows(searcher, queries, params)
        ours = terms.rank(weights, 8)
        assert np.array_equal(np.sort(ours, axis=1), np.sort(theirs, axis=1))


def test_tune_scores_trials_on_tuning_queries_and_reports_held_out_only():
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(80, 12)).astype(np.float32)
    searcher = Searcher(build(vectors, EnergyBuildSection(kmeans_iters=3), seed=0))
    queries = torch.from_numpy(vectors[:20])
    tune_positions, held_positions = np.arange(0, 20, 2), np.arange(1, 20, 2)
    seen = []

    def evaluate(ranked, positions):
        seen.append(positions.tolist())
        assert ranked.shape == (len(positions), 21)
        values = rng.random(len(positions))
        return {name: values for name in tuning.METRIC_NAMES}

    cosine = {name: rng.random(20).tolist() for name in tuning.METRIC_NAMES}
    section = SweepTuningSection(method="random", trials=5)
    report, trials = tuning.tune(
        searcher,
        tuning.DiffusionCell(0.1, 4),
        queries,
        evaluate,
        cosine,
        {"w_lambda": 1.0, "w_G": 0.5, "w_D": 0.25},
        section,
        tune_positions,
        held_positions,
        held_positions % 3,
        k=21,
        n_boot=100,
        seed=0,
        block=4,
    )
    assert len(trials) == 5
    tuned_calls, held_calls = seen[:15], seen[15:]  # 3 blocks of tuning queries x 5 trials, then 3 x (tuned, default)
    assert sorted(set(sum(tuned_calls, []))) == tune_positions.tolist() and all(len(p) <= 4 for p in seen)
    assert sorted(set(sum(held_calls, []))) == held_positions.tolist() and len(seen) == 21
    assert "cluster_low" in report["held_out_tuned_vs_cosine"]["ndcg_at_10"]
    assert report["held_out_queries"] == len(held_positions)
    assert set(report["held_out"]) == {"tuned", "default", "cosine"}
    assert report["chosen_weights"] in [{k: t[k] for k in tuning.WEIGHT_NAMES} for t in trials]
