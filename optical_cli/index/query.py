"""Answering queries against a stored index: read the queries, embed them, search the right store.

``search_index`` is what ``optical index search`` runs. The files backend (and the Milvus
backend with exact candidates, which reads every live item from the database) searches the
items in memory with ``Searcher``; the Milvus backend with ANN candidates asks the database's
ANN index over R x for each query's candidates (the lambda window as a database filter) and
rescores them exactly with the same formulas.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..devices import resolve_device
from ..errors import InputError
from . import milvus
from .build import EnergyIndex
from .config import IndexConfig
from .inputs import read_vectors
from .manifest import backend_of, read_manifest, read_model
from .pipeline import query_vectors, read_query_file
from .search import Hit, Searcher, SearchParams
from .store import load_index


@dataclass
class Queries:
    ids: list[str]
    texts: Optional[list[str]]  # None for vector queries
    vectors: Optional[np.ndarray]  # None until texts are embedded


@dataclass
class SearchOutcome:
    queries: Queries
    results: list[list[Hit]]
    params: SearchParams
    seconds: float
    notes: list[str] = field(default_factory=list)


def read_queries(
    texts: Optional[list[str]], vector_file: Optional[Path], query_file: Optional[Path], cfg: IndexConfig
) -> Queries:
    """Exactly one of: query texts, a vector file (.npy 1-D or 2-D, .parquet, .safetensors), a query file."""
    given = [
        name
        for name, value in (("--query", texts), ("--query-vector", vector_file), ("--queries", query_file))
        if value
    ]
    if len(given) != 1:
        raise InputError(
            "give exactly one of --query, --query-vector or --queries" + (f" (got {', '.join(given)})" if given else "")
        )
    if texts:
        blank = [position + 1 for position, text in enumerate(texts) if not text.strip()]
        if blank:
            raise InputError(
                f'--query number {blank[0]} is empty; give the text to search for, e.g. -q "SQL injection in the '
                'login page"'
            )
        return Queries([f"q{i + 1}" for i in range(len(texts))], list(texts), None)
    if vector_file:
        if vector_file.suffix.lower() == ".npy":
            try:
                vectors = np.atleast_2d(np.load(vector_file, allow_pickle=False)).astype(np.float32)
            except Exception as exc:  # noqa: BLE001 - numpy raises several parse errors
                raise InputError(f"{vector_file}: cannot read a vector ({type(exc).__name__}: {exc})") from None
            return Queries([f"q{i + 1}" for i in range(vectors.shape[0])], None, vectors)
        items = read_vectors(vector_file, cfg.input.id_field, cfg.input.vector_field)
        return Queries(items.ids, None, items.vectors)
    ids, query_texts, vectors = read_query_file(query_file, cfg.input.id_field, cfg.input.text_field)
    return Queries(ids, query_texts, vectors)


def search_index(directory: Path, queries: Queries, cfg: IndexConfig) -> SearchOutcome:
    """Embed text queries with the index's model and search the index in ``directory``."""
    device = resolve_device(cfg.runtime.device)
    manifest = read_manifest(directory)
    params = SearchParams.from_section(cfg.search)
    on_database = backend_of(manifest) == "milvus" and params.candidates == "ann"
    if on_database:
        index = read_model(directory, manifest, device)
    else:
        index = load_index(directory, device, cfg.store.open_timeout)
    if queries.vectors is None:
        queries.vectors = query_vectors(index.model, queries.texts, cfg.runtime.device, cfg.embed.batch_size)
    notes = []
    if params.mode != "cosine" and index.scales.lambda_is_dispersion and params.w_lambda and params.w_G:
        notes.append(
            f"this index has lambda_blend 0, so lambda is the dispersion G~ and w_lambda and w_G weigh the same "
            f"term (together {params.w_lambda + params.w_G:g}); hits show it once, as d_lambda"
        )
    started = time.perf_counter()
    if on_database:
        results = search_database(directory, manifest, index, queries.vectors, params, cfg.store.open_timeout)
    else:
        results = Searcher(index).search(queries.vectors, params)
    return SearchOutcome(queries, results, params, time.perf_counter() - started, notes)


def search_database(
    directory: Path, manifest: dict, model: EnergyIndex, vectors, params: SearchParams, timeout: float
) -> list[list[Hit]]:
    """ANN candidates from the Milvus collection, rescored exactly; the lambda window filters in the database."""
    source = milvus.CandidateSource(directory, manifest, model, timeout)
    try:
        return search_candidates(source, vectors, params)
    finally:
        source.close()


def search_candidates(source: "milvus.CandidateSource", vectors, params: SearchParams) -> list[list[Hit]]:
    """One batch of queries against an open database (a benchmark keeps ``source`` open between batches)."""
    scorer = Searcher(source.model)  # the energy model alone (no items): query checks and query lambdas
    queries = scorer.check(vectors, 0)
    windows = None
    if params.lambda_window is not None:
        lambdas = scorer.query_terms(queries)["lambda"].tolist()
        windows = [(lam - params.lambda_window, lam + params.lambda_window) for lam in lambdas]
    m = max(params.ann_candidates, params.k)
    candidates, rows = source.gather(queries, m, params.hnsw_ef_search, params.ivf_nprobe, windows)
    if len(candidates) == 0:
        return [[] for _ in range(queries.shape[0])]
    return Searcher(candidates).search(queries, params, rows)
