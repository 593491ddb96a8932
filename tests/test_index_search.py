"""Search: exact energy equals its expanded algebra, ANN candidates, cosine, hybrid, bad queries.

Every test runs on two indexes of the same data: the pure Dirichlet energy (ridge 0) and the
ridged metric L + beta I (``build.dirichlet_ridge`` 1).
"""

import numpy as np
import pytest
import torch

from optical_cli.errors import InputError
from optical_cli.index.ann import build_ann
from optical_cli.index.build import build, finish_build, prepare_build, ridge_beta, spectral_terms
from optical_cli.index.config import EnergyBuildSection
from optical_cli.index.search import Searcher, SearchParams, scan, topk_rows


def clustered_items():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(5, 16)) * 3
    return (centres[rng.integers(5, size=200)] + rng.normal(size=(200, 16))).astype(np.float32), rng


@pytest.fixture(scope="module", params=[0.0, 1.0], ids=["ridge0", "ridge1"])
def setup(request):
    x, rng = clustered_items()
    index = build(
        x, EnergyBuildSection(kmeans_iters=5, dirichlet_ridge=request.param), ids=[f"d{i}" for i in range(200)], seed=0
    )
    index.ann = build_ann(index.vectors, index.dirichlet_metric(index.vectors.device), "hnsw", 10**6)
    queries = (x[:6] + rng.normal(size=(6, 16)) * 0.5).astype(np.float32)
    return index, Searcher(index), x, queries


def direct_scores(index, q, weights):
    """The score written the long way: (q - x)^T (L + beta I) (q - x) per item, in float64."""
    lap = torch.tensor(index.graph.laplacian().toarray()) + index.dirichlet_beta * torch.eye(
        index.dim, dtype=torch.float64
    )
    x = index.vectors.double()
    diff = torch.from_numpy(q).double()[None, :] - x
    dirichlet = ((diff @ lap) * diff).sum(1)
    s = Searcher(index).query_terms(torch.from_numpy(q[None, :]))
    return (
        weights.w_lambda * (s["lambda"].double() - index.lambdas.double()).abs()
        + weights.w_G * (s["G"].double() - index.scales.dispersion(index.dispersion).double()).abs()
        + weights.w_D * dirichlet / (index.dirichlet_scale + dirichlet)
    ), dirichlet


def weighted(terms, params):
    return (
        params.w_lambda * terms["d_lambda"]
        + params.w_G * terms.get("d_G", terms["d_lambda"])
        + params.w_D * terms["bounded_dirichlet"]
    )


def test_exact_energy_equals_expanded_algebra(setup):
    index, searcher, _, queries = setup
    params = SearchParams(k=200, mode="energy", w_lambda=0.5, w_G=0.3, w_D=1.0)
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
    index, searcher, _, queries = setup
    hit = searcher.search(queries[:1], SearchParams(k=1, mode="energy", w_lambda=1, w_G=0.5, w_D=0.25))[0][0]
    t = hit.terms
    d_G = t.get("d_G", t["d_lambda"])  # reported only where it differs from d_lambda
    assert ("d_G" in t) != index.scales.lambda_is_dispersion
    assert hit.score == pytest.approx(t["d_lambda"] + 0.5 * d_G + 0.25 * t["bounded_dirichlet"], rel=1e-5)
    assert t["bounded_dirichlet"] == pytest.approx(t["dirichlet"] / (index.dirichlet_scale + t["dirichlet"]), rel=1e-5)


def test_with_lambda_blend_0_lambda_is_the_dispersion_so_d_g_would_repeat_d_lambda(setup):
    """Why a hit shows d_G only for lambda_blend > 0: with blend 0, lambda = G/(G + tau_G) for items
    and queries alike, so |d lambda| and |d G~| are equal on every item."""
    index, searcher, _, queries = setup
    if not index.scales.lambda_is_dispersion:
        pytest.skip("this fixture's index blends E into lambda")
    q = torch.from_numpy(queries[:3])
    terms = searcher.energy_scores(searcher.query_terms(q), q)
    assert torch.allclose(index.lambdas, index.scales.dispersion(index.dispersion), atol=1e-6)
    assert torch.allclose(terms["d_lambda"], terms["d_G"], atol=1e-6)


