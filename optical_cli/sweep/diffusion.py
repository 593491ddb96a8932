"""`optical sweep diffusion`: energy search over an (eta, steps) grid against label relevance.

The work that does not depend on eta and steps is done once: reading and sampling the
corpus, embedding it (cached on disk), the relevance judgements, and ``prepare_build()`` (k-means
centroids, optical compression, bootstrap graph). Each cell only ``finish_build()``es the build
(diffusion, splitting, energy Laplacian, lambdas) and ranks every query exactly. Cosine
(and FAISS IndexFlatIP when importable) are ranked once on the same queries as baselines.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..devices import resolve_device
from ..errors import InputError
from ..index.ann import faiss_module
from ..index.build import EnergyIndex, Prepared, finish_build, prepare_build
from ..index.embed import embed_corpus, encode_texts
from ..index.inputs import sample_rows
from ..index.search import Searcher, SearchParams, topk_rows
from ..models.sentence import sentence_model_name
from ..paths import CVE_CORPUS
from . import grid as grid_mod
from .config import DiffusionConfig
from .metrics import HEAD, METRIC_NAMES, TAIL, TrecEvaluator, compare, summarize_metrics
from .relevance import LabelledCorpus, QuerySplit, Relevance, build_relevance, drop_self, load_labelled, split_by_label

QUERY_BLOCK_ELEMENTS = 1 << 25  # queries x items scored at once (128 MB per float32 matrix): bounded memory at any N


def query_block(n_items: int, most: int = 512) -> int:
    """Queries per block so that a queries x items matrix stays within QUERY_BLOCK_ELEMENTS."""
    return max(1, min(most, QUERY_BLOCK_ELEMENTS // max(1, n_items)))


@dataclass
class SweepSetup:
    """Everything the cells share."""

    cfg: DiffusionConfig
    corpus: LabelledCorpus
    vectors: np.ndarray
    relevance: Relevance
    prepared: Prepared
    device: torch.device
    fingerprint: str
    split: QuerySplit  # tuning vs held-out queries, by label: every choice is made on tune, reported on held
    evaluator: TrecEvaluator
    info: dict = field(default_factory=dict)

    @property
    def held_clusters(self) -> np.ndarray:
        """Primary label of each held-out query: the unit of the cluster bootstrap."""
        return self.relevance.primary[self.split.held]

    @property
    def query_ids(self) -> list[str]:
        return [self.corpus.ids[i] for i in self.relevance.queries]

    def query_vectors(self) -> torch.Tensor:
        return torch.from_numpy(self.vectors[self.relevance.queries]).to(self.device)


def corpus_path(cfg: DiffusionConfig) -> Path:
    return Path(cfg.sweep.corpus) if cfg.sweep.corpus else CVE_CORPUS


def _fingerprint(cfg: DiffusionConfig, corpus: LabelledCorpus, relevance: Relevance) -> str:
    """Hash of everything a cell's numbers depend on except eta and steps."""
    digest = hashlib.sha256()
    for record_id, labels in zip(corpus.ids, corpus.labels):
        digest.update(f"{record_id}\x00{'|'.join(labels)}\x01".encode("utf-8"))
    digest.update(relevance.queries.tobytes())
    if corpus.vectors is not None:
        digest.update(corpus.vectors.tobytes())
    setup = {
        "tune_fraction": cfg.tuning.tune_fraction,
        "model": sentence_model_name(cfg.embed.model),
        "build": cfg.build.model_dump(mode="json", exclude={"eta", "steps"}),
        "search": cfg.search.model_dump(mode="json"),
        "depth": cfg.sweep.depth,
        "bootstrap": cfg.sweep.bootstrap,
        "seed": cfg.runtime.seed,
        "metrics": list(METRIC_NAMES),  # cells recorded with other metrics are evaluated again
    }
    digest.update(json.dumps(setup, sort_keys=True).encode("utf-8"))
    return digest.hexdigest()[:24]


@dataclass
class SweepInputs:
    """The sampled corpus and its relevance judgements: what a user's corpus or config can get wrong."""

    corpus: LabelledCorpus
    records_read: int
    relevance: Relevance


