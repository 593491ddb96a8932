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
