"""The five build stages: hand-computed formulas and one regression test per published defect."""

import math

import numpy as np
import pytest
import torch
from scipy.sparse.csgraph import connected_components

from optical_cli.index.build import (
    FeatureNodes,
    Graph,
    LambdaScales,
    build,
    diffuse,
    feature_distances,
    finish_build,
    knn_graph,
    node_dispersion,
    prepare_build,
    robust_scale,
    select_tau,
    spectral_terms,
    taumode_lambda,
)
from optical_cli.index.config import EnergyBuildSection


def clustered(n=300, dim=24, clusters=6, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)) * 3
    x = centres[rng.integers(clusters, size=n)] + rng.normal(size=(n, dim))
    return (x * scale).astype(np.float32)


PARAMS = EnergyBuildSection(kmeans_iters=5)


def path_graph():
    """0 -(1)- 1 -(2)- 2"""
    return Graph(3, torch.tensor([0, 1]), torch.tensor([1, 2]), torch.tensor([1.0, 2.0]))


# --- formulas ----------------------------------------------------------------------------


def test_rayleigh_quotient_and_dispersion_by_hand():
    x = torch.tensor([[1.0, 0.0, -1.0]])
    terms = spectral_terms(x, path_graph())
    # x^T L x = 1*(1-0)^2 + 2*(0+1)^2 = 3, x^T x = 2; edge energies 1 and 2 of total 3
    assert terms.dirichlet.item() == pytest.approx(3.0)
    assert terms.rayleigh.item() == pytest.approx(1.5)
    assert terms.dispersion.item() == pytest.approx((1 / 3) ** 2 + (2 / 3) ** 2)
    lap = path_graph().dense_laplacian(torch.device("cpu"))
    assert (x @ lap @ x.T).item() == pytest.approx(3.0)
    assert torch.allclose(torch.tensor(path_graph().laplacian().toarray(), dtype=torch.float32), lap)


def test_node_dispersion_by_hand():
    points = torch.tensor([[0.0], [1.0], [3.0]])
    graph = Graph(3, torch.tensor([0, 1]), torch.tensor([1, 2]), torch.tensor([1.0, 1.0]))
    # edge energies: (0,1) -> 1, (1,2) -> 4; node 1 shares 1/5 and 4/5
    assert node_dispersion(points, graph).tolist() == pytest.approx([1.0, 17 / 25, 1.0])


def test_taumode_modes_use_the_energies():
    energies = torch.tensor([1.0, 2.0, 3.0, 10.0])
    assert select_tau(energies, "median", 0) == pytest.approx(2.5)
    assert select_tau(energies, "mean", 0) == pytest.approx(4.0)
    assert select_tau(energies, "percentile", 25) == pytest.approx(1.75)
    assert select_tau(energies, "fixed", 0.3) == pytest.approx(0.3)
    published = LambdaScales("published", tau=0.5, tau_G=1.0, blend=0.0)
    assert taumode_lambda(torch.tensor(1.0), torch.tensor(0.5), published).item() == pytest.approx(0.5 / 1.5 + 0.25)


def test_bounded_lambda_by_hand_and_published_warning():
    bounded = LambdaScales("bounded", tau=2.0, tau_G=0.01, blend=0.25)
    assert taumode_lambda(torch.tensor(2.0), torch.tensor(0.03), bounded).item() == pytest.approx(
        0.25 * 0.5 + 0.75 * 0.75
    )
    assert bounded.warning() is None
    # every term is a ratio x/(x + scale): lambda stays in [0, 1) however large E or G are
    huge = taumode_lambda(torch.tensor([0.0, 1e6]), torch.tensor([0.0, 1e6]), bounded)
    assert huge[0].item() == 0.0 and 0.99 < huge[1].item() < 1.0
    assert LambdaScales("published", tau=0.5, tau_G=1.0, blend=0.0).warning() is None
    assert "negative weight" in LambdaScales("published", tau=6.9, tau_G=1.0, blend=0.0).warning()


def test_published_median_tau_weights_dispersion_negatively_bounded_does_not():
    """The defect found on MiniLM vectors: Median tau > 1 gives G the weight 1 - tau < 0."""
    x = clustered(n=300, dim=24)
    prepared = prepare_build(x, PARAMS, seed=0)
    published = finish_build(prepared, lambda_formula="published")
    bounded = finish_build(prepared)
    assert published.scales.tau > 1 and published.warnings and not bounded.warnings
    assert 0.0 <= float(bounded.lambdas.min()) and float(bounded.lambdas.max()) < 1.0
    E, G = bounded.rayleigh, bounded.dispersion
    more_dispersed = lambda index: taumode_lambda(E, G * 1.5, index.scales) - taumode_lambda(E, G, index.scales)
    assert bool((more_dispersed(published) < 0).all()) and bool((more_dispersed(bounded) > 0).all())
    assert published.dirichlet_scale == 1.0 and bounded.dirichlet_scale > 0


def test_mad_scale_by_hand():
    assert robust_scale(torch.tensor([1.0, 2.0, 3.0, 4.0, 100.0])) == pytest.approx(1.4826)
    assert robust_scale(torch.tensor([2.0, 2.0, 2.0])) == 1.0  # no spread at all: neutral scale


