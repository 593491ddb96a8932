"""Read items for the index: vectors (.npy/.parquet/.safetensors) or texts (.jsonl/.csv).

DeepEncoder output of ``optical encode`` (its run directory, its ``features.index.json`` or
a features .safetensors file, read through :class:`optical_cli.features.FeatureFiles`) is
mean-pooled over each page's tokens, one vector per page, so rendered documents become
searchable. Validation names the offending rows: NaN/Inf and all-zero rows (the Rayleigh
quotient of a zero vector is undefined) fail unless ``drop_invalid``; duplicate ids always fail.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
from safetensors import safe_open

from ..artifacts import iter_jsonl_objects
from ..encode.features import FeatureFiles
from ..errors import InputError
from ..paths import CVE_CORPUS
from .config import EnergyInputSection

VECTOR_SUFFIXES = {".npy", ".parquet", ".safetensors"}
TABLE_SUFFIXES = {".jsonl", ".csv"}


@dataclass
class Items:
    ids: list[str]
    texts: Optional[list[str]] = None  # set for text inputs (to be embedded)
    vectors: Optional[np.ndarray] = None  # set for vector inputs
    records: Optional[list[dict]] = None  # the raw rows of a text input (labels etc.)
    dropped: int = 0

    def __len__(self) -> int:
        return len(self.ids)


def show_ids(ids: list[str], limit: int = 5) -> str:
    more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
    return ", ".join(ids[:limit]) + more


def read_items(section: EnergyInputSection, path: Optional[str | Path] = None, seed: int = 0) -> Items:
    """Read ``path`` (default: ``section.path``, else the bundled corpus), then take the seeded subset."""
    path = Path(path or section.path or CVE_CORPUS)
    suffix = path.suffix.lower()
    if path.is_dir() or path.name.endswith(".index.json"):
        items = read_vectors(path)
    elif not path.is_file():
        raise InputError(
            f"input file not found: {path}; pass --input with a .jsonl/.csv of texts, .npy/.parquet/.safetensors "
            "vectors or an `optical encode` run directory"
        )
    elif suffix in TABLE_SUFFIXES:
        items = read_texts(path, section.id_field, section.text_field)
    elif suffix in VECTOR_SUFFIXES:
        items = read_vectors(path, section.id_field, section.vector_field)
    else:
        raise InputError(f"{path}: unsupported input type {suffix!r}; use .jsonl, .csv, .npy, .parquet or .safetensors")
    check_unique_ids(items.ids, str(path))
    return subset(items, section.limit, seed)


def sample_rows(n_rows: int, limit: Optional[int], seed: int) -> np.ndarray:
    """Sorted row numbers of a seeded sample of ``limit`` rows (all rows when limit is None).

    The one definition of the seeded subset: the sweep draws the same records as
    ``index build-energy`` with it, so the two share one embedding cache.
    """
    if limit is None or limit >= n_rows:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=limit, replace=False))


def subset(items: Items, limit: Optional[int], seed: int) -> Items:
    """A seeded random subset of ``limit`` items, kept in file order."""
    if limit is None or limit >= len(items):
        return items
    keep = sample_rows(len(items), limit, seed)
    pick = lambda seq: [seq[i] for i in keep] if seq is not None else None
    return Items(
        pick(items.ids),
        pick(items.texts),
        items.vectors[keep] if items.vectors is not None else None,
        pick(items.records),
    )


def check_unique_ids(ids: list[str], where: str) -> None:
    repeated = [i for i, n in Counter(ids).items() if n > 1]
    if repeated:
        raise InputError(f"{where}: duplicate ids {show_ids(repeated)}; every item needs a unique id")


def read_texts(path: Path, id_field: str, text_field: str, number_missing_ids: bool = False) -> Items:
    """Records of a .jsonl/.csv file; with ``number_missing_ids`` a record without an id gets its position."""
    if path.suffix.lower() == ".jsonl":
        records = [record for _, record in iter_jsonl_objects(path)]
    else:
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        except Exception as exc:  # noqa: BLE001 - pandas raises several parser errors
            raise InputError(f"{path}: cannot read CSV ({exc})") from None
        records = frame.to_dict("records")
    if not records:
        raise InputError(f"{path}: no records")
    for number, record in enumerate(records, start=1):
        if number_missing_ids and id_field not in record:
            record[id_field] = str(number)
        for name, field in (("text", text_field), ("id", id_field)):
            if field not in record:
                raise InputError(
                    f"{path}: record {number} has no {name} field '{field}' (fields: {', '.join(map(str, record))}); "
                    f"set input.{name}_field"
                )
        if not isinstance(record[text_field], str) or not record[text_field].strip():
            raise InputError(f"{path}: record {number} (id {record[id_field]}) has an empty or non-text '{text_field}'")
    return Items([str(r[id_field]) for r in records], [r[text_field] for r in records], records=records)


def read_vectors(path: Path, id_field: str = "id", vector_field: str = "vector") -> Items:
    suffix = path.suffix.lower()
    try:
        if path.is_dir() or path.name.endswith(".index.json"):
            ids, vectors = _encoded_pages(path)
        elif suffix == ".npy":
            vectors = np.load(path, allow_pickle=False)
            ids = None
        elif suffix == ".parquet":
            ids, vectors = _parquet_vectors(path, id_field, vector_field)
        else:
            ids, vectors = _safetensors_vectors(path)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - numpy/pyarrow/safetensors parse errors
        raise InputError(f"{path}: cannot read vectors ({type(exc).__name__}: {exc})") from None
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.shape[1] == 0:
        raise InputError(f"{path}: expected a non-empty 2-D array of vectors [items, dim], got shape {vectors.shape}")
    if not np.issubdtype(vectors.dtype, np.number):
        raise InputError(f"{path}: vectors must be numeric, got dtype {vectors.dtype}")
    ids = ids if ids is not None else [str(i) for i in range(vectors.shape[0])]
    return Items(ids, vectors=vectors.astype(np.float32))


def _parquet_vectors(path: Path, id_field: str, vector_field: str) -> tuple[Optional[list[str]], np.ndarray]:
    frame = pd.read_parquet(path)
    ids = [str(i) for i in frame[id_field]] if id_field in frame.columns else None
    if vector_field in frame.columns:
        rows = frame[vector_field].to_list()
        lengths = {len(r) for r in rows}
        if len(lengths) != 1:
            raise InputError(
                f"{path}: column '{vector_field}' holds vectors of different lengths {sorted(lengths)[:5]}"
            )
        return ids, np.stack([np.asarray(r, dtype=np.float64) for r in rows])
    numeric = frame.drop(columns=[id_field], errors="ignore").select_dtypes("number")
    if numeric.shape[1] == 0:
        raise InputError(f"{path}: no column '{vector_field}' and no numeric columns; set input.vector_field")
    return ids, numeric.to_numpy()


def _safetensors_vectors(path: Path) -> tuple[Optional[list[str]], np.ndarray]:
    """A 2-D tensor as it is; `optical encode` features [pages, tokens, D] pooled per page."""
    with safe_open(str(path), framework="pt") as handle:  # torch reads bfloat16, numpy cannot
        names = list(handle.keys())
        for name in ("features", "vectors", "embeddings"):
            if name in names:
                break
        else:
            if len(names) != 1:
                raise InputError(f"{path}: expected a tensor named features, vectors or embeddings; found {names}")
            name = names[0]
        if name == "features" and len(handle.get_slice(name).get_shape()) == 3:
            tensor = None
        else:
            tensor = handle.get_tensor(name).float()
    if tensor is None:
        return _encoded_pages(path)
    if tensor.ndim == 3:
        tensor = tensor.mean(dim=1)
    return _page_ids([None] * tensor.shape[0]), tensor.numpy()


def _encoded_pages(path: Path) -> tuple[list[str], np.ndarray]:
    """Pages written by `optical encode` (one file, or shards): ids from their sources, pooled vectors."""
    features = FeatureFiles.open(path)
    return _page_ids(features.sources()), features.pooled()


def _page_ids(sources: list[Optional[str]]) -> list[str]:
    """Page ids from the encoder's sources: the source, with ``#page`` when it has several pages."""
    if any(s is None for s in sources):
        return [f"page_{i + 1:04d}" for i in range(len(sources))]
    counts = Counter(sources)
    seen: Counter = Counter()
    ids = []
    for source in sources:
        seen[source] += 1
        ids.append(source if counts[source] == 1 else f"{source}#{seen[source]}")
    return ids


