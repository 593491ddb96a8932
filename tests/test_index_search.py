"""Search: exact energy equals its expanded algebra, the lambda window, cosine, hybrid, bad queries."""

import numpy as np
import pytest
import torch

from optical_cli.config import EnergyBuildSection
from optical_cli.errors import InputError
from optical_cli.index.build import build
from optical_cli.index.search import SearchParams, Searcher, topk_rows


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(5, 16)) * 3
    x = (centres[rng.integers(5, size=200)] + rng.normal(size=(200, 16))).astype(np.float32)
    index = build(x, EnergyBuildSection(kmeans_iters=5), ids=[f"d{i}" for i in range(200)], seed=0)
    queries = (x[:6] + rng.normal(size=(6, 16)) * 0.5).astype(np.float32)
    return index, Searcher(index), x, queries


def direct_scores(index, q, weights):
    """The score written the long way: (q - x)^T L (q - x) per item, in float64."""
    lap = torch.tensor(index.graph.laplacian().toarray())
    x = index.vectors.double()
    diff = torch.from_numpy(q).double()[None, :] - x
    dirichlet = ((diff @ lap) * diff).sum(1)
    s = Searcher(index).query_terms(torch.from_numpy(q[None, :]))
    return (weights.w_lambda * (s["lambda"].double() - index.lam.double()).abs()
            + weights.w_G * (s["G"].double() - index.G.double()).abs()
            + weights.w_D * dirichlet / (1 + dirichlet)), dirichlet


def test_exact_energy_equals_expanded_algebra(setup):
    index, searcher, _, queries = setup
    params = SearchParams(k=200, mode="energy")
    hits = searcher.search(queries[:2], params)
    for q, result in zip(queries[:2], hits):
        expected, dirichlet = direct_scores(index, q, params)
        got = {h.index: h for h in result}
        for item in range(0, 200, 17):
            assert got[item].score == pytest.approx(float(expected[item]), rel=1e-4, abs=1e-5)
            assert got[item].terms["dirichlet"] == pytest.approx(float(dirichlet[item]), rel=1e-3, abs=1e-3)
        scores = [h.score for h in result]
        assert scores == sorted(scores)


def test_every_hit_carries_its_terms(setup):
    _, searcher, _, queries = setup
    hit = searcher.search(queries[:1], SearchParams(k=1, mode="energy", w_lambda=1, w_G=0.5, w_D=0.25))[0][0]
    t = hit.terms
    assert hit.score == pytest.approx(t["d_lambda"] + 0.5 * t["d_G"] + 0.25 * t["bounded_dirichlet"], rel=1e-5)
    assert t["bounded_dirichlet"] == pytest.approx(t["dirichlet"] / (1 + t["dirichlet"]), rel=1e-5)


def test_window_takes_the_nearest_lambdas(setup):
    index, searcher, _, queries = setup
    lam = index.lam.numpy()
    for target in (float(lam.min()) - 1, float(np.median(lam)), float(lam.max()) + 1):
        rows = searcher.window(target, 10)
        expected = np.argsort(np.abs(lam - target), kind="stable")[:10]
        assert set(np.abs(lam[rows] - target).round(6)) == set(np.abs(lam[expected] - target).round(6))


def test_window_with_all_candidates_equals_exact(setup):
    index, searcher, _, queries = setup
    exact = searcher.search(queries, SearchParams(k=5, mode="energy"))
    window = searcher.search(queries, SearchParams(k=5, mode="energy-window", candidate_m=len(index)))
    assert [[h.id for h in r] for r in exact] == [[h.id for h in r] for r in window]
    small = searcher.search(queries, SearchParams(k=5, mode="energy-window", candidate_m=20))
    assert all(len(r) == 5 for r in small)


def test_cosine_matches_brute_force(setup):
    _, searcher, x, queries = setup
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    expected = np.argsort(-(qn @ unit.T), axis=1, kind="stable")[:, :5]
    got = searcher.search(queries, SearchParams(k=5, mode="cosine"))
    assert [[h.index for h in r] for r in got] == expected.tolist()
    assert got[0][0].score == pytest.approx((1 - got[0][0].terms["cosine"]) / 2)


def test_hybrid_endpoints_and_fast_path(setup):
    _, searcher, _, queries = setup
    ids = lambda mode, **kw: [[h.id for h in r] for r in searcher.search(queries, SearchParams(k=5, mode=mode, **kw))]  # noqa: E731
    assert ids("hybrid", alpha=1.0) == ids("cosine")
    assert ids("hybrid", alpha=0.0) == ids("energy")
    for mode in ("energy", "cosine", "hybrid", "energy-window"):
        fast = topk_rows(searcher, torch.from_numpy(queries), SearchParams(k=5, mode=mode))
        slow = searcher.search(queries, SearchParams(k=5, mode=mode))
        assert [set(row) for row in fast.tolist()] == [{h.index for h in r} for r in slow]


def test_bad_queries_are_clear_errors(setup):
    index, searcher, _, queries = setup
    with pytest.raises(InputError, match="dimension"):
        searcher.search(np.ones((1, 7), np.float32), SearchParams())
    with pytest.raises(InputError, match="only 200 items"):
        searcher.search(queries, SearchParams(k=201))
    with pytest.raises(InputError, match="all zeros"):
        searcher.search(np.zeros((1, 16), np.float32), SearchParams())
    with pytest.raises(InputError, match="NaN"):
        searcher.search(np.full((1, 16), np.nan, np.float32), SearchParams())


def test_fused_ranking_scores_equal_the_term_matrices(setup):
    _, searcher, _, queries = setup
    q_t = torch.from_numpy(queries)
    terms = searcher.query_terms(q_t)
    params = SearchParams(mode="energy", w_lambda=0.7, w_G=2.0, w_D=0.3)
    expected = searcher.energy_scores(terms, q_t, params)["score"]
    assert torch.allclose(searcher.scores(q_t, params, terms), expected, rtol=1e-5, atol=1e-6)
    hybrid = SearchParams(mode="hybrid", alpha=0.3)
    mixed = 0.3 * (1 - searcher.cosine(q_t)) / 2 + 0.7 * searcher.energy_scores(terms, q_t, hybrid)["score"]
    assert torch.allclose(searcher.scores(q_t, hybrid, terms), mixed, rtol=1e-5, atol=1e-6)