@pytest.mark.parametrize("blend", [0.5, 1.0])
def test_a_positive_lambda_blend_mixes_the_rayleigh_energy_into_lambda_for_items_and_queries(blend):
    """bounded lambda = blend * E/(E + tau) + (1 - blend) * G/(G + tau_G), written out here from the stored
    E and G; lambda stays in [0, 1), queries get the same formula, and hits report d_G beside d_lambda."""
    x, rng = clustered_items()
    prepared = prepare_build(x, EnergyBuildSection(kmeans_iters=5), seed=0)
    plain, blended = finish_build(prepared), finish_build(prepared, lambda_blend=blend)
    E, G, scales = blended.rayleigh.double(), blended.dispersion.double(), blended.scales
    expected = blend * E / (E + scales.tau) + (1 - blend) * G / (G + scales.tau_G)
    assert scales.blend == blend and not scales.lambda_is_dispersion
    assert torch.allclose(blended.lambdas.double(), expected, atol=1e-5)
    assert float(blended.lambdas.min()) >= 0.0 and float(blended.lambdas.max()) < 1.0
    assert not torch.allclose(blended.lambdas, plain.lambdas, atol=1e-3)  # the blend changes what lambda says
    q = torch.from_numpy(x[:4] + 0.1)
    raw = spectral_terms(q, blended.graph)
    E_q, G_q = raw.rayleigh.double(), raw.dispersion.double()
    query_lambda = blend * E_q / (E_q + scales.tau) + (1 - blend) * G_q / (G_q + scales.tau_G)
    assert torch.allclose(Searcher(blended).query_terms(q)["lambda"].double(), query_lambda, atol=1e-5)
    hits = Searcher(blended).search(x[:1] + 0.1, SearchParams(k=5, mode="energy", w_lambda=1, w_G=0.5, w_D=0.25))[0]
    assert all("d_G" in hit.terms for hit in hits)
    assert any(hit.terms["d_G"] != pytest.approx(hit.terms["d_lambda"], abs=1e-6) for hit in hits)


def test_ann_candidates_are_the_nearest_in_dirichlet_energy(setup):
    """R x with R = (L + beta I)^{1/2}: Euclidean distances of transformed vectors equal the Dirichlet energies."""
    index, searcher, _, queries = setup
    q = torch.from_numpy(queries)
    dirichlet = searcher.energy_scores(searcher.query_terms(q), q)["dirichlet"]
    rows = searcher.candidate_rows(q, SearchParams(k=5, candidates="ann", ann_candidates=20))
    expected = torch.topk(dirichlet, 20, dim=1, largest=False).indices
    overlap = np.mean([len(set(a.tolist()) & set(b.tolist())) / 20 for a, b in zip(rows, expected)])
    assert overlap >= 0.95  # HNSW on 200 items is all but exact


def test_ann_with_all_items_as_candidates_equals_exact(setup):
    index, searcher, _, queries = setup
    for mode in ("energy", "hybrid", "cosine"):
        exact = searcher.search(queries, SearchParams(k=5, mode=mode))
        ann = searcher.search(
            queries,
            SearchParams(k=5, mode=mode, candidates="ann", ann_candidates=len(index), hnsw_ef_search=len(index)),
        )
        assert [[h.id for h in r] for r in exact] == [[h.id for h in r] for r in ann]
        np.testing.assert_allclose(
            [[h.score for h in r] for r in exact], [[h.score for h in r] for r in ann], rtol=1e-5, atol=1e-6
        )


def test_ann_without_a_structure_is_a_clear_error(setup):
    index, _, _, queries = setup
    bare = Searcher(type(index)(**{**index.__dict__, "ann": None}))
    with pytest.raises(InputError, match="no ANN structure"):
        bare.search(queries, SearchParams(candidates="ann"))


def test_cosine_matches_brute_force(setup):
    _, searcher, x, queries = setup
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    expected = np.argsort(-(qn @ unit.T), axis=1, kind="stable")[:, :5]
    got = searcher.search(queries, SearchParams(k=5, mode="cosine"))
    assert [[h.index for h in r] for r in got] == expected.tolist()
    assert got[0][0].score == pytest.approx((1 - got[0][0].terms["cosine"]) / 2, abs=1e-6)


def test_hybrid_endpoints_and_fast_path(setup):
    _, searcher, _, queries = setup
    ids = lambda mode, **kw: [[h.id for h in r] for r in searcher.search(queries, SearchParams(k=5, mode=mode, **kw))]
    assert ids("hybrid", alpha=1.0) == ids("cosine")
    assert ids("hybrid", alpha=0.0) == ids("energy")
    for mode, candidates in (("energy", "exact"), ("cosine", "exact"), ("hybrid", "exact"), ("energy", "ann")):
        fast = topk_rows(searcher, torch.from_numpy(queries), SearchParams(k=5, mode=mode, candidates=candidates))
        slow = searcher.search(queries, SearchParams(k=5, mode=mode, candidates=candidates))
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
    expected = weighted(searcher.energy_scores(terms, q_t), params)
    assert torch.allclose(searcher.scores(q_t, params, terms), expected, rtol=1e-5, atol=1e-6)
    hybrid = SearchParams(mode="hybrid", alpha=0.3)
    mixed = 0.3 * (1 - searcher.cosine(q_t)) / 2 + 0.7 * weighted(searcher.energy_scores(terms, q_t), hybrid)
    assert torch.allclose(searcher.scores(q_t, hybrid, terms), mixed, rtol=1e-5, atol=1e-6)


# --- the ridge: L + beta I ----------------------------------------------------------------


