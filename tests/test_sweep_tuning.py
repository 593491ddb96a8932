"""Weight tuning: the split, the candidate set, cell choice on tuning queries only, and that
re-weighting the precomputed terms ranks exactly like the index's own search."""

import numpy as np
import pytest
import torch

from optical_cli.config import EnergyBuildSection, SweepTuningSection
from optical_cli.index.build import build
from optical_cli.index.search import Searcher, SearchParams, topk_rows
from optical_cli.sweep import tuning


def test_split_is_seeded_disjoint_and_complete():
    tune_part, held = tuning.split_queries(101, 0.5, seed=3)
    assert set(tune_part.tolist()).isdisjoint(held.tolist())
    assert sorted(tune_part.tolist() + held.tolist()) == list(range(101))
    assert len(tune_part) == 50 or len(tune_part) == 51
    again, _ = tuning.split_queries(101, 0.5, seed=3)
    assert again.tolist() == tune_part.tolist()
    assert tuning.split_queries(2, 0.9, 0)[1].size == 1  # always something held out
    with pytest.raises(ValueError):
        tuning.split_queries(1, 0.5, 0)


def test_candidates_grid_and_random():
    section = SweepTuningSection(method="grid", w_lambda=[0.0, 1.0], w_G=[0.0], w_D=[0.0, 0.5], alpha=[0.0, 0.5])
    combos = tuning.candidate_weights(section, seed=0)
    # (0, 0, 0, *) has no energy term at all and is skipped: 2*1*2*2 - 2
    assert len(combos) == 6
    assert all(c["w_lambda"] + c["w_G"] + c["w_D"] > 0 for c in combos)
    random = SweepTuningSection(method="random", trials=3, w_lambda=[0.0, 1.0], w_G=[0.0], w_D=[0.0, 0.5], alpha=[0.0, 0.5])
    picked = tuning.candidate_weights(random, seed=0)
    assert len(picked) == 3 and all(c in combos for c in picked)
    assert picked == tuning.candidate_weights(random, seed=0)


def test_choose_cell_looks_only_at_tuning_queries():
    rows = [
        {"method": "cosine", "eta": None, "steps": None, "per_query": {"mrr": [1, 1, 1, 1]}},
        {"method": "energy", "eta": 0.1, "steps": 2, "per_query": {"mrr": [1.0, 1.0, 0.0, 0.0]}},
        {"method": "energy", "eta": 0.2, "steps": 2, "per_query": {"mrr": [0.0, 0.0, 1.0, 1.0]}},
    ]
    assert tuning.choose_cell(rows, np.array([0, 1]), "mrr") == tuning.Cell(0.1, 2)
    assert tuning.choose_cell(rows, np.array([2, 3]), "mrr") == tuning.Cell(0.2, 2)


def test_reweighted_terms_rank_like_the_index_search():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(120, 16)).astype(np.float32)
    index = build(vectors, EnergyBuildSection(kmeans_iters=3), seed=0)
    searcher = Searcher(index)
    queries = torch.from_numpy(vectors[:10] + 0.1 * rng.normal(size=(10, 16)).astype(np.float32))
    terms = tuning.ScoreTerms.compute(searcher, queries)
    for weights in ({"w_lambda": 1.0, "w_G": 0.5, "w_D": 0.25, "alpha": 0.0}, {"w_lambda": 0.5, "w_G": 0.0, "w_D": 2.0, "alpha": 0.5}):
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
    tune_positions, held_positions = tuning.split_queries(20, 0.5, seed=0)
    seen = []

    def evaluate(ranked, positions):
        seen.append(positions.tolist())
        assert ranked.shape == (len(positions), 21)
        values = rng.random(len(positions))
        return {name: values for name in tuning.METRIC_NAMES}

    cosine = {name: rng.random(20).tolist() for name in tuning.METRIC_NAMES}
    section = SweepTuningSection(method="random", trials=5)
    report, trials = tuning.tune(searcher, tuning.Cell(0.1, 4), queries, evaluate, cosine,
                                 {"w_lambda": 1.0, "w_G": 0.5, "w_D": 0.25}, section, tune_positions, held_positions,
                                 k=21, n_boot=100, seed=0)
    assert len(trials) == 5
    assert all(p == tune_positions.tolist() for p in seen[:5])  # every trial: tuning queries only
    assert all(p == held_positions.tolist() for p in seen[5:]) and len(seen) == 7  # tuned + default on held-out
    assert report["held_out_queries"] == len(held_positions)
    assert set(report["held_out"]) == {"tuned", "default", "cosine"}
    assert report["chosen_weights"] in [{k: t[k] for k in tuning.WEIGHT_NAMES} for t in trials]
