"""From config to vectors: read the input, embed texts (cached), validate; embed queries the same way.

The CLI and the sweep both start here, so a corpus is read, sampled, embedded and
validated identically everywhere.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..errors import InputError
from .config import IndexConfig
from .embed import embed_corpus, encode_texts
from .inputs import Items, read_items, read_texts, read_vectors, validate_vectors


@dataclass
class Corpus:
    ids: list[str]
    vectors: np.ndarray
    texts: Optional[list[str]]
    records: Optional[list[dict]]
    model: Optional[str]  # embedding model source, None for vector inputs
    source: str
    info: dict = field(default_factory=dict)
    labels: Optional[list[list[str]]] = None  # input.label_field of each record, when the input had the field


def record_labels(records: Optional[list[dict]], field_name: Optional[str]) -> Optional[list[list[str]]]:
    """Each record's labels (a list, or one string) from ``field_name``; None when no record has the field."""
    if not records or not field_name or not any(field_name in r for r in records):
        return None
    out = []
    for record in records:
        value = record.get(field_name)
        values = value if isinstance(value, list) else ([] if value in (None, "") else [value])
        out.append([str(v) for v in values])
    return out


def corpus_vectors(
    cfg: IndexConfig, path: Optional[str | Path] = None, progress: Optional[Callable[[int], None]] = None
) -> Corpus:
    """Read ``path`` (or cfg.input.path, or the bundled corpus), embed texts, drop/flag invalid rows."""
    items: Items = read_items(cfg.input, path, cfg.runtime.seed)
    source = str(path or cfg.input.path or "bundled CVE corpus")
    info = {"items_read": len(items)}
    model = None
    if items.texts is not None:
        started = time.perf_counter()
        vectors, hit = embed_corpus(
            items.texts, cfg.embed.model, cfg.runtime.device, cfg.embed.batch_size, cfg.embed.cache_dir, progress
        )
        info.update(embed_seconds=round(time.perf_counter() - started, 3), embedding_cache_hit=hit)
        model = cfg.embed.model
    else:
        vectors = items.vectors
    ids, vectors, dropped = validate_vectors(items.ids, vectors, cfg.input.drop_invalid, source)
    keep = None if not dropped else {i for i in ids}
    texts, records = items.texts, items.records
    if keep is not None and texts is not None:
        positions = [n for n, i in enumerate(items.ids) if i in keep]
        texts = [texts[n] for n in positions]
        records = [records[n] for n in positions] if records is not None else None
    info["dropped_invalid"] = dropped
    return Corpus(ids, vectors, texts, records, model, source, info, record_labels(records, cfg.input.label_field))


def query_vectors(model: Optional[str], texts: list[str], device: str = "auto", batch_size: int = 64) -> np.ndarray:
    """Embed query texts with the index's own model."""
    if model is None:
        raise InputError("this index was built from vectors, not texts: pass --query-vector instead of text queries")
    return encode_texts(texts, model, device, batch_size)


def read_query_file(
    path: Path, id_field: str, text_field: str
) -> tuple[list[str], Optional[list[str]], Optional[np.ndarray]]:
    """Queries from .jsonl/.csv texts (fields ``id_field``/``text_field``, falling back to id/text/query)
    or vector files."""
    if not path.is_file():
        raise InputError(f"queries file not found: {path}")
    if path.suffix.lower() in {".npy", ".parquet", ".safetensors"}:
        items = read_vectors(path, id_field)
        return items.ids, None, items.vectors
    for field_name in (text_field, "text", "query"):
        try:
            items = read_texts(path, id_field, field_name, number_missing_ids=True)
            return items.ids, items.texts, None
        except InputError as exc:
            last = exc
            if "has no text field" not in str(exc):
                raise
    raise last