def read_sweep_inputs(cfg: DiffusionConfig) -> SweepInputs:
    """Read and sample the corpus and judge relevance (cheap; every user mistake raises InputError here)."""
    sweep = cfg.sweep
    corpus = load_labelled(corpus_path(cfg), sweep.id_field, sweep.text_field, sweep.label_field, sweep.vector_field)
    records_read = len(corpus)
    corpus = corpus.subset(sample_rows(len(corpus), sweep.limit, cfg.runtime.seed))
    if len(corpus) < sweep.depth + 1:
        raise InputError(
            f"the sweep ranks {sweep.depth} results per query plus the query itself, but the corpus has only "
            f"{len(corpus)} records; lower sweep.depth (at least 20) or raise sweep.limit"
        )
    return SweepInputs(corpus, records_read, build_relevance(corpus.labels, sweep.num_queries, cfg.runtime.seed))


def setup_sweep(
    cfg: DiffusionConfig, progress: Optional[Callable[[int], None]] = None, inputs: Optional[SweepInputs] = None
) -> SweepSetup:
    """Embed the corpus (read here unless ``inputs`` is given) and run the diffusion-free build stages."""
    seed = cfg.runtime.seed
    inputs = inputs if inputs is not None else read_sweep_inputs(cfg)
    corpus, records_read, relevance = inputs.corpus, inputs.records_read, inputs.relevance
    device = resolve_device(cfg.runtime.device)
    started = time.perf_counter()
    if corpus.vectors is not None:  # vectors with labels: nothing to embed
        vectors, cache_hit = corpus.vectors, None
    else:
        vectors, cache_hit = embed_corpus(
            corpus.texts, cfg.embed.model, str(device), cfg.embed.batch_size, cfg.embed.cache_dir, progress
        )
    embed_seconds = time.perf_counter() - started
    split = split_by_label(relevance, cfg.tuning.tune_fraction, seed)
    evaluator = TrecEvaluator(
        [relevance.relevant_rows(p) for p in range(relevance.queries.size)], labels=relevance.incidence
    )
    started = time.perf_counter()
    prepared = prepare_build(vectors, cfg.build, corpus.ids, seed, device)
    info = {
        "corpus": str(corpus_path(cfg)),
        "records_read": records_read,
        "items": len(corpus),
        "labelled_items": int(relevance.incidence.any(axis=1).sum()),
        "queries": int(relevance.queries.size),
        "tune_queries": int(split.tune.size),
        "held_out_queries": int(split.held.size),
        "mixed_label_queries_left_out": split.mixed,
        "tune_labels": split.tune_labels,
        "held_out_labels": split.held_labels,
        "held_out_clusters": int(np.unique(relevance.primary[split.held]).size),
        "mean_relevant_per_query": float(relevance.n_relevant.mean()),
        "embed_seconds": round(embed_seconds, 3),
        "embedding_cache_hit": cache_hit,
        "prepare_seconds": round(time.perf_counter() - started, 3),
        "prepare_stats": prepared.stats,
        "device": str(device),
    }
    return SweepSetup(
        cfg, corpus, vectors, relevance, prepared, device, _fingerprint(cfg, corpus, relevance), split, evaluator, info
    )


# ---------------------------------------------------------------------------------------
# Ranking and scoring


def evaluate_ranking(
    setup: SweepSetup, ranked: np.ndarray, positions: Optional[np.ndarray] = None
) -> dict[str, np.ndarray]:
    """Per-query metrics (trec_eval) of ranked item rows (queries x depth+1), the query itself removed.

    ``positions`` selects a subset of the queries (rows of ``ranked`` follow it).
    """
    relevance = setup.relevance
    positions = np.arange(relevance.queries.size) if positions is None else positions
    ranked = drop_self(ranked, relevance.queries[positions], setup.cfg.sweep.depth)
    return setup.evaluator.evaluate(ranked, positions)


