"""Search an energy index: exact or approximate-candidate energy, cosine and hybrid.

Scores are lower-is-better in every mode:

- energy:  w_lambda*|lambda_q - lambda_i| + w_G*|G~_q - G~_i| + w_D*B(q - x_i), B(v) = e/(e + s),
  e = v^T M v with M = L + beta I (``EnergyIndex.dirichlet_metric``; beta = 0 by default),
  computed as q^T M q - 2 (Mq)^T x_i + x_i^T M x_i with x_i^T M x_i = x_i^T L x_i + beta ||x_i||^2
  from stored terms, so a query costs one F x F product plus one dense N x F product (the cost
  of a cosine scan). s is the index's ``dirichlet_scale`` and G~ its scaled dispersion (``LambdaScales``).
- cosine: the cosine distance (1 - cos)/2, in [0, 1].
- hybrid: alpha * (1 - cos)/2 + (1 - alpha) * energy score; both parts are 0 for a perfect
  match, the cosine part is bounded by 1 and the energy part by w_lambda + w_G + w_D.

Candidates (``SearchParams.candidates``): ``exact`` scores every item; ``ann`` scores only
the ``ann_candidates`` items nearest in Dirichlet energy found by the index's FAISS structure
(ann.py) or given by the caller (the Milvus backend's database search), with the same formulas,
so a candidate's score equals its exact score. ``lambda_window`` w keeps only items with
|lambda_i - lambda_q| <= w (the published method's pre-filter): the others score +inf and are
never returned, so a query may get fewer than k hits.

Query lambdas come from ``spectral_terms`` + ``taumode_lambda`` with the index's stored
scales: the same code path as the item lambdas of the build.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..errors import InputError
from . import ann as ann_mod
from .build import EnergyIndex, spectral_terms, taumode_lambda

SEARCH_MODES = ("energy", "cosine", "hybrid")
CANDIDATES = ("exact", "ann")


@dataclass(frozen=True)
class SearchParams:
    k: int = 10
    mode: str = "energy"
    w_lambda: float = 0.1
    w_G: float = 0.05
    w_D: float = 1.0
    alpha: float = 0.5
    candidates: str = "exact"
    ann_candidates: int = 50
    hnsw_ef_search: int = 64
    ivf_nprobe: int = 32
    lambda_window: Optional[float] = None

    @classmethod
    def from_section(cls, section) -> "SearchParams":
        return cls(**section.model_dump())


@dataclass
class Hit:
    rank: int
    id: str
    index: int  # the item's position in the searched index
    score: float
    terms: dict[str, float]
    text: Optional[str] = None
    labels: Optional[list[str]] = None

    def as_dict(self) -> dict:
        extra = {"labels": self.labels} if self.labels is not None else {}
        return {"rank": self.rank, "id": self.id, "score": self.score, **self.terms, **extra}


class Searcher:
    """Holds the device tensors of one index; ranks a batch of query vectors.

    ``scores`` is the one ranking path (fused, in place, one pass over the vectors per
    query batch, or over each query's own candidate rows); ``terms`` recomputes the component
    terms for the k hits only.
    """

    def __init__(self, index: EnergyIndex):
        self.index = index
        self.vectors = index.vectors
        self.metric = index.dirichlet_metric(index.vectors.device)  # L + beta I, F x F, small: dense is fastest
        self.beta = float(index.dirichlet_beta)
        # x^T M x per item
        self.item_energy = index.dirichlet + self.beta * index.norm.square() if self.beta else index.dirichlet
        self.inv_norm = 1.0 / index.norm.clamp_min(1e-30)
        self.scale = float(index.dirichlet_scale)
        self.dispersion = index.scales.dispersion(index.dispersion)
        self._root: Optional[np.ndarray] = None  # M^{1/2} for the ANN transform, computed on first use

    def check(self, queries, k: int) -> torch.Tensor:
        queries = torch.as_tensor(np.asarray(queries, np.float32)) if not isinstance(queries, torch.Tensor) else queries
        if queries.ndim == 1:
            queries = queries[None, :]
        if queries.ndim != 2 or queries.shape[1] != self.index.dim:
            raise InputError(
                f"query vectors have dimension {tuple(queries.shape)[1:]}, the index has {self.index.dim}; "
                "embed queries with the index's model"
            )
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
        scales = self.index.scales
        qMq = terms.dirichlet + self.beta * terms.norm.square() if self.beta else terms.dirichlet
        return {
            "lambda": taumode_lambda(terms.rayleigh, terms.dispersion, scales),
            "G": scales.dispersion(terms.dispersion),
            "qMq": qMq,
            "norm": terms.norm,
        }

    def scores(
        self, queries: torch.Tensor, params: SearchParams, q: Optional[dict] = None, rows: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Lower-is-better scores [B, N] against all items, or [B, m] against each query's own ``rows`` [B, m]."""
        score = self._scores(queries, params, q, rows.clamp_min(0) if rows is not None else None)
        if rows is not None:
            score.masked_fill_(rows < 0, float("inf"))  # padding of a short candidate list
        if params.lambda_window is not None:
            q = q if q is not None else self.query_terms(queries)
            lambdas = self.index.lambdas[None, :] if rows is None else self.index.lambdas[rows.clamp_min(0)]
            score.masked_fill_((lambdas - q["lambda"][:, None]).abs() > params.lambda_window, float("inf"))
        return score

    def _scores(
        self, queries: torch.Tensor, params: SearchParams, q: Optional[dict], rows: Optional[torch.Tensor]
    ) -> torch.Tensor:
        index = self.index
        if rows is None:
            pick = lambda t: t[None, :]
            dot = lambda probes: scan(self.vectors, probes)
        else:
            pick = lambda t: t[rows]
            gathered = self.vectors[rows]  # [B, m, F]
            dot = lambda probes: torch.einsum("bmf,bf->bm", gathered, probes)
        if params.mode == "cosine":
            cos = dot(queries).mul_(pick(self.inv_norm)).div_(queries.norm(dim=1, keepdim=True))
            return cos.neg_().add_(1.0).mul_(0.5)
        q = q if q is not None else self.query_terms(queries)
        probes = queries @ self.metric  # rows are (M q)^T, M symmetric
        batch = queries.shape[0]
        hybrid_scan = params.mode == "hybrid" and rows is None
        products = dot(torch.cat([probes, queries]) if hybrid_scan else probes)  # a full scan: one pass gives both
        e = products[:batch].mul_(-2.0).add_(pick(self.item_energy)).add_(q["qMq"][:, None]).clamp_min_(0.0)
        score = e.div_(e + self.scale).mul_(params.w_D)
        score.add_((pick(index.lambdas) - q["lambda"][:, None]).abs_().mul_(params.w_lambda))
        if params.w_G:
            score.add_((pick(self.dispersion) - q["G"][:, None]).abs_().mul_(params.w_G))
        if params.mode == "hybrid":
            cos = (products[batch:] if hybrid_scan else dot(queries)).mul_(pick(self.inv_norm)).div_(q["norm"][:, None])
            score.mul_(1.0 - params.alpha).add_(cos.neg_().add_(1.0).mul_(params.alpha / 2.0))
        return score

    def energy_scores(self, q: dict[str, torch.Tensor], queries: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every weight-free energy term as a [B, N] matrix (for weight tuning: terms once, many weightings)."""
        index = self.index
        dirichlet = (
            q["qMq"][:, None] - 2.0 * scan(self.vectors, queries @ self.metric) + self.item_energy[None, :]
        ).clamp_min(0.0)
        return {
            "d_lambda": (q["lambda"][:, None] - index.lambdas[None, :]).abs(),
            "d_G": (q["G"][:, None] - self.dispersion[None, :]).abs(),
            "dirichlet": dirichlet,
            "bounded_dirichlet": dirichlet / (dirichlet + self.scale),
        }

    def cosine(self, queries: torch.Tensor) -> torch.Tensor:
        """Cosine similarities [B, N]."""
        return scan(self.vectors, queries) * self.inv_norm[None, :] / queries.norm(dim=1, keepdim=True)

    def terms(
        self, queries: torch.Tensor, q: dict, items: torch.Tensor, params: SearchParams
    ) -> dict[str, torch.Tensor]:
        """The component terms [B, k] of the score for each query's ``items`` [B, k] (the same formulas, unfused)."""
        x = self.vectors[items]  # [B, k, F]
        norm = q["norm"] if q else queries.norm(dim=1)
        cos = torch.einsum("bkf,bf->bk", x, queries) * self.inv_norm[items] / norm[:, None]
        if params.mode == "cosine":
            return {"cosine": cos}
        dirichlet = (
            q["qMq"][:, None] - 2.0 * torch.einsum("bkf,bf->bk", x, queries @ self.metric) + self.item_energy[items]
        ).clamp_min(0.0)
        terms = {
            "d_lambda": (q["lambda"][:, None] - self.index.lambdas[items]).abs(),
            "d_G": (q["G"][:, None] - self.dispersion[items]).abs(),
            "dirichlet": dirichlet,
            "bounded_dirichlet": dirichlet / (dirichlet + self.scale),
        }
        if self.index.scales.lambda_is_dispersion:  # d_G would repeat d_lambda on every hit
            del terms["d_G"]
        if self.beta:  # the identity part of the Dirichlet energy, so every hit shows the ridge's share
            terms["ridge"] = self.beta * (x - queries[:, None, :]).square().sum(2)
        if params.mode == "hybrid":
            terms["energy_score"] = (
                params.w_lambda * terms["d_lambda"]
                + params.w_G * terms.get("d_G", terms["d_lambda"])
                + params.w_D * terms["bounded_dirichlet"]
            )
            terms["cosine"] = cos
        return terms

    def candidate_rows(self, queries: torch.Tensor, params: SearchParams) -> torch.Tensor:
        """[B, m] item rows nearest each query in Dirichlet energy, from the index's FAISS structure."""
        if self.index.ann is None:
            raise InputError(
                "search.candidates=ann but this index has no ANN structure; rebuild it with "
                "`optical index build-energy --set build.ann=auto`"
            )
        if self._root is None:
            self._root = ann_mod.metric_root(self.metric)
        m = max(params.ann_candidates, params.k)
        rows = ann_mod.candidates(self.index.ann, self._root, queries, m, params.hnsw_ef_search, params.ivf_nprobe)
        if bool((rows < 0).any()):  # IVF visited too few lists for m items: fall back to exact for safety
            raise InputError(f"the ANN structure returned fewer than {m} candidates; raise search.ivf_nprobe")
        return rows

    @torch.inference_mode()  # no autograd bookkeeping: ~15% less fixed cost per query
    def rank(
        self, queries: torch.Tensor, params: SearchParams, rows: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Top-k item rows [B, k] per query, best first (equal scores by item position), their scores and
        the query terms. ``rows`` [B, m]: the candidates to score (-1 pads), instead of this index's own."""
        if params.mode not in SEARCH_MODES:
            raise InputError(f"unknown search mode {params.mode!r}; use one of {', '.join(SEARCH_MODES)}")
        if params.candidates not in CANDIDATES:
            raise InputError(f"unknown search.candidates {params.candidates!r}; use exact or ann")
        needs_terms = params.mode != "cosine" or params.lambda_window is not None
        q = self.query_terms(queries) if needs_terms else {}
        if rows is None and params.candidates == "ann":
            rows = self.candidate_rows(queries, params)
        score = self.scores(queries, params, q or None, rows)
        top = torch.topk(score, min(params.k, score.shape[1]), dim=1, largest=False)
        items = top.indices if rows is None else torch.gather(rows, 1, top.indices)
        return (*_stable(items, top.values), q)

    @torch.inference_mode()
    def search(self, queries, params: SearchParams, rows: Optional[torch.Tensor] = None) -> list[list[Hit]]:
        """Hits per query; ``rows``: candidate positions given by the caller (see ``rank``)."""
        queries = self.check(queries, params.k if rows is None else 1)
        items, score, q = self.rank(queries, params, rows)  # [B, k] each
        finite = torch.isfinite(score)
        items = items.clamp_min(0)
        # one batched pass for every hit's terms, then plain Python lists (no per-query tensor ops)
        score, finite = score.tolist(), finite.tolist()
        q = q if (q and params.mode != "cosine") else {}
        terms = {name: value.tolist() for name, value in self.terms(queries, q, items, params).items()}
        lam = self.index.lambdas[items].tolist()
        query_lambda = q["lambda"].tolist() if q else None
        ids, texts, labels = self.index.ids, self.index.texts, self.index.labels
        results = []
        for row, row_items in enumerate(items.tolist()):
            results.append(
                [
                    Hit(
                        rank,
                        ids[item],
                        item,
                        score[row][pos],
                        {
                            **{name: value[row][pos] for name, value in terms.items()},
                            "lambda": lam[row][pos],
                            **({"query_lambda": query_lambda[row]} if q else {}),
                        },
                        texts[item] if texts is not None else None,
                        labels[item] if labels is not None else None,
                    )
                    for rank, (pos, item) in enumerate(enumerate(row_items), start=1)
                    if finite[row][pos]
                ]
            )
        return results


def scan(vectors: torch.Tensor, probes: torch.Tensor) -> torch.Tensor:
    """Inner products [B, N] of probes [B, F] with every item [N, F]: the brute-force pass.

    One probe on the CPU goes through numpy's BLAS: torch's CPU matrix-vector product runs on one
    thread and, on one thread, 1.3x slower than OpenBLAS (100K x 384: 16.2 vs 12.1 ms; 15.7 vs
    6.4 ms on 2 threads). Several probes stay in torch, whose [N, F] x [F, B] product is the
    fastest there (8 probes: 18.0 vs 25.6 ms).
    """
    if probes.shape[0] == 1 and vectors.device.type == "cpu" and vectors.dtype == probes.dtype == torch.float32:
        return torch.from_numpy(vectors.numpy() @ probes[0].numpy())[None, :]
    return (vectors @ probes.T).T  # [N, F] x [F, B]: the layout of a brute-force scan


def _stable(items: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row's top-k items by score, equal scores by item position: the same order on every run."""
    items_np, values_np = items.cpu().numpy(), values.cpu().numpy()
    order = np.lexsort((items_np, values_np), axis=-1)
    return (
        torch.from_numpy(np.take_along_axis(items_np, order, axis=-1)).to(items.device),
        torch.from_numpy(np.take_along_axis(values_np, order, axis=-1)).to(values.device),
    )


def topk_rows(searcher: Searcher, queries, params: SearchParams) -> np.ndarray:
    """Just the item rows of the top k per query, best first: the fast path for sweeps and benchmarks."""
    queries = searcher.check(queries, params.k)
    return searcher.rank(queries, params)[0].cpu().numpy()
