"""Index directory: the energy model, the items (our files or a Milvus collection) and manifest.json.

``manifest.json`` is the commit point of every change. The files backend keeps the items of the
build in ``lambdas.parquet``, ``vectors.npy`` and ``ann.faiss`` (optional), each later
``optical index add`` in a new, immutable segment directory ``segments/NNNNNN/`` with the same
files, and the deleted rows in ``deleted-NNNNNN.npy``; the feature Laplacian (``laplacian.npz``)
never changes after the build. An add or delete writes its new files first and the manifest
(which names them, generation g + 1) last, by an atomic rename, so a process killed at any
moment leaves the index of generation g or of g + 1, and a reader that read the manifest of
generation g finds every file it names (files of the generation before are kept one commit
longer). Rows are numbered once, in order of arrival (build, then each segment): a row number
never changes and is never reused.

The manifest may also be a run manifest (``optical index build-energy`` merges the index fields
into it); then its status must be ok. Format versions 2 and 3 (no segments, no deletions) are
read as generation 0.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..artifacts import atomic_path, atomic_write_json, remove_stale_temporaries
from ..errors import InputError
from . import ann as ann_mod
from . import milvus
from .build import EnergyIndex
from .manifest import (
    MODEL_FILE,
    backend_of,
    commit_manifest,
    fail,
    initial_state,
    model_fields,
    read_manifest,
    read_model,
    save_model,
)

ITEM_FILES = ("lambdas.parquet", "vectors.npy")
SEGMENTS = "segments"
# On-disk column names (kept from format 2, so older indexes stay readable) -> EnergyIndex fields.
STORED_COLUMNS = {"lambda": "lambdas", "E": "rayleigh", "G": "dispersion", "xLx": "dirichlet", "norm": "norm"}


# ---------------------------------------------------------------------------------------
# Files backend: item parts (the build's, then one per segment)


def write_items(index: EnergyIndex, directory: Path, with_ann: bool) -> list[str]:
    """The items of ``index`` as one part in ``directory`` (the build's, or a segment); returns the file names."""
    directory.mkdir(parents=True, exist_ok=True)
    columns = {"id": pa.array(index.ids, pa.string())}
    for column, name in STORED_COLUMNS.items():
        columns[column] = getattr(index, name).cpu().numpy().astype(np.float64)
    table = pa.table(columns)
    if index.texts is not None:
        table = table.append_column("text", pa.array(index.texts, pa.string()))
    if index.labels is not None:
        table = table.append_column("labels", pa.array(index.labels, pa.list_(pa.string())))
    with atomic_path(directory / "lambdas.parquet") as tmp:
        pq.write_table(table, tmp)
    with atomic_path(directory / "vectors.npy") as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, index.vectors.cpu().numpy().astype(np.float32), allow_pickle=False)
    if with_ann and index.ann is not None:
        ann_mod.save_ann(index.ann, directory / ann_mod.FILE)
        return list(ITEM_FILES) + [ann_mod.FILE]
    if (directory / ann_mod.FILE).exists():
        (directory / ann_mod.FILE).unlink()  # an older build's structure would not match these items
    return list(ITEM_FILES)


@dataclass
class Part:
    """One part's items as read from disk (vectors memory-mapped)."""

    table: Any  # pandas DataFrame of lambdas.parquet
    vectors: np.ndarray
    ann: Optional[Any]


def read_part(directory: Path, root: Path, count: int, dim: int, names: list[str]) -> Part:
    for name in names:
        if not (directory / name).is_file():
            raise fail(root, f"{(directory / name).relative_to(root)} is missing")
    try:
        table = pq.read_table(directory / "lambdas.parquet").to_pandas()
        # memory-mapped (copy-on-write): ANN search touches only its candidates' rows
        vectors = np.load(directory / "vectors.npy", allow_pickle=False, mmap_mode="c")
        ann = ann_mod.load_ann(directory / ann_mod.FILE) if ann_mod.FILE in names else None
    except Exception as exc:  # noqa: BLE001 - any parse failure means a damaged file
        raise fail(root, f"a file is damaged: {type(exc).__name__}: {exc}") from None
    where = directory.relative_to(root) / "lambdas.parquet" if directory != root else "lambdas.parquet"
    missing = {"id", *STORED_COLUMNS} - set(table.columns)
    if missing:
        raise fail(root, f"{where} lacks columns {sorted(missing)}")
    if vectors.ndim != 2 or vectors.shape != (count, dim):
        raise fail(root, f"vectors.npy has shape {vectors.shape}, manifest says ({count}, {dim})")
    if len(table) != count:
        raise fail(root, f"{where} has {len(table)} rows, manifest says {count}")
    if ann is not None and (ann.ntotal != count or ann.d != dim):
        raise fail(root, f"{ann_mod.FILE} holds {ann.ntotal} x {ann.d}, manifest says ({count}, {dim})")
    return Part(table, vectors, ann)


