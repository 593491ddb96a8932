"""Changing an index without a rebuild: ``optical index add`` and ``optical index delete``.

A new item needs only what the build stored: its E, G, x^T L x and lambda come from the feature
Laplacian and the lambda scales (``build.item_terms``, the code path of the build itself), so an
item added later gets exactly the values a build that kept the same energy model gives it; its
Dirichlet scale and beta are the index's. What an add cannot do is move the energy model: the
centroids, the feature graph and the scales stay those of the build's items, which is why the
index counts what changed since the build and says when a rebuild is due (``store.rebuild_after``).

Every change reads and checks its whole input before anything is written, runs under the
index's writer lock, and commits through the manifest (store.py, milvus.py): a change killed at
any moment leaves the index as it was before or after it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..devices import resolve_device
from ..errors import InputError
from . import milvus
from . import store as files
from .ann import build_ann
from .build import EnergyIndex, item_terms
from .config import IndexConfig
from .inputs import show_ids
from .manifest import backend_of, changed_share, read_manifest, read_model, writer_lock
from .pipeline import Corpus, corpus_vectors


@dataclass
class ChangeReport:
    index: str
    operation: str  # add | delete
    added: int
    deleted: int  # deleted outright, or replaced by --upsert
    count: int  # live items after the change
    generation: int
    added_since_build: int
    deleted_since_build: int
    changed_share: float  # (added + deleted since the build) / items of the build
    rebuild_after: float
    rebuild_due: bool
    seconds: float
    backend: str

    def as_dict(self) -> dict:
        return asdict(self)


def _change_report(directory: Path, operation: str, state: dict, added: int, deleted: int, cfg: IndexConfig, started):
    share = changed_share(state)
    return ChangeReport(
        index=str(directory),
        operation=operation,
        added=added,
        deleted=deleted,
        count=int(state["count"]),
        generation=int(state["generation"]),
        added_since_build=int(state.get("added_since_build", 0)),
        deleted_since_build=int(state.get("deleted_since_build", 0)),
        changed_share=round(share, 6),
        rebuild_after=cfg.store.rebuild_after,
        rebuild_due=share >= cfg.store.rebuild_after,
        seconds=round(time.perf_counter() - started, 4),
        backend=backend_of(state),
    )


def live_ids(directory: Path, manifest: dict, cfg: IndexConfig) -> tuple[list[str], np.ndarray]:
    if backend_of(manifest) == "milvus":
        return milvus.live_rows(directory, manifest, cfg.store.open_timeout)
    return files.live_rows(directory, manifest)


def read_new_items(
    directory: Path, manifest: dict, cfg: IndexConfig, path: Path, progress: Optional[Callable] = None
) -> Corpus:
    """Every record of ``path`` (no sampling), embedded with the index's own model, validated."""
    cfg = cfg.model_copy(deep=True)
    cfg.input.limit = None
    model = manifest.get("embedding_model")
    if model is not None:
        cfg.embed.model = model
    corpus = corpus_vectors(cfg, path, progress)
    if corpus.texts is not None and model is None:
        raise InputError(
            f"{path}: texts, but {directory} was built from vectors (no embedding model); add vectors of the same kind"
        )
    if corpus.vectors.shape[1] != int(manifest["dim"]):
        raise InputError(
            f"{path}: vectors of dimension {corpus.vectors.shape[1]}, the index has {manifest['dim']}; "
            "add vectors made the way the index's were"
        )
    return corpus


def new_items(model: EnergyIndex, corpus: Corpus, device: torch.device) -> EnergyIndex:
    """The items of ``corpus`` with the terms and lambdas of the stored energy model (no rebuild)."""
    vectors = torch.from_numpy(np.ascontiguousarray(corpus.vectors, dtype=np.float32)).to(device)
    terms, lambdas = item_terms(vectors, model.graph, model.scales, int(model.params.get("block_size", 8192)))
    return EnergyIndex(
        ids=list(corpus.ids),
        vectors=vectors,
        graph=model.graph,
        lambdas=lambdas,
        rayleigh=terms.rayleigh,
        dispersion=terms.dispersion,
        dirichlet=terms.dirichlet,
        norm=terms.norm,
        scales=model.scales,
        dirichlet_scale=model.dirichlet_scale,
        dirichlet_beta=model.dirichlet_beta,
        params=model.params,
        model=model.model,
        texts=corpus.texts,
        labels=corpus.labels,
    )


def add_items(
    directory: str | Path,
    cfg: IndexConfig,
    path: Path,
    upsert: bool = False,
    progress: Optional[Callable] = None,
) -> ChangeReport:
    """Add every record of ``path`` to the index in ``directory``; ids already there are an error unless ``upsert``."""
    started = time.perf_counter()
    directory = Path(directory)
    corpus = read_new_items(directory, read_manifest(directory), cfg, path, progress)
    device = resolve_device(cfg.runtime.device)
    with writer_lock(directory):
        manifest = read_manifest(directory)  # again, under the lock: the state this change builds on
        ids, rows = live_ids(directory, manifest, cfg)
        row_of = dict(zip(ids, rows.tolist()))
        existing = [i for i in corpus.ids if i in row_of]
        if existing and not upsert:
            raise InputError(
                f"{path}: ids already in the index: {show_ids(existing)}; pass --upsert to replace them, or "
                "`optical index delete` them first"
            )
        replaced = np.asarray(sorted(row_of[i] for i in existing), dtype=np.int64)
        model = read_model(directory, manifest, device)
        items = new_items(model, corpus, device)
        if backend_of(manifest) == "milvus":
            state = milvus.append(directory, manifest, items, replaced, cfg.store.open_timeout)
        else:
            files.remove_orphans(directory, manifest)
            if manifest.get("ann") is not None:  # the segment's own FAISS structure, of the kind the build chose
                kind, ivf_from = str(model.params.get("ann", "auto")), int(model.params.get("ann_ivf_from", 500_000))
                items.ann = build_ann(items.vectors, model.dirichlet_metric(device), kind, ivf_from)
            state = files.append_segment(directory, manifest, items, replaced)
    return _change_report(directory, "add", state, len(items), int(replaced.size), cfg, started)


def delete_items(directory: str | Path, cfg: IndexConfig, ids: list[str]) -> ChangeReport:
    """Delete the items with ``ids``; an id not in the index is an error and nothing changes."""
    started = time.perf_counter()
    directory = Path(directory)
    wanted = list(dict.fromkeys(i for i in ids if i))
    if not wanted:
        raise InputError("--ids: no ids given; pass one or more ids, e.g. --ids CVE-2021-0001,CVE-2021-0002")
    with writer_lock(directory):
        manifest = read_manifest(directory)
        live, rows = live_ids(directory, manifest, cfg)
        row_of = dict(zip(live, rows.tolist()))
        unknown = [i for i in wanted if i not in row_of]
        if unknown:
            raise InputError(f"--ids: not in the index: {show_ids(unknown)}; nothing was deleted")
        doomed = np.asarray(sorted(row_of[i] for i in wanted), dtype=np.int64)
        if backend_of(manifest) == "milvus":
            state = milvus.delete(directory, manifest, doomed, cfg.store.open_timeout)
        else:
            files.remove_orphans(directory, manifest)
            state = files.delete_rows(directory, manifest, doomed)
    return _change_report(directory, "delete", state, 0, int(doomed.size), cfg, started)
