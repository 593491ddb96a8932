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
    """Holds the device tensors of one index; ``search`` answers a batch of query vectors."""

    def __init__(self, index: EnergyIndex):
        self.index = index
        device = index.vectors.device
        self.vectors = index.vectors
        self.laplacian = index.graph.dense_laplacian(device)  # F x F, small: dense is fastest
        self.unit = index.vectors / index.norm.clamp_min(1e-30)[:, None]
        order = torch.argsort(index.lam.cpu(), stable=True)
        self.sorted_lambda = index.lam.cpu()[order].numpy()
        self.sorted_order = order.numpy()

    def check(self, queries: torch.Tensor, k: int) -> torch.Tensor:
        if queries.ndim == 1:
            queries = queries[None, :]
        if queries.ndim != 2 or queries.shape[1] != self.index.dim:
            raise InputError(f"query vectors have dimension {tuple(queries.shape)[1:]}, the index has {self.index.dim}; "
                             "embed queries with the index's model")
        if not torch.isfinite(queries).all():
            raise InputError("a query vector contains NaN or Inf")
        if (queries.abs().amax(1) == 0).any():
            raise InputError("a query vector is all zeros")
        if k > len(self.index):
            raise InputError(f"k={k} but the index holds only {len(self.index)} items; lower -k")
        return queries.to(self.vectors.device, torch.float32)

    def query_terms(self, queries: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = spectral_terms(queries, self.index.graph)
        return {"lambda": taumode_lambda(terms.E, terms.G, self.index.tau), "G": terms.G, "qLq": terms.xLx,
                "norm": terms.norm}

    def energy_scores(self, q: dict[str, torch.Tensor], queries: torch.Tensor, params: SearchParams,
                      rows: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """Energy score and its terms for every query (dim 0) against items ``rows`` (all when None)."""
        index = self.index
        x = self.vectors if rows is None else self.vectors[rows]
        pick = (lambda t: t) if rows is None else (lambda t: t[rows])  # noqa: E731
        lq = queries @ self.laplacian  # L is symmetric: rows are (L q)^T
        dirichlet = (q["qLq"][:, None] - 2.0 * lq @ x.T + pick(index.xLx)[None, :]).clamp_min_(0.0)
        d_lambda = (q["lambda"][:, None] - pick(index.lam)[None, :]).abs()
        d_g = (q["G"][:, None] - pick(index.G)[None, :]).abs()
        bounded = dirichlet / (1.0 + dirichlet)
        score = params.w_lambda * d_lambda + params.w_G * d_g + params.w_D * bounded
        return {"score": score, "d_lambda": d_lambda, "d_G": d_g, "dirichlet": dirichlet, "bounded_dirichlet": bounded}

    def cosine(self, queries: torch.Tensor, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        unit = self.unit if rows is None else self.unit[rows]
        return (queries / queries.norm(dim=1, keepdim=True)) @ unit.T

    def window(self, query_lambda: float, m: int) -> np.ndarray:
        """Item rows of the ``m`` lambdas nearest ``query_lambda`` (binary search, then a two-sided merge)."""
        lam = self.sorted_lambda
        m = min(m, lam.size)
        right = int(np.searchsorted(lam, query_lambda))
        lo, hi = max(0, right - m), min(lam.size, right + m)
        segment = lam[lo:hi]
        nearest = np.argsort(np.abs(segment - query_lambda), kind="stable")[:m] + lo
        return self.sorted_order[np.sort(nearest)]

    def search(self, queries, params: SearchParams) -> list[list[Hit]]:
        if params.mode not in MODES:
            raise InputError(f"unknown search mode {params.mode!r}; use one of {', '.join(MODES)}")
        queries = self.check(torch.as_tensor(np.asarray(queries, np.float32)) if not isinstance(queries, torch.Tensor)
                             else queries, params.k)
        if params.mode == "energy-window":
            return self._search_window(queries, params)
        q = self.query_terms(queries)
        if params.mode == "cosine":
            cos = self.cosine(queries)
            parts = {"score": (1.0 - cos) / 2.0, "cosine": cos}
        else:
            parts = self.energy_scores(q, queries, params)
            if params.mode == "hybrid":
                cos = self.cosine(queries)
                parts["energy_score"] = parts["score"]
                parts["cosine"] = cos
                parts["score"] = params.alpha * (1.0 - cos) / 2.0 + (1.0 - params.alpha) * parts["score"]
        return [self._top(parts, row, params.k, None, q["lambda"][row]) for row in range(queries.shape[0])]

    def _search_window(self, queries: torch.Tensor, params: SearchParams) -> list[list[Hit]]:
        q = self.query_terms(queries)
        m = max(params.candidate_m, params.k)
        results = []
        for row in range(queries.shape[0]):
            rows = torch.from_numpy(self.window(float(q["lambda"][row]), m)).to(self.vectors.device)
            single = {name: value[row:row + 1] for name, value in q.items()}
            parts = self.energy_scores(single, queries[row:row + 1], params, rows)
            results.append(self._top(parts, 0, params.k, rows, q["lambda"][row]))
        return results

    def _top(self, parts: dict[str, torch.Tensor], row: int, k: int, rows: Optional[torch.Tensor],
             query_lambda: torch.Tensor) -> list[Hit]:
        score = parts["score"][row]
        top = torch.topk(score, k, largest=False).indices.cpu().numpy()
        # equal scores rank by item position, the same way on every run
        order = top[np.lexsort((top, score.cpu().numpy()[top]))]
        hits = []
        for rank, position in enumerate(order.tolist(), start=1):
            item = int(rows[position]) if rows is not None else position
            terms = {name: float(value[row, position]) for name, value in parts.items() if name != "score"}
            terms["lambda"] = float(self.index.lam[item])
            terms["query_lambda"] = float(query_lambda)
            hits.append(Hit(rank, self.index.ids[item], item, float(score[position]), terms))
        return hits


def search(index: EnergyIndex, queries, params: SearchParams) -> list[list[Hit]]:
    return Searcher(index).search(queries, params)


def topk_rows(searcher: Searcher, queries: torch.Tensor, params: SearchParams) -> np.ndarray:
    """Just the item rows of the top k per query (no per-hit terms): the fast path for sweeps and benchmarks."""
    queries = searcher.check(queries, params.k)
    if params.mode == "energy-window":
        q = searcher.query_terms(queries)
        m = max(params.candidate_m, params.k)
        out = []
        for row in range(queries.shape[0]):
            rows = torch.from_numpy(searcher.window(float(q["lambda"][row]), m)).to(queries.device)
            single = {name: value[row:row + 1] for name, value in q.items()}
            score = searcher.energy_scores(single, queries[row:row + 1], params, rows)["score"][0]
            out.append(rows[torch.topk(score, params.k, largest=False).indices].cpu().numpy())
        return np.stack(out)
    if params.mode == "cosine":
        score = -searcher.cosine(queries)
    else:
        q = searcher.query_terms(queries)
        score = searcher.energy_scores(q, queries, params)["score"]
        if params.mode == "hybrid":
            score = params.alpha * (1.0 - searcher.cosine(queries)) / 2.0 + (1.0 - params.alpha) * score
    return torch.topk(score, params.k, dim=1, largest=False).indices.cpu().numpy()
