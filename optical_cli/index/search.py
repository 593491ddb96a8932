"""Search an energy index: exact energy, lambda-window energy, cosine and hybrid.

Scores are lower-is-better in every mode:

- energy:  w_lambda*|lambda_q - lambda_i| + w_G*|G_q - G_i| + w_D*B(q - x_i), B(v) = e/(1+e),
  e = v^T L v computed as q^T L q - 2 (Lq)^T x_i + x_i^T L x_i with x_i^T L x_i stored, so a
  query costs one F x F product plus one dense N x F product (the cost of a cosine scan).
- energy-window: the same score on the ``candidate_m`` items whose lambda is closest to the
  query's, found by binary search in the sorted lambda table (sub-linear pre-filter).
- cosine: the cosine distance (1 - cos)/2, in [0, 1].
- hybrid: alpha * (1 - cos)/2 + (1 - alpha) * energy score; both parts are 0 for a perfect
  match, the cosine part is bounded by 1 and the energy part by w_lambda*|dlambda| + w_G*|dG| + w_D.

Query lambdas come from ``spectral_terms`` + ``taumode_lambda`` with the index's stored tau:
the same code path as the item lambdas of the build.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..errors import InputError
from .build import EnergyIndex, spectral_terms, taumode_lambda

MODES = ("energy", "energy-window", "cosine", "hybrid")


@dataclass(frozen=True)
class SearchParams:
    k: int = 10
    mode: str = "energy"
    w_lambda: float = 1.0
    w_G: float = 0.5
    w_D: float = 0.25
    alpha: float = 0.5
    candidate_m: int = 32

    @classmethod
    def from_section(cls, section) -> "SearchParams":
        return cls(**section.model_dump())


@dataclass
class Hit:
    rank: int
    id: str
    index: int
    score: float
    terms: dict[str, float]

    def as_dict(self) -> dict:
        return {"rank": self.rank, "id": self.id, "score": self.score, **self.terms}


class Searcher:
    """Holds the device tensors of one index; ranks a batch of query vectors.

    ``scores`` is the one ranking path (fused, in place, one pass over the vectors per
    query batch); ``terms`` recomputes the component terms for the k hits only.
    """

    def __init__(self, index: EnergyIndex):
        self.index = index
        self.vectors = index.vectors
        self.laplacian = index.graph.dense_laplacian(index.vectors.device)  # F x F, small: dense is fastest
        self.inv_norm = 1.0 / index.norm.clamp_min(1e-30)
        order = torch.argsort(index.lam.cpu(), stable=True)
        self.sorted_lambda = index.lam.cpu()[order].numpy()
        self.sorted_order = order.numpy()

    def check(self, queries, k: int) -> torch.Tensor:
        queries = torch.as_tensor(np.asarray(queries, np.float32)) if not isinstance(queries, torch.Tensor) else queries
        if queries.ndim == 1:
            queries = queries[None, :]
        if queries.ndim != 2 or queries.shape[1] != self.index.dim:
            raise InputError(f"query vectors have dimension {tuple(queries.shape)[1:]}, the index has {self.index.dim}; "
                             "embed queries with the index's model")
        magnitude = queries.abs().sum(1)  # NaN/Inf propagate; 0 only for an all-zero vector
        if not bool(torch.isfinite(magnitude).all()):
            raise InputError("a query vector contains NaN or Inf")
        if bool((magnitude == 0).any()):
            raise InputError("a query vector is all zeros")
        if k > len(self.index):
            raise InputError(f"k={k} but the index holds only {len(self.index)} items; lower -k")
        return queries.to(self.vectors.device, torch.float32)

    def query_terms(self, queries: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = spectral_terms(queries, self.index.graph)
        return {"lambda": taumode_lambda(terms.E, terms.G, self.index.tau), "G": terms.G, "qLq": terms.xLx,
                "norm": terms.norm}

    def scores(self, queries: torch.Tensor, params: SearchParams, q: Optional[dict] = None,
               rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Lower-is-better scores [B, n] of ``queries`` against all items (or ``rows``)."""
        index = self.index
        pick = (lambda t: t) if rows is None else (lambda t: t[rows])  # noqa: E731
        x = pick(self.vectors)
        if params.mode == "cosine":
            cos = (x @ queries.T).T.mul_(pick(self.inv_norm)[None, :]).div_(queries.norm(dim=1, keepdim=True))
            return cos.neg_().add_(1.0).mul_(0.5)
        q = q if q is not None else self.query_terms(queries)
        probes = queries @ self.laplacian  # rows are (L q)^T, L symmetric
        if params.mode == "hybrid":
            probes = torch.cat([probes, queries])  # one pass over x gives L-products and dot products
        products = (x @ probes.T).T  # [N, F] x [F, B]: the layout a brute-force scan uses
        batch = queries.shape[0]
        e = products[:batch].mul_(-2.0).add_(pick(index.xLx)[None, :]).add_(q["qLq"][:, None]).clamp_min_(0.0)
        score = e.div_(e + 1.0).mul_(params.w_D)
        score.add_((pick(index.lam)[None, :] - q["lambda"][:, None]).abs_().mul_(params.w_lambda))
        score.add_((pick(index.G)[None, :] - q["G"][:, None]).abs_().mul_(params.w_G))
        if params.mode == "hybrid":
            cos = products[batch:].mul_(pick(self.inv_norm)[None, :]).div_(q["norm"][:, None])
            score.mul_(1.0 - params.alpha).add_(cos.neg_().add_(1.0).mul_(params.alpha / 2.0))
        return score

    def energy_scores(self, q: dict[str, torch.Tensor], queries: torch.Tensor, params,
                      rows: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """Every energy term as a [B, n] matrix (for weight tuning: terms once, many weightings)."""
        index = self.index
        pick = (lambda t: t) if rows is None else (lambda t: t[rows])  # noqa: E731
        x = pick(self.vectors)
        dirichlet = (q["qLq"][:, None] - 2.0 * (queries @ self.laplacian) @ x.T + pick(index.xLx)[None, :]).clamp_min(0.0)
        d_lambda = (q["lambda"][:, None] - pick(index.lam)[None, :]).abs()
        d_g = (q["G"][:, None] - pick(index.G)[None, :]).abs()
        bounded = dirichlet / (1.0 + dirichlet)
        score = params.w_lambda * d_lambda + params.w_G * d_g + params.w_D * bounded
        return {"score": score, "d_lambda": d_lambda, "d_G": d_g, "dirichlet": dirichlet, "bounded_dirichlet": bounded}

    def cosine(self, queries: torch.Tensor, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Cosine similarities [B, n]."""
        inv = self.inv_norm if rows is None else self.inv_norm[rows]
        x = self.vectors if rows is None else self.vectors[rows]
        return (queries @ x.T) * inv[None, :] / queries.norm(dim=1, keepdim=True)

    def terms(self, query: torch.Tensor, q: dict, row: int, items: torch.Tensor, params: SearchParams) -> dict[str, torch.Tensor]:
        """The component terms of the score for ``items`` of one query (the same formulas, unfused)."""
        x = self.vectors[items]
        cos = (x @ query) * self.inv_norm[items] / q["norm"][row]
        if params.mode == "cosine":
            return {"cosine": cos}
        dirichlet = (q["qLq"][row] - 2.0 * x @ (self.laplacian @ query) + self.index.xLx[items]).clamp_min(0.0)
        terms = {
            "d_lambda": (q["lambda"][row] - self.index.lam[items]).abs(),
            "d_G": (q["G"][row] - self.index.G[items]).abs(),
            "dirichlet": dirichlet,
            "bounded_dirichlet": dirichlet / (1.0 + dirichlet),
        }
        if params.mode == "hybrid":
            terms["energy_score"] = (params.w_lambda * terms["d_lambda"] + params.w_G * terms["d_G"]
                                     + params.w_D * terms["bounded_dirichlet"])
            terms["cosine"] = cos
        return terms

    def window(self, query_lambda: float, m: int) -> np.ndarray:
        """Item rows of the ``m`` lambdas nearest ``query_lambda`` (binary search in the sorted table)."""
        lam = self.sorted_lambda
        m = min(m, lam.size)
        right = int(np.searchsorted(lam, query_lambda))
        lo, hi = max(0, right - m), min(lam.size, right + m)
        nearest = np.argsort(np.abs(lam[lo:hi] - query_lambda), kind="stable")[:m] + lo
        return self.sorted_order[np.sort(nearest)]

    def rank(self, queries: torch.Tensor, params: SearchParams) -> tuple[list[torch.Tensor], dict]:
        """Top-k item rows and their scores per query, best first (equal scores by item position)."""
        if params.mode not in MODES:
            raise InputError(f"unknown search mode {params.mode!r}; use one of {', '.join(MODES)}")
        q = self.query_terms(queries) if params.mode != "cosine" else {}
        if params.mode != "energy-window":
            score = self.scores(queries, params, q)
            top = torch.topk(score, params.k, dim=1, largest=False)
            return [_stable(i, v) for i, v in zip(top.indices, top.values)], q
        m = max(params.candidate_m, params.k)
        tops = []
        for row in range(queries.shape[0]):
            rows = torch.from_numpy(self.window(float(q["lambda"][row]), m)).to(self.vectors.device)
            single = {name: value[row:row + 1] for name, value in q.items()}
            score = self.scores(queries[row:row + 1], params, single, rows)[0]
            top = torch.topk(score, params.k, largest=False)
            tops.append(_stable(rows[top.indices], top.values))
        return tops, q

    def search(self, queries, params: SearchParams) -> list[list[Hit]]:
        queries = self.check(queries, params.k)
        tops, q = self.rank(queries, params)
        results = []
        for row, items in enumerate(tops):
            score = self.scores(queries[row:row + 1], params, {n: v[row:row + 1] for n, v in q.items()}, items)[0]
            terms = self.terms(queries[row], q or {"norm": queries.norm(dim=1)}, row, items, params)
            results.append([
                Hit(rank, self.index.ids[int(item)], int(item), float(score[pos]),
                    {**{name: float(value[pos]) for name, value in terms.items()},
                     "lambda": float(self.index.lam[item]),
                     **({"query_lambda": float(q["lambda"][row])} if q else {})})
                for rank, (pos, item) in enumerate(enumerate(items.tolist()), start=1)
            ])
        return results


def _stable(items: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Sort top-k items by score, equal scores by item position: the same order on every run."""
    items_np, values_np = items.cpu().numpy(), values.cpu().numpy()
    order = np.lexsort((items_np, values_np))
    return torch.from_numpy(items_np[order]).to(items.device)


def search(index: EnergyIndex, queries, params: SearchParams) -> list[list[Hit]]:
    return Searcher(index).search(queries, params)


def topk_rows(searcher: Searcher, queries, params: SearchParams) -> np.ndarray:
    """Just the item rows of the top k per query, best first: the fast path for sweeps and benchmarks."""
    queries = searcher.check(queries, params.k)
    tops, _ = searcher.rank(queries, params)
    return torch.stack(tops).cpu().numpy()