def test_ridge_beta_is_relative_to_the_mean_eigenvalue():
    from optical_cli.index.build import Graph

    path = Graph(3, torch.tensor([0, 1]), torch.tensor([1, 2]), torch.tensor([1.0, 2.0]))  # trace(L) = 2 * 3, F = 3
    assert ridge_beta(path, 0.5) == pytest.approx(1.0)
    assert ridge_beta(path, 0.0) == 0.0


@pytest.fixture(scope="module")
def pair():
    """The same prepared build finished without and with the ridge."""
    x, _ = clustered_items()
    prepared = prepare_build(x, EnergyBuildSection(kmeans_iters=5), seed=0)
    return x, finish_build(prepared), finish_build(prepared, dirichlet_ridge=0.5)


def test_null_space_direction_costs_nothing_without_the_ridge_and_beta_with_it(pair):
    """q = x + c*1: the constant vector is in L's null space, so the pure Dirichlet energy cannot tell q from x."""
    x, plain, ridged = pair
    shift = 0.3 * np.ones(16, np.float32)
    q = torch.from_numpy(x[:1] + shift)
    energy = lambda index: Searcher(index).energy_scores(Searcher(index).query_terms(q), q)["dirichlet"][0]
    assert float(energy(plain)[0]) == pytest.approx(0.0, abs=1e-3)  # float32 expansion: cancellation error only
    assert float(energy(ridged)[0]) == pytest.approx(ridged.dirichlet_beta * float(shift @ shift), rel=1e-2)
    assert ridged.dirichlet_beta > 0 and float(energy(ridged)[0]) > 0.1
    # the other items are not in the null-space direction of q: they cost more than x itself with the ridge
    assert int(torch.argmin(energy(ridged))) == 0


def test_ridge_term_is_the_identity_part_of_the_energy(pair):
    """Each hit shows beta ||q - x||^2; the rest of its Dirichlet energy is (q - x)^T L (q - x) of the plain index."""
    x, plain, ridged = pair
    q = x[:3] + 0.2
    params = SearchParams(k=5, mode="energy")
    assert all("ridge" not in h.terms for r in Searcher(plain).search(q, params) for h in r)
    plain_terms = Searcher(plain)
    for row, hits in enumerate(Searcher(ridged).search(q, params)):
        items = torch.tensor([[h.index for h in hits]])
        laplacian_part = plain_terms.terms(
            torch.from_numpy(q[row : row + 1]),
            plain_terms.query_terms(torch.from_numpy(q[row : row + 1])),
            items,
            params,
        )["dirichlet"][0]
        for h, part in zip(hits, laplacian_part.tolist()):
            assert h.terms["ridge"] == pytest.approx(
                ridged.dirichlet_beta * float(((q[row] - x[h.index]) ** 2).sum()), rel=1e-4
            )
            assert h.terms["dirichlet"] == pytest.approx(part + h.terms["ridge"], rel=1e-3)


def test_dirichlet_scale_is_the_median_pair_energy_of_its_own_metric(pair):
    """s of the bounded term e/(e + s) is measured with the ridge when there is one: half of all item pairs
    lie below it."""
    x, plain, ridged = pair
    rows, cols = np.triu_indices(len(x), 1)
    diff = torch.from_numpy(x[rows] - x[cols]).double()
    for index in (plain, ridged):
        energies = ((diff @ index.dirichlet_metric(torch.device("cpu")).double()) * diff).sum(1)
        assert 0.45 < float((energies < index.dirichlet_scale).double().mean()) < 0.55  # from 4,096 sampled pairs


def test_a_large_ridge_ranks_like_cosine_on_unit_vectors(pair):
    """beta -> inf: (q - x)^T (L + beta I) (q - x) / beta -> ||q - x||^2 = 2 - 2 cos for unit vectors."""
    x, _, _ = pair
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    prepared = prepare_build(unit, EnergyBuildSection(kmeans_iters=5), seed=0)
    queries = unit[:8] + 0.05 * np.random.default_rng(3).normal(size=(8, 16)).astype(np.float32)
    energy_only = SearchParams(k=10, mode="energy", w_lambda=0.0, w_G=0.0, w_D=1.0)
    ids = lambda index, params: [[h.index for h in r] for r in Searcher(index).search(queries, params)]
    cosine = ids(finish_build(prepared), SearchParams(k=10, mode="cosine"))
    assert ids(finish_build(prepared, dirichlet_ridge=1e5), energy_only) == cosine
    assert (
        ids(finish_build(prepared), energy_only) != cosine
    )  # without the ridge the Dirichlet energy ranks its own way


@pytest.mark.parametrize("probes", [1, 3])
def test_the_brute_force_scan_gives_every_inner_product_for_one_probe_and_for_several(probes):
    generator = torch.Generator().manual_seed(0)
    vectors, queries = torch.randn(500, 24, generator=generator), torch.randn(probes, 24, generator=generator)
    products = scan(vectors, queries)  # one probe goes through numpy's BLAS, several through torch
    assert products.shape == (probes, 500) and products.dtype == torch.float32
    torch.testing.assert_close(products, torch.einsum("nf,bf->bn", vectors.double(), queries.double()).float())
