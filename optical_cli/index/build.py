"""Energy-informed index build: the five stages of the published method, deterministic and fast.

The method is ArrowSpace v0.18's "energymaps" pipeline (the Rust crate and Python package
``arrowspace``, and the blog post that evaluates it on 1,681 CVE descriptions): k-means
centroids, optional optical compression on a g x g grid, a bootstrap kNN Laplacian over the
centroids, heat diffusion with node splitting, an energy Laplacian over the F features, and one
taumode lambda per item, lambda = tau E/(E + tau) + (1 - tau) G with E = x^T L x / x^T x and G
the dispersion of x's edge energies.

API (the sweep relies on it)::

    prepared = prepare_build(vectors, params, ids=None, seed=0, device="cpu")
        # stages that do not depend on diffusion: k-means centroids, optical compression,
        # bootstrap kNN graph over the centroids. Compute once, reuse for every (eta, steps).
    index = finish_build(prepared, eta=0.1, steps=4, **overrides)
        # diffusion + splitting, energy Laplacian over the F features, taumode item lambdas.
        # ``overrides`` may replace any other EnergyBuildSection field of stages 4-6
        # (split_quantile, split_tau, w_lambda, w_disp, w_dirichlet, tau_mode, tau_value).
    index = build(vectors, params, ids=None, seed=0, device="cpu")   # prepare_build + finish_build

    terms, lambdas = item_terms(vectors, index.graph, index.scales)   # E, G, x^T L x, norm; lambda

``item_terms`` (``spectral_terms`` + ``taumode_lambda`` with the stored ``index.scales``) is the ONE
code path for item lambdas (in ``finish_build``, and for items added later by update.py: it needs only
the stored feature Laplacian and scales) and query lambdas (in search.py). Dense math is torch (CPU or
GPU, float32); graphs are edge lists that become scipy sparse Laplacians on disk.

Deliberate choices where the published method is silent or broken (each is tested):
- The heat step uses the normalised Laplacian I - D^-1/2 W D^-1/2 (eigenvalues in [0, 2]),
  so C <- C - eta L C is stable for eta <= 1; with D - W and degrees of 8-20 it diverges at
  eta = 0.1.
- Node dispersion G = sum_j (e_ij / sum_j e_ij)^2 with edge energy e_ij = w_ij ||c_i - c_j||^2:
  in [1/degree, 1], never identically 0, so only nodes above the split quantile split.
- kNN graphs are made connected: each extra component is joined to the rest by its closest pair.
- Gaussian bootstrap weights use the median kNN squared distance as bandwidth, so the graph
  is never near-empty whatever the scale of the data; kNN weights are floored at 1e-8.
- A feature node's lambda_a and G_a (stage 5) are the same spectral terms + taumode, taken
  of its column C[:, a] on the kNN graph of the final centroids, with tau from the features'
  own energies.
- Scales of stage 5 are 1.4826 * MAD, falling back to the standard deviation, then 1.
- lambda defaults to a well-posed blend (``LambdaScales``): the published
  tau*E/(E+tau) + (1-tau)*G is a convex blend only for tau <= 1, and its Median tau is ~6.9
  on MiniLM vectors (G weighted -5.9). The published formula stays selectable, with a warning.
- The search's bounded Dirichlet term is e/(e + s) with s the median pair energy (``dirichlet_scale``);
  the published e/(1+e) sits near 0.92 for every hit on unit vectors and barely ranks.
- e = (q - x)^T L (q - x) is only a pseudo-metric: L has a null space (the constant vector, one
  more per loosely joined component), and differences along it cost nothing. ``build.dirichlet_ridge``
  t > 0 makes it e = (q - x)^T (L + beta I) (q - x), beta = t * trace(L)/F (``ridge_beta``): a
  metric for every t > 0, the pure Dirichlet energy at t = 0, the squared Euclidean distance
  (cosine ranking on unit vectors) as t grows. Measured on CVE vectors (README: sweep), the null
  space holds ~0% of item differences and the ridge only moves rankings toward cosine's.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components

from ..errors import ConfigError, InputError
from .config import EnergyBuildSection

ROBUST_SCALE = 1.4826  # MAD -> standard deviation for normal data
MIN_EDGE_WEIGHT = 1e-8  # floor for far-apart neighbours: a kNN edge never underflows to "no edge"
MAX_BLOCK_ELEMENTS = 1 << 21  # rows x edges per block in spectral_terms (8 MB of float32: cache-sized)

DIFFUSION_FIELDS = {
    "eta",
    "steps",
    "split_quantile",
    "split_tau",
    "w_lambda",
    "w_disp",
    "w_dirichlet",
    "tau_mode",
    "tau_value",
    "lambda_formula",
    "lambda_blend",
    "dirichlet_ridge",
    "block_size",
}


# ---------------------------------------------------------------------------------------
# Graphs: undirected edge lists (each edge once, src < dst)


@dataclass
class Graph:
    n: int
    src: torch.Tensor  # int64 [M]
    dst: torch.Tensor  # int64 [M]
    weight: torch.Tensor  # float32 [M], > 0

    def to(self, device: torch.device) -> "Graph":
        return Graph(self.n, self.src.to(device), self.dst.to(device), self.weight.to(device))

    def adjacency(self) -> sp.csr_matrix:
        src, dst, w = (t.cpu().numpy() for t in (self.src, self.dst, self.weight))
        a = sp.coo_matrix((w, (src, dst)), shape=(self.n, self.n))
        return (a + a.T).tocsr()

    def laplacian(self) -> sp.csr_matrix:
        """Combinatorial Laplacian L = D - W (float64 on disk, exact degrees)."""
        w = self.adjacency().astype(np.float64)
        return (sp.diags(np.asarray(w.sum(axis=1)).ravel()) - w).tocsr()

    def dense_laplacian(self, device: torch.device) -> torch.Tensor:
        lap = torch.zeros(self.n, self.n, dtype=torch.float32, device=device)
        src, dst, w = self.src.to(device), self.dst.to(device), self.weight.to(device)
        lap.index_put_((src, dst), -w, accumulate=True)
        lap.index_put_((dst, src), -w, accumulate=True)
        degree = torch.zeros(self.n, device=device).index_add_(0, src, w).index_add_(0, dst, w)
        return lap + torch.diag(degree)

    @staticmethod
    def from_laplacian(lap: sp.spmatrix) -> "Graph":
        upper = sp.triu(-sp.csr_matrix(lap), k=1).tocoo()
        keep = upper.data > 0
        return Graph(
            lap.shape[0],
            torch.from_numpy(upper.row[keep].astype(np.int64)),
            torch.from_numpy(upper.col[keep].astype(np.int64)),
            torch.from_numpy(upper.data[keep].astype(np.float32)),
        )


def _symmetric_max(n: int, rows: np.ndarray, cols: np.ndarray, weights: np.ndarray) -> Graph:
    """Undirected graph from directed weighted edges, keeping the larger weight of a pair."""
    a = sp.coo_matrix((weights, (rows, cols)), shape=(n, n)).tocsr()
    a = a.maximum(a.T)
    upper = sp.triu(a, k=1).tocoo()
    order = np.lexsort((upper.col, upper.row))  # deterministic edge order
    return Graph(
        n,
        torch.from_numpy(upper.row[order].astype(np.int64)),
        torch.from_numpy(upper.col[order].astype(np.int64)),
        torch.from_numpy(upper.data[order].astype(np.float32)),
    )


def knn_table(
    distances: Callable[[int, int], torch.Tensor], n: int, k: int, block: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest other nodes of every node, from a blockwise ``distances(start, stop) -> [stop-start, n]``."""
    idx_parts, dist_parts = [], []
    for start in range(0, n, block):
        stop = min(n, start + block)
        d = distances(start, stop).clone()
        d[torch.arange(stop - start), torch.arange(start, stop)] = float("inf")  # no self loops
        values, idx = torch.topk(d, k, dim=1, largest=False)
        idx_parts.append(idx.cpu())
        dist_parts.append(values.cpu())
    return torch.cat(idx_parts), torch.cat(dist_parts)


