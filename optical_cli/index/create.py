"""Building an index into a directory: the energy build, the ANN structure and the store (files or Milvus).

``build-energy`` runs ``create_index`` inside its run directory; the manifest fields it returns
are merged into the run's manifest (the commit point, written last).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from . import milvus
from .ann import build_ann, choose_kind
from .build import EnergyIndex, build
from .config import IndexConfig
from .manifest import MODEL_FILE, initial_state, model_fields, save_model
from .pipeline import Corpus
from .store import save_index


def check_store(cfg: IndexConfig) -> None:
    """What the store needs, checked before a run directory or an embedding exists."""
    if cfg.store.backend == "milvus":
        milvus.require_client()


def summary(index: EnergyIndex, corpus: Corpus, fields: dict, seconds: dict, cfg: IndexConfig, path: Path) -> dict:
    """What build-energy reports (stderr table, --json)."""
    return {
        "index": str(path),
        "input": corpus.source,
        "items": len(index),
        "dim": index.dim,
        **corpus.info,
        **index.stats,
        **index.scales.as_dict(),
        "dirichlet_scale": index.dirichlet_scale,
        "dirichlet_beta": index.dirichlet_beta,
        "store": cfg.store.backend,
        "ann": (fields["ann"] or {}).get("kind", "none"),
        **seconds,
    }


def create_index(
    cfg: IndexConfig, corpus: Corpus, directory: Path, device: torch.device, progress: Optional[Callable] = None
) -> tuple[EnergyIndex, dict[str, Any], dict[str, float]]:
    """Build the energy index of ``corpus`` and store it in ``directory``: (index, manifest fields, seconds)."""
    started = time.perf_counter()
    index = build(corpus.vectors, cfg.build, corpus.ids, cfg.runtime.seed, device)
    index.model, index.texts, index.labels = corpus.model, corpus.texts, corpus.labels
    seconds = {"build_seconds": time.perf_counter() - started}
    started = time.perf_counter()
    if cfg.store.backend == "milvus":
        kind = choose_kind(len(index), cfg.build.ann, cfg.build.ann_ivf_from)
        store = milvus.write_build(index, directory, cfg.store, kind, progress)
        save_model(index, directory)
        fields = {
            **model_fields(index),
            **initial_state(len(index), store),
            "pending_deletes": [],
            "ann": {"kind": store["index_type"].lower(), "items": len(index), "in": "milvus"},
            "files": [MODEL_FILE],
        }
        seconds["store_seconds"] = time.perf_counter() - started
        return index, fields, seconds
    metric = index.dirichlet_metric(index.vectors.device)
    index.ann = build_ann(index.vectors, metric, cfg.build.ann, cfg.build.ann_ivf_from)
    seconds["ann_seconds"] = time.perf_counter() - started
    started = time.perf_counter()
    fields = save_index(index, directory, manifest=False)
    seconds["store_seconds"] = time.perf_counter() - started
    return index, fields, seconds