def rank_batched(rank: Callable[[torch.Tensor], np.ndarray], queries: torch.Tensor, n_items: int) -> np.ndarray:
    block = query_block(n_items)
    return np.concatenate([rank(queries[start : start + block]) for start in range(0, queries.shape[0], block)])


def search_params(setup: SweepSetup, mode: str) -> SearchParams:
    fields = setup.cfg.search.model_dump()
    fields.update(k=setup.cfg.sweep.depth + 1, mode=mode)  # one extra: the query finds itself
    return SearchParams(**fields)


def _record(
    setup: SweepSetup, per_query: dict[str, np.ndarray], build_seconds: float, search_seconds: float, **extra
) -> dict:
    """A result row: means and both intervals over the HELD-OUT queries; per-query values of all queries."""
    held = setup.split.held
    row = summarize_metrics(
        {name: values[held] for name, values in per_query.items()},
        setup.cfg.sweep.bootstrap,
        setup.cfg.runtime.seed,
        setup.held_clusters,
    )
    row.update(
        build_seconds=round(build_seconds, 4),
        search_seconds=round(search_seconds, 4),
        n_queries=int(held.size),
        n_items=len(setup.corpus),
        per_query={name: [round(float(v), 6) for v in per_query[name]] for name in METRIC_NAMES},
        **extra,
    )
    return row


def finish_cell(setup: SweepSetup, cell: grid_mod.DiffusionCell) -> tuple[EnergyIndex, float]:
    started = time.perf_counter()
    index = finish_build(setup.prepared, eta=cell.eta, steps=cell.steps)
    return index, time.perf_counter() - started


def evaluate_cell(setup: SweepSetup, cell: grid_mod.DiffusionCell) -> dict:
    """finish_build() one cell and rank every query by exact energy search."""
    index, build_seconds = finish_cell(setup, cell)
    searcher = Searcher(index)
    params = search_params(setup, "energy")
    started = time.perf_counter()
    ranked = rank_batched(lambda q: topk_rows(searcher, q, params), setup.query_vectors(), len(setup.corpus))
    search_seconds = time.perf_counter() - started
    stats = {key: index.stats[key] for key in ("split_nodes", "final_centroids", "feature_edges") if key in index.stats}
    return _record(
        setup, evaluate_ranking(setup, ranked), build_seconds, search_seconds, stats=stats, warnings=index.warnings
    )


def evaluate_cosine(setup: SweepSetup) -> dict:
    """Brute-force cosine over the same vectors and queries (no energy build involved)."""
    started = time.perf_counter()
    unit = torch.nn.functional.normalize(torch.from_numpy(setup.vectors).to(setup.device), dim=1)
    build_seconds = time.perf_counter() - started
    k = setup.cfg.sweep.depth + 1
    started = time.perf_counter()
    ranked = rank_batched(
        lambda q: torch.topk(torch.nn.functional.normalize(q, dim=1) @ unit.T, k, dim=1).indices.cpu().numpy(),
        setup.query_vectors(),
        len(setup.corpus),
    )
    return _record(setup, evaluate_ranking(setup, ranked), build_seconds, time.perf_counter() - started)


def faiss_available() -> bool:
    try:
        faiss_module()
    except InputError:
        return False
    return True


def evaluate_faiss(setup: SweepSetup) -> dict:
    """FAISS IndexFlatIP on unit vectors: exact inner product, i.e. cosine through another library."""
    faiss = faiss_module()
    unit = setup.vectors / np.linalg.norm(setup.vectors, axis=1, keepdims=True)
    started = time.perf_counter()
    index = faiss.IndexFlatIP(unit.shape[1])
    index.add(np.ascontiguousarray(unit, dtype=np.float32))
    build_seconds = time.perf_counter() - started
    queries = np.ascontiguousarray(unit[setup.relevance.queries], dtype=np.float32)
    started = time.perf_counter()
    _, ranked = index.search(queries, setup.cfg.sweep.depth + 1)
    return _record(setup, evaluate_ranking(setup, ranked), build_seconds, time.perf_counter() - started)


# ---------------------------------------------------------------------------------------
# The sweep


