"""Approximate energy candidates with FAISS, then exact rescoring (``search.candidates: ann``).

The Dirichlet term of the energy score is a quadratic form in q - x on the metric
M = L + beta I (the feature Laplacian plus the optional ridge; symmetric, positive semi-definite):

    e(q - x) = (q - x)^T M (q - x) = || R q - R x ||^2,   R = M^{1/2} = V diag(sqrt(w)) V^T

so the Euclidean nearest neighbours of the transformed items R x are exactly the items of
smallest Dirichlet energy: candidates for energy search, not for cosine. The index stores
R x in a FAISS structure chosen by size (HNSW, or IVF from ``build.ann_ivf_from`` items,
where HNSW builds too slowly); ``Searcher`` rescores the ``search.ann_candidates`` nearest
exactly, adding the lambda and dispersion terms, which the transform does not see.

HNSW graphs built on several threads depend on thread timing: two builds can return
slightly different candidates (the exact rescoring of a candidate set is deterministic).

An index with items added later (``optical index add``) has one structure per segment
(``Segmented``): each is searched for the m nearest of its live items, and the m nearest of
all of them are the candidates, as one structure over every item would give them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..artifacts import atomic_path
from ..errors import InputError

FILE = "ann.faiss"
HNSW_M = 32  # graph degree: FAISS's usual choice for 384-d embeddings (recall vs memory)
HNSW_EF_CONSTRUCTION = 64
IVF_LISTS_PER_SQRT_N = 2  # nlist = 2 sqrt(N): k-means over more lists costs minutes on 2 cores at 1M items
IVF_TRAIN_PER_LIST = 40  # FAISS warns below 39 training points per list


def faiss_module():
    """FAISS, the one place it is imported: a run that never builds or searches an ANN structure (exact
    energy search, the sweep without its FAISS baseline) does without it."""
    try:
        import faiss  # noqa: PLC0415 - its one import (above)
    except ImportError:  # a default dependency; only a broken install lands here
        raise InputError("FAISS is missing (ANN candidates, the FAISS baseline): pip install faiss-cpu") from None
    return faiss


@dataclass
class Segmented:
    """Several FAISS structures (the build's, then one per added segment) searched as one.

    ``parts``: (structure, live position of each of its rows, -1 for a deleted row)."""

    parts: list[tuple[Any, np.ndarray]]

    @property
    def ntotal(self) -> int:
        return int(sum((rows >= 0).sum() for _, rows in self.parts))


def metric_root(metric: torch.Tensor) -> np.ndarray:
    """R = M^{1/2} (F x F, float32) from the dense symmetric metric L + beta I.

    Tiny negative eigenvalues are rounding."""
    w, v = np.linalg.eigh(metric.double().cpu().numpy())
    return ((v * np.sqrt(np.clip(w, 0.0, None))) @ v.T).astype(np.float32)


def transform(vectors, root: np.ndarray) -> np.ndarray:
    x = vectors.cpu().numpy() if isinstance(vectors, torch.Tensor) else np.asarray(vectors)
    return np.ascontiguousarray(x.astype(np.float32, copy=False) @ root)


def choose_kind(n: int, kind: str, ivf_from: int) -> str:
    return ("ivf" if n >= ivf_from else "hnsw") if kind == "auto" else kind


def build_ann(
    vectors: torch.Tensor, metric: torch.Tensor, kind: str, ivf_from: int, block: int = 65536
) -> Optional[Any]:
    """The FAISS structure over R x, R = ``metric``^{1/2} (None for kind ``none``).

    Items are added in blocks to bound memory."""
    if kind == "none":
        return None
    faiss = faiss_module()
    n, dim = vectors.shape
    root = metric_root(metric)
    kind = choose_kind(n, kind, ivf_from)
    if kind == "hnsw":
        ann = faiss.IndexHNSWFlat(dim, HNSW_M)
        ann.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    else:
        lists = max(1, min(n // IVF_TRAIN_PER_LIST, round(IVF_LISTS_PER_SQRT_N * math.sqrt(n))))
        ann = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, lists)
        sample = np.random.default_rng(0).choice(n, size=min(n, lists * IVF_TRAIN_PER_LIST), replace=False)
        ann.train(transform(vectors[torch.from_numpy(np.sort(sample)).to(vectors.device)], root))
    for start in range(0, n, block):
        ann.add(transform(vectors[start : start + block], root))
    return ann


def save_ann(ann: Any, path: Path) -> None:
    faiss = faiss_module()
    with atomic_path(path) as tmp:
        faiss.write_index(ann, str(tmp))


def load_ann(path: Path) -> Any:
    return faiss_module().read_index(str(path))


def describe(ann: Any) -> dict:
    if isinstance(ann, Segmented):
        return {"kind": "segmented", "items": ann.ntotal, "parts": [describe(part) for part, _ in ann.parts]}
    faiss = faiss_module()
    kind = (
        "ivf" if isinstance(ann, faiss.IndexIVF) else "hnsw" if isinstance(ann, faiss.IndexHNSW) else type(ann).__name__
    )
    info = {"kind": kind, "items": int(ann.ntotal)}
    if kind == "ivf":
        info["lists"] = int(ann.nlist)
    return info


def candidates(ann: Any, root: np.ndarray, queries: torch.Tensor, m: int, ef_search: int, nprobe: int) -> torch.Tensor:
    """Item rows [B, m] of the m smallest Dirichlet energies per query (approximately); -1 pads a short list."""
    if isinstance(ann, Segmented):
        return _segmented_candidates(ann, root, queries, m, ef_search, nprobe)
    _, rows = _search(ann, transform(queries, root), min(m, int(ann.ntotal)), ef_search, nprobe)
    return torch.from_numpy(rows).to(queries.device)


def _search(ann: Any, probes: np.ndarray, m: int, ef_search: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
    faiss = faiss_module()
    if isinstance(ann, faiss.IndexIVF):
        params = faiss.SearchParametersIVF(nprobe=min(nprobe, int(ann.nlist)))
    else:
        params = faiss.SearchParametersHNSW(efSearch=max(ef_search, m))
    return ann.search(probes, m, params=params)


def _segmented_candidates(
    ann: Segmented, root: np.ndarray, queries: torch.Tensor, m: int, ef_search: int, nprobe: int
) -> torch.Tensor:
    """The m nearest live items over every part: each part asked for m plus its deleted rows, merged by distance."""
    probes = transform(queries, root)
    distances, rows = [], []
    for part, positions in ann.parts:
        if part.ntotal == 0:
            continue
        dead = int((positions < 0).sum())
        found_d, found = _search(part, probes, min(int(part.ntotal), m + dead), ef_search, nprobe)
        live = np.where(found >= 0, positions[np.clip(found, 0, None)], -1)
        distances.append(np.where(live >= 0, found_d, np.inf))
        rows.append(live)
    distances, rows = np.concatenate(distances, axis=1), np.concatenate(rows, axis=1)
    m = min(m, ann.ntotal)
    order = np.argsort(distances, axis=1, kind="stable")[:, :m]
    picked = np.take_along_axis(rows, order, axis=1)
    picked[np.take_along_axis(distances, order, axis=1) == np.inf] = -1
    return torch.from_numpy(picked).to(queries.device)