def _stored_parts(directory: Path, manifest: dict[str, Any]) -> list[tuple[Path, int, list[str]]]:
    """(directory, rows, files) of every part, the build's first."""
    base_count = int(manifest.get("base_count", manifest.get("built_count", manifest["count"])))
    base_files = [n for n in manifest.get("files", ITEM_FILES) if n != MODEL_FILE]
    parts = [(directory, base_count, base_files)]
    for segment in manifest.get("segments", []):
        parts.append((directory / segment["name"], int(segment["rows"]), list(segment["files"])))
    return parts


def deleted_rows(directory: Path, manifest: dict[str, Any]) -> np.ndarray:
    """Sorted row numbers of the deleted items (empty when none)."""
    name = manifest.get("deleted")
    if not name:
        return np.zeros(0, np.int64)
    try:
        return np.load(directory / name, allow_pickle=False).astype(np.int64)
    except Exception as exc:  # noqa: BLE001 - any parse failure means a damaged file
        raise fail(directory, f"{name} is missing or damaged: {type(exc).__name__}: {exc}") from None


def load_files(directory: Path, manifest: dict[str, Any], device: str | torch.device = "cpu") -> EnergyIndex:
    """Every live item of a files-backend index, in row order, with the energy model."""
    model = read_model(directory, manifest, device)
    dim = model.dim
    parts = [read_part(path, directory, rows, dim, names) for path, rows, names in _stored_parts(directory, manifest)]
    tables = [part.table for part in parts]
    device = torch.device(device)
    if len(parts) == 1:
        vectors = parts[0].vectors
    else:
        vectors = np.concatenate([part.vectors for part in parts])

    def column(name: str) -> torch.Tensor:
        return torch.from_numpy(np.concatenate([t[name].to_numpy(np.float32) for t in tables])).to(device)

    def strings(name: str, empty: Any) -> Optional[list]:
        if all(name not in t.columns for t in tables):
            return None
        out: list = []
        for t in tables:
            out.extend([_plain(v) for v in t[name]] if name in t.columns else [empty] * len(t))
        return out

    index = model.with_items(
        [str(i) for t in tables for i in t["id"]],
        torch.from_numpy(vectors.astype(np.float32, copy=False)).to(device),
        {name: column(col) for col, name in STORED_COLUMNS.items()},
        strings("text", ""),
        strings("labels", []),
    )
    dead = deleted_rows(directory, manifest)
    anns = [part.ann for part in parts]
    if len(parts) == 1 and dead.size == 0:
        index.ann = anns[0]
        return index
    total = len(index)
    alive = np.ones(total, bool)
    alive[dead[dead < total]] = False
    live = np.flatnonzero(alive)
    index = index.select(live) if dead.size else index
    if anns[0] is not None and all(a is not None for a in anns):
        position = np.full(total, -1, np.int64)  # row -> its place among the live items
        position[live] = np.arange(live.size)
        bounds = np.cumsum([0] + [part.vectors.shape[0] for part in parts])
        index.ann = ann_mod.Segmented(
            [(a, position[bounds[i] : bounds[i + 1]]) for i, a in enumerate(anns)],
        )
    return index


def _plain(value: Any) -> Any:
    return [str(v) for v in value] if isinstance(value, (list, np.ndarray)) else str(value)


# ---------------------------------------------------------------------------------------
# Files backend: the build, and changes