@dataclass
class SweepResult:
    setup: SweepSetup
    rows: list[dict]
    etas: list[float]
    steps: list[int]
    sweep_seconds: float
    cells_evaluated: int
    cells_skipped: int


def run_sweep(
    setup: SweepSetup,
    etas: list[float],
    steps: list[int],
    out_dir: Path,
    resume: bool = False,
    on_cell: Optional[Callable[[dict, bool], None]] = None,
) -> SweepResult:
    """Baselines once, then every grid cell; ``cells.jsonl`` and ``sweep.csv`` updated after each."""
    started = time.perf_counter()
    log = grid_mod.open_cell_log(out_dir / "cells.jsonl", setup.fingerprint, resume)
    counts = {"evaluated": 0, "skipped": 0}

    def done(record: dict, skipped: bool) -> None:
        counts["skipped" if skipped else "evaluated"] += 1
        grid_mod.write_sweep_csv(out_dir / "sweep.csv", grid_mod.ordered_rows(log))
        if on_cell:
            on_cell(record, skipped)

    baselines = [("cosine", evaluate_cosine)]
    if setup.cfg.sweep.faiss and faiss_available():
        baselines.append(("faiss", evaluate_faiss))
    for method, evaluate in baselines:
        if log.done((method, None, None)):
            done(log.records[(method, None, None)], True)
            continue
        record = {"method": method, "eta": None, "steps": None, **evaluate(setup)}
        log.add(record)
        done(record, False)
    grid_mod.run_cells(log, grid_mod.grid_cells(etas, steps), lambda cell: evaluate_cell(setup, cell), done)
    wanted = {("cosine", None, None), ("faiss", None, None)} | {c.key() for c in grid_mod.grid_cells(etas, steps)}
    rows = [row for row in grid_mod.ordered_rows(log) if grid_mod.result_key(row) in wanted]
    return SweepResult(setup, rows, etas, steps, time.perf_counter() - started, counts["evaluated"], counts["skipped"])


def baseline_row(rows: list[dict], method: str = "cosine") -> Optional[dict]:
    return next((row for row in rows if row["method"] == method), None)


def _versus_cosine(setup: SweepSetup, row: dict, cosine: Optional[dict], name: str) -> dict:
    """Held-out mean of ``row`` for one metric and, with a cosine row, the paired difference with both intervals."""
    held = setup.split.held
    entry = {"value": row[name], "low": row[f"{name}_low"], "high": row[f"{name}_high"]}
    if cosine is not None:
        diff = compare(
            np.asarray(row["per_query"][name])[held],
            np.asarray(cosine["per_query"][name])[held],
            setup.cfg.sweep.bootstrap,
            setup.cfg.runtime.seed,
            setup.held_clusters,
        )
        entry.update(
            cosine=cosine[name],
            vs_cosine=diff,
            beats_cosine=diff["cluster_low"] > 0,  # the whole cluster interval above zero
            worse_than_cosine=diff["cluster_high"] < 0,
        )
    return entry


def best_cells(result: SweepResult) -> dict[str, dict]:
    """Per metric: the energy cell best on the TUNING queries, scored on the held-out ones against cosine."""
    setup = result.setup
    cosine = baseline_row(result.rows)
    energy = [row for row in result.rows if row["method"] == "energy"]
    tune = setup.split.tune
    best = {}
    for name in METRIC_NAMES:
        if not energy:
            break
        top = max(
            energy,
            key=lambda row: (float(np.mean(np.asarray(row["per_query"][name])[tune])), -row["eta"], -row["steps"]),
        )
        best[name] = {"eta": top["eta"], "steps": top["steps"], **_versus_cosine(setup, top, cosine, name)}
    return best


def default_cell(result: SweepResult) -> Optional[dict]:
    """The cell of the configured defaults (build.eta, build.steps), when the grid has it: every metric vs cosine."""
    setup = result.setup
    build = setup.cfg.build
    row = next(
        (r for r in result.rows if r["method"] == "energy" and r["eta"] == build.eta and r["steps"] == build.steps),
        None,
    )
    if row is None:
        return None
    cosine = baseline_row(result.rows)
    return {
        "eta": build.eta,
        "steps": build.steps,
        "metrics": {name: _versus_cosine(setup, row, cosine, name) for name in METRIC_NAMES},
    }