def test_energy_edge_weight_by_hand():
    columns = torch.tensor([[0.0, 0.0], [3.0, 4.0]])  # ||x_a - x_b|| = 5
    nodes = FeatureNodes(
        lambdas=torch.tensor([0.0, 1.0]),
        rayleigh=torch.zeros(2),
        dispersion=torch.tensor([0.0, 0.5]),
        s_lambda=0.5,
        s_G=0.25,
        scales=LambdaScales("bounded", 1.0, 1.0, 0.5),
    )
    distances = feature_distances(columns, nodes, 1.0, 0.5, 0.25)
    expected = 1.0 * 1 / 0.5 + 0.5 * 0.5 / 0.25 + 0.25 * 5 / 6
    assert distances(0, 1)[0, 1].item() == pytest.approx(expected)
    graph, _ = knn_graph(distances, 2, 8, lambda d: torch.exp(-d))
    assert graph.weight.tolist() == pytest.approx([math.exp(-expected)])


# --- defects of the published implementation ---------------------------------------------


def test_dispersion_is_nonzero_and_split_count_matches_quantile():
    prepared = prepare_build(clustered(), PARAMS, seed=0)
    dispersion = node_dispersion(diffuse(prepared.centroids, prepared.graph, 0.1, 4), prepared.graph)
    assert (dispersion > 0).all()
    index = finish_build(prepared)
    expected = int((dispersion.double() > torch.quantile(dispersion.double(), 0.9)).sum())
    k = prepared.centroids.shape[0]
    assert index.stats["split_nodes"] == expected
    assert abs(expected - 0.1 * k) <= 1.5 and expected < k
    assert index.stats["final_centroids"] == k + expected


def test_lambda_order_matches_item_order():
    x = clustered(n=120, dim=10)  # not square: a row/column mix-up cannot go unnoticed
    index = build(x, PARAMS, ids=[f"item{i}" for i in range(len(x))], seed=0)
    for row in (0, 7, 63, 119):
        alone = spectral_terms(torch.from_numpy(x[row : row + 1]), index.graph)
        lam = taumode_lambda(alone.rayleigh, alone.dispersion, index.scales).item()
        assert lam == pytest.approx(index.lambdas[row].item(), rel=1e-5)
    assert index.ids[63] == "item63"


def test_item_and_query_lambdas_share_one_code_path():
    from optical_cli.index.search import Searcher

    x = clustered(n=150)
    index = build(x, PARAMS, seed=0)
    query = Searcher(index).query_terms(torch.from_numpy(x[:20]))
    assert torch.allclose(query["lambda"], index.lambdas[:20], rtol=1e-6, atol=1e-7)
    assert torch.allclose(query["G"], index.scales.dispersion(index.dispersion[:20]), rtol=1e-6, atol=1e-9)


def test_same_seed_gives_identical_index_and_other_seed_differs():
    x = clustered(n=200)
    params = EnergyBuildSection(kmeans_iters=5, optical_tokens=16)  # the random projection is seeded too
    a, b, c = build(x, params, seed=3), build(x, params, seed=3), build(x, params, seed=4)
    for name in ("lambdas", "rayleigh", "dispersion", "dirichlet"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert torch.equal(a.graph.weight, b.graph.weight) and torch.equal(a.graph.src, b.graph.src)
    assert not torch.equal(a.lambdas, c.lambdas)


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e4])
def test_bootstrap_graph_is_nonempty_and_connected_at_any_scale(scale):
    prepared = prepare_build(clustered(scale=scale), PARAMS, seed=0)
    graph = prepared.graph
    degree = np.asarray(graph.adjacency().sum(axis=1)).ravel()
    assert graph.src.numel() >= prepared.centroids.shape[0] and (degree > 1e-6).all()
    assert connected_components(graph.adjacency(), directed=False)[0] == 1


def test_components_are_joined():
    points = torch.tensor([[0.0], [0.1], [0.2], [10.0], [10.1], [10.2]])
    from optical_cli.index.build import euclidean_knn_graph

    graph, _ = euclidean_knn_graph(points, 1)
    assert connected_components(graph.adjacency(), directed=False)[0] == 1


def test_diffusion_is_stable_and_smooths():
    prepared = prepare_build(clustered(), PARAMS, seed=0)
    c = prepared.centroids
    far = diffuse(c, prepared.graph, 1.0, 200)
    assert torch.isfinite(far).all() and far.norm() <= c.norm() * 1.01
    spread = lambda p: (p - p.mean(0)).norm()
    assert spread(diffuse(c, prepared.graph, 0.1, 4)) < spread(c)


def test_finish_reuses_prepared_stages_and_rejects_prepare_fields():
    prepared = prepare_build(clustered(n=150), PARAMS, seed=0)
    one, two = finish_build(prepared, eta=0.05, steps=2), finish_build(prepared, eta=0.2, steps=8)
    assert one.params["eta"] == 0.05 and two.params["steps"] == 8
    assert not torch.equal(one.lambdas, two.lambdas)
    assert torch.equal(finish_build(prepared, eta=0.05, steps=2).lambdas, one.lambdas)
    with pytest.raises(ValueError, match="neighbor_k"):
        finish_build(prepared, neighbor_k=3)


def test_optical_compression_respects_token_budget():
    prepared = prepare_build(
        clustered(n=400), EnergyBuildSection(kmeans_iters=3, centroids=60, optical_tokens=9), seed=0
    )
    assert prepared.stats["kmeans_centroids"] == 60
    assert 2 <= prepared.stats["compressed_centroids"] <= 9


def test_tiny_inputs_build_or_fail_clearly():
    from optical_cli.errors import InputError

    index = build(clustered(n=3, dim=4), PARAMS, seed=0)  # k, centroids and neighbours all clamp to what exists
    assert len(index) == 3 and torch.isfinite(index.lambdas).all()
    with pytest.raises(InputError, match="at least two items"):
        build(clustered(n=1), PARAMS)
    with pytest.raises(InputError, match="two dimensions"):
        build(clustered(n=10, dim=1), PARAMS)