def save_index(index: EnergyIndex, directory: str | Path, manifest: bool = True) -> dict[str, Any]:
    """Write a freshly built index into ``directory`` (files backend); returns the manifest fields."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = write_items(index, directory, with_ann=True)
    save_model(index, directory)
    fields = {
        **model_fields(index),
        **initial_state(len(index), {"backend": "files"}),
        "base_count": len(index),
        "ann": ann_mod.describe(index.ann) if index.ann is not None else None,
        "files": files + [MODEL_FILE],
    }
    if manifest:
        atomic_write_json(directory / "manifest.json", fields)
    return fields


def remove_orphans(directory: Path, manifest: dict[str, Any]) -> None:
    """What killed writers left: temporaries, segments no manifest names, deletion lists two commits old."""
    remove_stale_temporaries(directory)
    named = {segment["name"] for segment in manifest.get("segments", [])}
    if (directory / SEGMENTS).is_dir():
        for entry in (directory / SEGMENTS).iterdir():
            if f"{SEGMENTS}/{entry.name}" not in named:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    keep = {manifest.get("deleted"), manifest.get("previous_deleted")}
    for entry in directory.glob("deleted-*.npy"):
        if entry.name not in keep:
            entry.unlink()


def append_segment(directory: Path, manifest: dict[str, Any], items: EnergyIndex, replaced: np.ndarray) -> dict:
    """Write ``items`` as a new segment (rows continue the numbering) and delete ``replaced`` rows, atomically.

    Returns the committed manifest."""
    generation = int(manifest["generation"]) + 1
    name = f"{SEGMENTS}/{generation:06d}"
    with_ann = manifest.get("ann") is not None
    files = write_items(items, directory / name, with_ann)
    state = _with_deleted(directory, manifest, replaced, generation)
    segment = {"name": name, "rows": len(items), "first_row": int(manifest["next_row"]), "files": files}
    state.update(
        generation=generation,
        segments=list(manifest.get("segments", [])) + [segment],
        next_row=int(manifest["next_row"]) + len(items),
        count=int(manifest["count"]) + len(items) - int(replaced.size),
        added_since_build=int(manifest.get("added_since_build", 0)) + len(items),
    )
    commit_manifest(directory, state)
    return state


def delete_rows(directory: Path, manifest: dict[str, Any], rows: np.ndarray) -> dict:
    """Mark ``rows`` deleted, atomically; returns the committed manifest."""
    generation = int(manifest["generation"]) + 1
    state = _with_deleted(directory, manifest, rows, generation)
    state.update(generation=generation, count=int(manifest["count"]) - int(rows.size))
    commit_manifest(directory, state)
    return state


def _with_deleted(directory: Path, manifest: dict[str, Any], rows: np.ndarray, generation: int) -> dict:
    """A copy of ``manifest`` whose deletion list (written now, under a new name) also holds ``rows``."""
    state = dict(manifest)
    if rows.size == 0:
        return state
    name = f"deleted-{generation:06d}.npy"
    merged = np.union1d(deleted_rows(directory, manifest), rows.astype(np.int64))
    with atomic_path(directory / name) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, merged, allow_pickle=False)
    state.update(
        deleted=name,
        previous_deleted=manifest.get("deleted"),
        deleted_since_build=int(manifest.get("deleted_since_build", 0)) + int(rows.size),
    )
    return state


def live_rows(directory: Path, manifest: dict[str, Any]) -> tuple[list[str], np.ndarray]:
    """(id, row number) of every live item, in row order: what add and delete check ids against."""
    ids: list[str] = []
    for path, _, _ in _stored_parts(directory, manifest):
        try:
            ids.extend(str(i) for i in pq.read_table(path / "lambdas.parquet", columns=["id"]).column("id").to_pylist())
        except Exception as exc:  # noqa: BLE001 - any parse failure means a damaged file
            raise fail(directory, f"a file is damaged: {type(exc).__name__}: {exc}") from None
    rows = np.arange(len(ids), dtype=np.int64)
    dead = deleted_rows(directory, manifest)
    if dead.size:
        keep = np.isin(rows, dead, invert=True)
        rows = rows[keep]
        ids = [ids[i] for i in rows.tolist()]
    return ids, rows


def load_index(directory: str | Path, device: str | torch.device = "cpu", timeout: float = 60.0) -> EnergyIndex:
    """Read every live item and the energy model, checking that files exist, parse and agree on shapes.

    A change committed while this reads may remove the deletion list it named: then it reads again."""
    directory = Path(directory)
    for attempt in range(3):
        manifest = read_manifest(directory)
        try:
            if backend_of(manifest) == "milvus":
                return milvus.load_all(directory, manifest, device, timeout)
            return load_files(directory, manifest, device)
        except InputError:
            if attempt == 2 or read_manifest(directory).get("generation") == manifest.get("generation"):
                raise
    raise AssertionError("unreachable")