def _public(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("per_query", "fingerprint")}


def head_and_tail(result: SweepResult) -> Optional[dict]:
    """The claim that energy keeps the head (MRR, P@1) and reaches into the tail (recall@20/50/100, the
    top 20's distinct labels): the configured cell against cosine, FAISS beside it, on the held-out queries."""
    default = default_cell(result)
    if default is None:
        return None
    faiss = baseline_row(result.rows, "faiss")
    return {
        side: {name: {**default["metrics"][name], **({"faiss": faiss[name]} if faiss else {})} for name in names}
        for side, names in (("head", HEAD), ("tail", TAIL))
    }


def summary_document(result: SweepResult, tuning: Optional[dict] = None) -> dict:
    setup = result.setup
    warnings = [w for row in result.rows for w in row.get("warnings", [])]  # e.g. the published formula
    if setup.cfg.sweep.faiss and not faiss_available():
        warnings.append(
            "sweep.faiss=true but faiss is not installed (pip install faiss-cpu); the FAISS baseline is skipped"
        )
    document = {
        "setup": setup.info,
        "grid": {"eta": result.etas, "steps": result.steps},
        "search": setup.cfg.search.model_dump(mode="json"),
        "baselines": {row["method"]: _public(row) for row in result.rows if row["method"] != "energy"},
        "default": default_cell(result),
        "head_tail": head_and_tail(result),
        "best": best_cells(result),
        "warnings": list(dict.fromkeys(warnings)),
        "evaluation": "every mean and interval is over the held-out queries (labels never used for a choice); "
        "best cells and tuned weights are chosen on the tuning queries. low/high: queries resampled; "
        "cluster_low/cluster_high: primary-label clusters resampled (the honest interval)",
        "timing": {
            "sweep_seconds": round(result.sweep_seconds, 3),
            "cells_evaluated": result.cells_evaluated,
            "cells_skipped": result.cells_skipped,
            "cell_build_seconds_total": round(
                sum(r["build_seconds"] for r in result.rows if r["method"] == "energy"), 3
            ),
            "cell_search_seconds_total": round(
                sum(r["search_seconds"] for r in result.rows if r["method"] == "energy"), 3
            ),
        },
    }
    if tuning is not None:
        document["tuning"] = tuning
    return document


# ---------------------------------------------------------------------------------------
# Qualitative table: the text queries


def text_query_table(setup: SweepSetup, cell: grid_mod.DiffusionCell, k: Optional[int] = None) -> list[dict]:
    """Top-k of each configured text query by energy (at ``cell``) and by cosine, with labels."""
    cfg = setup.cfg
    texts = list(cfg.sweep.text_queries)
    if not texts or setup.corpus.texts is None:  # a corpus of vectors has no texts to show
        return []
    k = min(k or cfg.sweep.show_k, len(setup.corpus))
    queries = torch.from_numpy(encode_texts(texts, cfg.embed.model, str(setup.device), cfg.embed.batch_size)).to(
        setup.device
    )
    searcher = Searcher(finish_cell(setup, cell)[0])
    out = []
    for mode in ("energy", "cosine"):
        params = SearchParams(**{**cfg.search.model_dump(), "k": k, "mode": mode})
        ranked = topk_rows(searcher, queries, params)
        for query, rows in zip(texts, ranked):
            for rank, row in enumerate(rows.tolist(), start=1):
                out.append(
                    {
                        "query": query,
                        "method": mode,
                        "eta": cell.eta if mode == "energy" else None,
                        "steps": cell.steps if mode == "energy" else None,
                        "rank": rank,
                        "id": setup.corpus.ids[row],
                        "labels": list(setup.corpus.labels[row]),
                        "text": setup.corpus.texts[row],
                    }
                )
    return out