def validate_vectors(
    ids: list[str], vectors: np.ndarray, drop_invalid: bool, where: str
) -> tuple[list[str], np.ndarray, int]:
    """Fail on (or drop, with ``drop_invalid``) rows with NaN/Inf or all zeros; returns (ids, vectors, dropped)."""
    finite = np.isfinite(vectors).all(axis=1)
    nonzero = np.zeros(len(ids), dtype=bool)
    nonzero[finite] = np.abs(vectors[finite]).max(axis=1) > 0
    bad = ~(finite & nonzero)
    if not bad.any():
        return ids, vectors, 0
    if not drop_invalid:
        problems = []
        if (~finite).any():
            problems.append(f"NaN/Inf in rows {show_ids([ids[i] for i in np.flatnonzero(~finite)])}")
        if (finite & ~nonzero).any():
            problems.append(f"all-zero rows {show_ids([ids[i] for i in np.flatnonzero(finite & ~nonzero)])}")
        raise InputError(f"{where}: {'; '.join(problems)}; fix the input or pass --drop-invalid to skip them")
    keep = np.flatnonzero(~bad)
    if keep.size < 2:
        raise InputError(f"{where}: fewer than two valid vectors remain after dropping invalid rows")
    return [ids[i] for i in keep], vectors[keep], int(bad.sum())