def knn_graph(
    distances: Callable[[int, int], torch.Tensor],
    n: int,
    k: int,
    weight_of: Callable[[torch.Tensor], torch.Tensor],
    table: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
) -> tuple[Graph, np.ndarray]:
    """Connected kNN graph, weights ``weight_of(distance)`` symmetrised by max; also the kNN table.

    Extra components are joined to the rest by their closest pair, so the graph is connected.
    """
    k = min(k, n - 1)
    if k < 1:
        raise ValueError("a kNN graph needs at least two nodes")
    idx, dist = table if table is not None else knn_table(distances, n, k)
    rows = np.repeat(np.arange(n), k)
    floored = lambda d: weight_of(d).clamp_min(MIN_EDGE_WEIGHT)
    weights = floored(dist).numpy().ravel().astype(np.float64)
    graph = _symmetric_max(n, rows, idx.numpy().ravel(), weights)
    return _connect_components(graph, distances, floored), idx.numpy()


def _connect_components(graph: Graph, distances, weight_of) -> Graph:
    for _ in range(graph.n):  # each pass removes one component
        count, labels = connected_components(graph.adjacency(), directed=False)
        if count == 1:
            return graph
        members = np.flatnonzero(labels == labels[0])  # join the first component to its closest outsider
        d = torch.cat([distances(int(i), int(i) + 1) for i in members]).cpu()
        d[:, torch.from_numpy(members)] = float("inf")
        flat = int(torch.argmin(d))
        a, b = int(members[flat // graph.n]), flat % graph.n
        w = weight_of(d.reshape(-1)[flat : flat + 1]).numpy().astype(np.float64)
        rows = np.concatenate([graph.src.numpy(), [min(a, b)]])
        cols = np.concatenate([graph.dst.numpy(), [max(a, b)]])
        weights = np.concatenate([graph.weight.numpy().astype(np.float64), w])
        graph = _symmetric_max(graph.n, rows, cols, weights)
    raise RuntimeError("could not connect the kNN graph")  # unreachable: positive weights join components


def pairwise_sq_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    d = (a * a).sum(1, keepdim=True) - 2.0 * a @ b.T + (b * b).sum(1)[None, :]
    return d.clamp_min_(0.0)


def euclidean_knn_graph(points: torch.Tensor, k: int) -> tuple[Graph, np.ndarray]:
    """kNN graph with Gaussian weights exp(-d^2 / sigma^2), sigma^2 = median kNN squared distance."""

    def distances(start: int, stop: int) -> torch.Tensor:
        return pairwise_sq_distances(points[start:stop], points)

    n = points.shape[0]
    kk = min(k, n - 1)
    if kk < 1:
        raise ValueError("a kNN graph needs at least two nodes")
    table = knn_table(distances, n, kk)
    sigma2 = float(torch.quantile(table[1].double().reshape(-1), 0.5))
    sigma2 = sigma2 if sigma2 > 0 else 1.0
    return knn_graph(distances, n, kk, lambda d2: torch.exp(-d2 / sigma2), table)


# ---------------------------------------------------------------------------------------
# Spectral terms and taumode: the one code path for items, queries and feature nodes


@dataclass
class Terms:
    rayleigh: torch.Tensor  # E, the Rayleigh quotient x^T L x / x^T x
    dispersion: torch.Tensor  # G, the dispersion of the edge energies w_ab (x_a - x_b)^2
    dirichlet: torch.Tensor  # x^T L x, the item's own Dirichlet energy
    norm: torch.Tensor  # ||x||


def spectral_terms(signals: torch.Tensor, graph: Graph, block_size: int = 8192) -> Terms:
    """E, G, x^T L x and ||x|| for each row of ``signals`` [B, n] on ``graph`` (n nodes), blockwise."""
    graph = graph.to(signals.device)
    edges = max(1, graph.src.numel())
    block = max(1, min(block_size, MAX_BLOCK_ELEMENTS // edges))
    rows = signals.shape[0]
    if rows <= block:  # a query batch: one block, no buffers to set up
        return _finish_terms(*_edge_sums(signals.float(), graph))
    out = torch.empty(3, rows, dtype=torch.float32, device=signals.device)  # total, squares, sq_norm
    # two work buffers reused by every block (out=): no per-block allocations, so the
    # allocator cannot fragment and memory stays at a few MB whatever the item count
    buffers = (
        torch.empty(block, edges, dtype=torch.float32, device=signals.device),
        torch.empty(block, edges, dtype=torch.float32, device=signals.device),
    )
    for start in range(0, rows, block):
        x = signals[start : start + block].float()
        total, squares, sq_norm = _edge_sums(x, graph, buffers)
        out[0, start : start + x.shape[0]] = total
        out[1, start : start + x.shape[0]] = squares
        out[2, start : start + x.shape[0]] = sq_norm
    return _finish_terms(out[0], out[1], out[2])


def _edge_sums(x: torch.Tensor, graph: Graph, buffers=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: sum of edge energies e = w (x_a - x_b)^2, sum of e^2, and ||x||^2 (in place on one buffer)."""
    b = x.shape[0]
    first = torch.index_select(x, 1, graph.src, out=buffers[0][:b]) if buffers else torch.index_select(x, 1, graph.src)
    second = torch.index_select(x, 1, graph.dst, out=buffers[1][:b]) if buffers else torch.index_select(x, 1, graph.dst)
    e = first.sub_(second).square_().mul_(graph.weight)
    total = e.sum(1)
    return total, e.square_().sum(1), x.square().sum(1)


def _finish_terms(total: torch.Tensor, squares: torch.Tensor, sq_norm: torch.Tensor) -> Terms:
    # a zero vector has total = squares = 0, so the clamps give E = G = 0 without branches
    return Terms(total / sq_norm.clamp_min(1e-30), squares / total.square().clamp_min(1e-30), total, sq_norm.sqrt())


def select_tau(energies: torch.Tensor, mode: str, value: float) -> float:
    """tau from the ENERGIES of the items (never from one item's coordinates)."""
    e = energies.double().cpu()
    if mode == "fixed":
        tau = value
    elif mode == "median":
        tau = float(torch.quantile(e, 0.5))  # the midpoint for an even count, unlike torch.median
    elif mode == "mean":
        tau = float(e.mean())
    elif mode == "percentile":
        tau = float(torch.quantile(e, min(max(value, 0.0), 100.0) / 100.0))
    else:
        raise ValueError(f"unknown tau mode {mode!r}")
    return tau if tau > 0 else 1e-12  # E/(E + tau) needs tau > 0


@dataclass(frozen=True)
class LambdaScales:
    """Everything taumode needs besides E and G: the same values for items and queries.

    ``bounded`` (default): lambda = blend * E/(E + tau) + (1 - blend) * G/(G + tau_G). tau and
    tau_G are scales only (both terms are 0.5 at their scale), ``blend`` is the weight in [0, 1],
    so lambda lies in [0, 1) whatever the data. ``published`` (ArrowSpace v0.18, for
    reproduction): lambda = tau * E/(E + tau) + (1 - tau) * G, where tau is both the scale and
    the weight: with tau > 1 (Median tau is ~6.9 on MiniLM vectors) G gets a negative weight.
    """

    formula: str
    tau: float  # scale of E
    tau_G: float  # scale of G (bounded formula only)
    blend: float

    def dispersion(self, G: torch.Tensor) -> torch.Tensor:
        """G as it enters lambda and the search's G term: G/(G + tau_G) (bounded) or raw (published)."""
        return G if self.formula == "published" else G / (G + self.tau_G)

    @property
    def lambda_is_dispersion(self) -> bool:
        """Bounded with blend 0: lambda = G/(G + tau_G), the search's G term itself, so |d lambda|
        and |d G~| are one quantity and w_lambda + w_G its weight."""
        return self.formula == "bounded" and self.blend == 0.0

    def warning(self) -> Optional[str]:
        if self.formula == "published" and self.tau > 1.0:
            return (
                f"build.lambda_formula=published with tau={self.tau:.3g} > 1 gives the dispersion G a negative weight "
                f"({1.0 - self.tau:.3g}); lambdas crowd into a narrow band. Use lambda_formula=bounded, or "
                "tau_mode=fixed "
                "with tau_value <= 1"
            )
        return None

    def as_dict(self) -> dict:
        return {"lambda_formula": self.formula, "tau": self.tau, "tau_G": self.tau_G, "lambda_blend": self.blend}


def lambda_scales(terms: "Terms", params: EnergyBuildSection) -> LambdaScales:
    """Scales from the energies of the rows of ``terms``; tau_G always from G's median (G has no fixed unit)."""
    tau = select_tau(terms.rayleigh, params.tau_mode, params.tau_value)
    tau_G = select_tau(terms.dispersion, "median", 0.0)
    return LambdaScales(params.lambda_formula, tau, tau_G, params.lambda_blend)


def item_terms(
    vectors: torch.Tensor, graph: Graph, scales: "LambdaScales", block_size: int = 8192
) -> tuple["Terms", torch.Tensor]:
    """Every stored per-item quantity of ``vectors`` on the feature graph: the spectral terms and lambda.

    Needs only the stored energy model (the feature Laplacian and the lambda scales), so an item
    added after the build gets exactly the values the build would have given it."""
    terms = spectral_terms(vectors, graph, block_size)
    return terms, taumode_lambda(terms.rayleigh, terms.dispersion, scales)


def taumode_lambda(energy: torch.Tensor, dispersion: torch.Tensor, scales: LambdaScales) -> torch.Tensor:
    """lambda of each row from its E and G (see LambdaScales for both formulas)."""
    if scales.formula == "published":
        return scales.tau * energy / (energy + scales.tau) + (1.0 - scales.tau) * dispersion
    return scales.blend * energy / (energy + scales.tau) + (1.0 - scales.blend) * scales.dispersion(dispersion)


def ridge_beta(graph: Graph, ridge: float) -> float:
    """beta = t * trace(L)/F: relative to the mean eigenvalue of L, so t means the same at any scale of the data.

    For a direction spread evenly over L's eigenvectors, t = 1 gives the ridge half the energy.
    """
    return float(ridge) * 2.0 * float(graph.weight.double().sum()) / graph.n  # trace(L) = sum of degrees = 2 sum(w)


def dirichlet_scale(
    vectors: torch.Tensor, graph: Graph, formula: str, seed: int, beta: float = 0.0, pairs: int = 4096
) -> float:
    """The scale s of the search's bounded Dirichlet term e/(e + s), e = (q - x)^T (L + beta I) (q - x).

    bounded: the median e between seeded random pairs of items, so the term is 0.5 for a typical
    pair and spreads over [0, 1) instead of sitting near 1 for every hit. published: 1 (e/(1+e)).
    """
    if formula == "published":
        return 1.0
    n = vectors.shape[0]
    generator = torch.Generator().manual_seed(seed + 1)
    a = torch.randint(n, (pairs,), generator=generator).to(vectors.device)
    b = torch.randint(n, (pairs,), generator=generator).to(vectors.device)
    keep = a != b
    terms = spectral_terms(vectors[a[keep]] - vectors[b[keep]], graph)
    energies = terms.dirichlet + beta * terms.norm.square()
    return select_tau(energies, "median", 0.0) if energies.numel() else 1.0


def robust_scale(values: torch.Tensor) -> float:
    """1.4826 * MAD; falls back to the standard deviation, then 1, when that is 0."""
    v = values.double().cpu()
    mad = float(torch.quantile((v - torch.quantile(v, 0.5)).abs(), 0.5)) * ROBUST_SCALE
    if mad > 0:
        return mad
    std = float(v.std()) if v.numel() > 1 else 0.0
    return std if std > 0 else 1.0


# ---------------------------------------------------------------------------------------
# Stage 1: centroids (seeded k-means++ and Lloyd iterations on a seeded sample)


def auto_centroids(n: int, params: EnergyBuildSection) -> int:
    if params.centroids is not None:
        return max(2, min(params.centroids, n))
    return max(2, min(n, params.max_centroids, math.ceil(params.centroid_scale * math.sqrt(n))))


def kmeans(x: torch.Tensor, k: int, iters: int, sample: int, generator: torch.Generator) -> torch.Tensor:
    """Seeded k-means++ then Lloyd iterations until no assignment changes (at most ``iters``)."""
    n = x.shape[0]
    if n > sample:
        x = x[torch.randperm(n, generator=generator)[:sample].sort().values.to(x.device)]
        n = sample
    centroids = _kmeans_plus_plus(x, k, generator)
    assign = _nearest(x, centroids)
    for _ in range(iters):
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        centroids = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centroids)  # empty: keep
        updated = _nearest(x, centroids)
        if torch.equal(updated, assign):
            break
        assign = updated
    return centroids


def _nearest(x: torch.Tensor, centroids: torch.Tensor, block: int = 8192) -> torch.Tensor:
    return torch.cat(
        [pairwise_sq_distances(x[s : s + block], centroids).argmin(1) for s in range(0, x.shape[0], block)]
    )


def _kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """D^2 seeding; each draw is one uniform number against the cumulative distances (seeded, cheap)."""
    n = x.shape[0]
    sq = (x * x).sum(1)
    chosen = [int(torch.randint(n, (1,), generator=generator))]
    closest = (sq - 2.0 * (x @ x[chosen[0]]) + sq[chosen[0]]).clamp_min_(0.0)
    for _ in range(1, k):
        cumulative = torch.cumsum(closest.double(), 0)
        total = float(cumulative[-1])
        if total <= 0:  # fewer distinct points than k: take the first row not chosen yet
            taken = set(chosen)
            pick = next(i for i in range(n) if i not in taken)
        else:
            target = torch.rand(1, generator=generator, dtype=torch.float64).to(x.device) * total
            pick = min(int(torch.searchsorted(cumulative, target, right=True)), n - 1)
        chosen.append(pick)
        closest = torch.minimum(closest, (sq - 2.0 * (x @ x[pick]) + sq[pick]).clamp_min_(0.0))
    return x[torch.tensor(chosen, device=x.device)].clone()


# ---------------------------------------------------------------------------------------
# Stage 2: optical compression


def optical_compress(
    centroids: torch.Tensor, tokens: int, trim_quantile: float, generator: torch.Generator
) -> torch.Tensor:
    """Project to 2-D with a seeded random projection, bin on a g x g grid, trim high-norm members, mean-pool."""
    grid = math.ceil(math.sqrt(tokens))
    projection = torch.randn(centroids.shape[1], 2, generator=generator).to(centroids.device) / math.sqrt(
        centroids.shape[1]
    )
    y = centroids @ projection
    low, high = y.min(0).values, y.max(0).values
    span = torch.where(high > low, high - low, torch.ones_like(high))
    cells = ((y - low) / span * grid).floor().clamp(0, grid - 1).long()
    cell = (cells[:, 0] * grid + cells[:, 1]).cpu()
    pooled = []
    for c in torch.unique(cell).tolist():  # sorted: deterministic order
        members = centroids[(cell == c).nonzero().squeeze(1).to(centroids.device)]
        if members.shape[0] > 4:
            norms = members.norm(dim=1)
            members = members[norms <= torch.quantile(norms, 1.0 - trim_quantile)]
        pooled.append(members.mean(0))
    return torch.stack(pooled)


# ---------------------------------------------------------------------------------------
# Stage 4: diffusion, dispersion, splitting


def diffuse(centroids: torch.Tensor, graph: Graph, eta: float, steps: int) -> torch.Tensor:
    """``steps`` explicit heat steps C <- C - eta * L_sym C (L_sym = I - D^-1/2 W D^-1/2)."""
    if steps == 0:
        return centroids.clone()
    lap = graph.dense_laplacian(centroids.device)
    inv_sqrt = torch.diag(lap).clamp_min(1e-12).rsqrt()
    lap_sym = inv_sqrt[:, None] * lap * inv_sqrt[None, :]
    c = centroids.clone()
    for _ in range(steps):
        c = c - eta * (lap_sym @ c)
    return c


def node_dispersion(points: torch.Tensor, graph: Graph) -> torch.Tensor:
    """Per node: sum over its edges of (edge energy / node's total edge energy)^2."""
    g = graph.to(points.device)
    e = g.weight * (points[g.src] - points[g.dst]).square().sum(1)
    total = torch.zeros(g.n, device=points.device).index_add_(0, g.src, e).index_add_(0, g.dst, e)
    squares = torch.zeros(g.n, device=points.device).index_add_(0, g.src, e.square()).index_add_(0, g.dst, e.square())
    return torch.where(total > 0, squares / total.clamp_min(1e-30).square(), torch.zeros_like(total))


def split_nodes(
    points: torch.Tensor, neighbours: np.ndarray, dispersion: torch.Tensor, quantile: float, tau: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace each node with G above the quantile by c +/- tau * local_std * unit(c - neighbour mean).

    Returns the new point set (a split node's two children take its place, in order) and the
    boolean mask of split nodes.
    """
    threshold = torch.quantile(dispersion.double().cpu(), quantile)
    mask = (dispersion.double().cpu() > threshold).to(points.device)
    nb = torch.from_numpy(neighbours).to(points.device)
    neighbourhood = points[nb]  # [n, k, F]
    mean = neighbourhood.mean(1)
    local_std = (neighbourhood - mean[:, None, :]).square().sum(2).mean(1).sqrt()
    away = points - mean
    unit = away / away.norm(dim=1, keepdim=True).clamp_min(1e-12)
    offset = (tau * local_std)[:, None] * unit
    repeats = 1 + mask.long()
    out = points.repeat_interleave(repeats, dim=0)
    first_child = torch.cumsum(repeats, 0) - repeats  # row of each node's first copy
    split_rows = first_child[mask]
    out[split_rows] = points[mask] + offset[mask]
    out[split_rows + 1] = points[mask] - offset[mask]
    return out, mask


# ---------------------------------------------------------------------------------------
# Stage 5: energy Laplacian over the features


@dataclass
class FeatureNodes:
    lambdas: torch.Tensor
    rayleigh: torch.Tensor
    dispersion: torch.Tensor
    s_lambda: float
    s_G: float
    scales: LambdaScales


def feature_distances(
    columns: torch.Tensor, nodes: FeatureNodes, w_lambda: float, w_disp: float, w_dirichlet: float
) -> Callable[[int, int], torch.Tensor]:
    """d(a,b) = w_l |l_a - l_b|/s_l + w_G |G_a - G_b|/s_G + w_D ||x_a - x_b|| / (1 + ||x_a - x_b||)."""

    def distances(start: int, stop: int) -> torch.Tensor:
        gap = pairwise_sq_distances(columns[start:stop], columns).sqrt()
        return (
            w_lambda * (nodes.lambdas[start:stop, None] - nodes.lambdas[None, :]).abs() / nodes.s_lambda
            + w_disp * (nodes.dispersion[start:stop, None] - nodes.dispersion[None, :]).abs() / nodes.s_G
            + w_dirichlet * gap / (1.0 + gap)
        )

    return distances


def energy_laplacian(centroids: torch.Tensor, params: EnergyBuildSection) -> tuple[Graph, FeatureNodes]:
    """Graph over the F features; feature a is the column C[:, a] of the final centroids."""
    centroid_graph, _ = euclidean_knn_graph(centroids, params.neighbor_k)
    columns = centroids.T.contiguous()  # [F, K]
    terms = spectral_terms(columns, centroid_graph, params.block_size)
    scales = lambda_scales(terms, params)
    lambdas = taumode_lambda(terms.rayleigh, terms.dispersion, scales)
    nodes = FeatureNodes(
        lambdas, terms.rayleigh, terms.dispersion, robust_scale(lambdas), robust_scale(terms.dispersion), scales
    )
    distances = feature_distances(columns, nodes, params.w_lambda, params.w_disp, params.w_dirichlet)
    graph, _ = knn_graph(distances, columns.shape[0], params.neighbor_k, lambda d: torch.exp(-d))
    return graph, nodes


# ---------------------------------------------------------------------------------------
# The API: prepare_build -> finish_build


@dataclass
class Prepared:
    """Stages 1-3, independent of the diffusion parameters."""

    vectors: torch.Tensor  # [N, F] float32 on the build device
    ids: list[str]
    params: EnergyBuildSection
    seed: int
    centroids: torch.Tensor  # after optical compression
    graph: Graph  # bootstrap kNN graph over ``centroids``
    neighbours: np.ndarray  # [K, k] kNN table of the bootstrap graph
    stats: dict = field(default_factory=dict)


@dataclass
class EnergyIndex:
    ids: list[str]
    vectors: torch.Tensor  # [N, F]
    graph: Graph  # energy graph over the F features
    lambdas: torch.Tensor  # taumode lambda per item
    rayleigh: torch.Tensor  # E = x^T L x / x^T x per item
    dispersion: torch.Tensor  # G per item (raw; LambdaScales.dispersion scales it for the search)
    dirichlet: torch.Tensor  # x^T L x per item
    norm: torch.Tensor  # ||x|| per item
    scales: LambdaScales
    dirichlet_scale: float  # s of the search's bounded Dirichlet term e/(e + s)
    dirichlet_beta: float  # beta of the Dirichlet metric L + beta I (0: the pure Dirichlet energy)
    params: dict
    stats: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # for the user (the CLI prints them)
    model: Optional[str] = None  # embedding model source when the items were texts
    texts: Optional[list[str]] = None  # the item texts, shown beside search results
    labels: Optional[list[list[str]]] = None  # the items' labels (input.label_field), when the input had them
    ann: Optional[Any] = None  # FAISS candidate structure over M^{1/2} x, M = L + beta I (ann.py), when built

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def with_items(
        self,
        ids: list[str],
        vectors: torch.Tensor,
        columns: dict[str, torch.Tensor],
        texts: Optional[list[str]],
        labels: Optional[list[list[str]]],
    ) -> "EnergyIndex":
        """Other items (their per-item ``columns``: lambdas, rayleigh, dispersion, dirichlet, norm)
        under this index's energy model, as a store reads them back."""
        return dataclasses.replace(
            self, ids=ids, vectors=vectors, **columns, texts=texts, labels=labels, warnings=[], ann=None
        )

    def select(self, rows) -> "EnergyIndex":
        """The index restricted to ``rows`` (item positions, in the order given), sharing the energy model."""
        rows = np.asarray(rows, dtype=np.int64)
        at = torch.from_numpy(rows).to(self.vectors.device)
        pick = lambda seq: [seq[i] for i in rows.tolist()] if seq is not None else None
        return dataclasses.replace(
            self,
            ids=pick(self.ids),
            vectors=self.vectors[at],
            lambdas=self.lambdas[at],
            rayleigh=self.rayleigh[at],
            dispersion=self.dispersion[at],
            dirichlet=self.dirichlet[at],
            norm=self.norm[at],
            texts=pick(self.texts),
            labels=pick(self.labels),
            ann=None,
        )

    def dirichlet_metric(self, device: torch.device) -> torch.Tensor:
        """M = L + beta I (F x F, dense): e = (q - x)^T M (q - x) is the search's Dirichlet energy."""
        metric = self.graph.dense_laplacian(device)
        metric.diagonal().add_(self.dirichlet_beta)  # a view: adds beta to the diagonal in place
        return metric


def prepare_build(
    vectors,
    params: EnergyBuildSection,
    ids: Optional[Sequence[str]] = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> Prepared:
    """Stages 1-3: seeded k-means centroids, optional optical compression, bootstrap kNN graph."""
    started = time.perf_counter()
    x = torch.as_tensor(np.asarray(vectors, dtype=np.float32) if not isinstance(vectors, torch.Tensor) else vectors)
    x = x.to(device=torch.device(device), dtype=torch.float32).contiguous()
    n = x.shape[0]
    if x.ndim != 2 or n < 2 or x.shape[1] < 2:
        raise InputError(
            f"an energy index needs at least two items of at least two dimensions, got shape {tuple(x.shape)}"
        )
    ids = [str(i) for i in (ids if ids is not None else range(n))]
    generator = torch.Generator().manual_seed(seed)
    k = auto_centroids(n, params)
    centroids = kmeans(x, k, params.kmeans_iters, params.kmeans_sample, generator)
    stats = {"items": n, "dim": int(x.shape[1]), "kmeans_centroids": k}
    if params.optical_tokens is not None:
        centroids = optical_compress(centroids, params.optical_tokens, params.trim_quantile, generator)
    stats["compressed_centroids"] = int(centroids.shape[0])
    if centroids.shape[0] < 2:
        raise ConfigError("optical compression left fewer than two centroids; raise build.optical_tokens")
    graph, neighbours = euclidean_knn_graph(centroids, params.neighbor_k)
    stats["bootstrap_edges"] = int(graph.src.numel())
    stats["prepare_seconds"] = round(time.perf_counter() - started, 4)
    return Prepared(x, ids, params, seed, centroids, graph, neighbours, stats)


def finish_build(
    prepared: Prepared, eta: Optional[float] = None, steps: Optional[int] = None, **overrides
) -> EnergyIndex:
    """Stages 4-6 on a prepared build; ``eta``/``steps``/``overrides`` replace the prepared params."""
    unknown = set(overrides) - DIFFUSION_FIELDS
    if unknown:
        raise ValueError(f"finish_build() cannot change {sorted(unknown)}: they belong to prepare_build()")
    update = dict(overrides)
    if eta is not None:
        update["eta"] = eta
    if steps is not None:
        update["steps"] = steps
    params = prepared.params.model_copy(update=update)
    started = time.perf_counter()
    diffused = diffuse(prepared.centroids, prepared.graph, params.eta, params.steps)
    dispersion = node_dispersion(diffused, prepared.graph)
    final, split_mask = split_nodes(diffused, prepared.neighbours, dispersion, params.split_quantile, params.split_tau)
    graph, nodes = energy_laplacian(final, params)
    terms = spectral_terms(prepared.vectors, graph, params.block_size)
    scales = lambda_scales(terms, params)  # the build's items set the scales; item_terms reuses them for added items
    lambdas = taumode_lambda(terms.rayleigh, terms.dispersion, scales)
    stats = dict(prepared.stats)
    stats.update(
        {
            "split_nodes": int(split_mask.sum()),
            "final_centroids": int(final.shape[0]),
            "node_dispersion_mean": float(dispersion.mean()),
            "feature_edges": int(graph.src.numel()),
            "feature_s_lambda": nodes.s_lambda,
            "feature_s_G": nodes.s_G,
            "feature_tau": nodes.scales.tau,
            "finish_seconds": round(time.perf_counter() - started, 4),
        }
    )
    beta = ridge_beta(graph, params.dirichlet_ridge)
    scale = dirichlet_scale(prepared.vectors, graph, params.lambda_formula, prepared.seed, beta)
    warnings = [w for w in (scales.warning(),) if w]
    return EnergyIndex(
        prepared.ids,
        prepared.vectors,
        graph,
        lambdas,
        terms.rayleigh,
        terms.dispersion,
        terms.dirichlet,
        terms.norm,
        scales,
        scale,
        beta,
        params.model_dump(mode="json") | {"seed": prepared.seed},
        stats,
        warnings,
    )


def build(
    vectors,
    params: EnergyBuildSection,
    ids: Optional[Sequence[str]] = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> EnergyIndex:
    return finish_build(prepare_build(vectors, params, ids, seed, device))
