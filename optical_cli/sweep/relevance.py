"""Relevance judged by shared labels (CWE ids for the CVE corpus), not by any baseline.

Two records are relevant to each other when their label lists intersect. Every labelled
record that has at least one other record sharing a label can be a query; records without
labels stay in the corpus as distractors but never become queries. A query is never
relevant to itself and is removed from its own results before scoring.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow.parquet as pq

from ..artifacts import iter_jsonl_objects
from ..errors import InputError


@dataclass(frozen=True)
class LabelledCorpus:
    ids: list[str]
    texts: Optional[list[str]]  # None for a corpus of vectors
    labels: list[tuple[str, ...]]
    vectors: Optional[np.ndarray] = None  # set when the corpus comes as vectors with labels

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, rows: np.ndarray) -> "LabelledCorpus":
        return LabelledCorpus(
            ids=[self.ids[i] for i in rows],
            texts=[self.texts[i] for i in rows] if self.texts is not None else None,
            labels=[self.labels[i] for i in rows],
            vectors=self.vectors[rows] if self.vectors is not None else None,
        )


def _labels_of(value: object, where: str, field: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, list) and all(isinstance(item, (str, int)) for item in value):
        return tuple(dict.fromkeys(str(item) for item in value))
    raise InputError(f"{where}: field '{field}' must be a list of labels or a string, got {type(value).__name__}")


def load_labelled(
    path: str | Path,
    id_field: str = "id",
    text_field: str = "text",
    label_field: str = "label",
    vector_field: str = "vector",
) -> LabelledCorpus:
    """A labelled corpus: JSONL texts (embedded by the sweep) or Parquet vectors (no embedding run)."""
    if Path(path).suffix.lower() == ".parquet":
        return load_labelled_vectors(path, id_field, label_field, vector_field)
    return load_labelled_jsonl(path, id_field, text_field, label_field)


def load_labelled_vectors(
    path: str | Path, id_field: str = "id", label_field: str = "label", vector_field: str = "vector"
) -> LabelledCorpus:
    """Parquet with an id, a list-valued vector and a label (list or string) column per row."""
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"corpus not found: {path}; set sweep.corpus to a .jsonl of texts or a .parquet of vectors with labels"
        )
    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - any parse failure
        raise InputError(f"{path}: cannot read Parquet ({type(exc).__name__}: {exc})") from None
    missing = [f for f in (id_field, vector_field, label_field) if f not in table.column_names]
    if missing:
        raise InputError(
            f"{path}: no column {', '.join(repr(m) for m in missing)} (columns: {', '.join(table.column_names)}); "
            "set sweep.id_field / sweep.vector_field / sweep.label_field"
        )
    ids = [str(i) for i in table.column(id_field).to_pylist()]
    try:
        vectors = np.stack(table.column(vector_field).to_numpy(zero_copy_only=False)).astype(np.float32)
    except ValueError as exc:
        raise InputError(f"{path}: column '{vector_field}' must hold vectors of one length ({exc})") from None
    labels = [
        _labels_of(value, f"{path}: row {n + 1}", label_field)
        for n, value in enumerate(table.column(label_field).to_pylist())
    ]
    repeated = len(ids) - len(set(ids))
    if repeated:
        raise InputError(f"{path}: {repeated} duplicate ids; ids must be unique")
    if not np.isfinite(vectors).all() or not (np.abs(vectors).max(axis=1) > 0).all():
        raise InputError(f"{path}: vectors with NaN/Inf or all zeros; drop those rows")
    if not any(labels):
        raise InputError(f"{path}: no row has a '{label_field}' label; relevance needs labels")
    return LabelledCorpus(ids, None, labels, vectors)


def load_labelled_jsonl(
    path: str | Path, id_field: str = "id", text_field: str = "text", label_field: str = "label"
) -> LabelledCorpus:
    """Read a JSONL corpus with an id, a text and a label (list or single string) per line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"corpus not found: {path}; set sweep.corpus to a JSONL file with '{id_field}', '{text_field}' and "
            f"'{label_field}' fields"
        )
    ids: list[str] = []
    texts: list[str] = []
    labels: list[tuple[str, ...]] = []
    seen: dict[str, int] = {}
    for number, record in iter_jsonl_objects(path):
        where = f"{path}:{number}"
        for field in (id_field, text_field):
            if field not in record:
                raise InputError(
                    f"{where}: missing field '{field}' (fields present: {', '.join(record)}); set sweep.id_field / "
                    "sweep.text_field"
                )
        record_id = str(record[id_field])
        text = record[text_field]
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"{where}: field '{text_field}' must be a non-empty string")
        if record_id in seen:
            raise InputError(
                f"{where}: duplicate id '{record_id}' (first on line {seen[record_id]}); ids must be unique"
            )
        seen[record_id] = number
        ids.append(record_id)
        texts.append(text)
        labels.append(_labels_of(record.get(label_field), where, label_field))
    if not ids:
        raise InputError(f"{path}: the corpus is empty")
    if not any(labels):
        raise InputError(
            f"{path}: no record has a '{label_field}' label; relevance needs labels (set sweep.label_field)"
        )
    return LabelledCorpus(ids, texts, labels)


@dataclass(frozen=True)
class Relevance:
    """Label incidence of a corpus and the queries drawn from it."""

    incidence: np.ndarray  # items x labels, bool
    label_names: list[str]
    queries: np.ndarray  # row numbers of the query items
    n_relevant: np.ndarray  # per query: relevant items in the corpus, the query excluded
    primary: np.ndarray  # per query: its primary (first) label's column, the cluster of the cluster bootstrap

    def relevant_rows(self, position: int) -> np.ndarray:
        """Item rows relevant to the query at ``position`` (sharing a label with it), the query excluded."""
        row = self.queries[position]
        rows = np.flatnonzero(self.incidence[:, self.incidence[row]].any(axis=1))
        return rows[rows != row]


def label_incidence(labels: list[tuple[str, ...]]) -> tuple[np.ndarray, list[str]]:
    names = sorted({label for record in labels for label in record})
    column = {name: j for j, name in enumerate(names)}
    incidence = np.zeros((len(labels), len(names)), dtype=bool)
    for row, record in enumerate(labels):
        incidence[row, [column[label] for label in record]] = True
    return incidence, names


def count_relevant(incidence: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Items sharing at least one label with each row's item, the item itself excluded."""
    counts = np.empty(len(rows), dtype=np.int64)
    as_float = incidence.astype(np.float32)
    for start in range(0, len(rows), 1024):
        block = rows[start : start + 1024]
        shared = as_float[block] @ as_float.T  # labels in common with every item
        counts[start : start + 1024] = (shared > 0).sum(axis=1) - 1
    return counts


def build_relevance(labels: list[tuple[str, ...]], num_queries: int | None = None, seed: int = 0) -> Relevance:
    """Queries = labelled records with at least one relevant other record (or a seeded sample)."""
    incidence, names = label_incidence(labels)
    labelled = np.flatnonzero(incidence.any(axis=1))
    n_relevant = count_relevant(incidence, labelled)
    keep = n_relevant >= 1  # a label nobody else carries gives a query that cannot be answered
    candidates, n_relevant = labelled[keep], n_relevant[keep]
    if candidates.size == 0:
        raise InputError("no labelled record shares a label with another record; relevance cannot be judged")
    if num_queries is not None and num_queries < candidates.size:
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(candidates.size, size=num_queries, replace=False))
        candidates, n_relevant = candidates[pick], n_relevant[pick]
    column = {name: j for j, name in enumerate(names)}
    primary = np.array([column[labels[row][0]] for row in candidates], dtype=np.int64)
    return Relevance(incidence, names, candidates, n_relevant, primary)


def label_hash(label: str, seed: int) -> float:
    """A seeded hash of a label's name in [0, 1): the same label falls on the same side in every subset."""
    digest = hashlib.sha256(f"optical-split:{seed}:{label}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def tuning_labels(names: list[str], tune_fraction: float, seed: int) -> np.ndarray:
    """Which labels are tuning labels: hash < tune_fraction; with so few labels that one side is
    empty, the round(fraction * labels) smallest hashes (both sides non-empty from two labels on)."""
    hashes = np.array([label_hash(name, seed) for name in names])
    on_tune = hashes < tune_fraction
    if len(names) >= 2 and (on_tune.all() or not on_tune.any()):
        count = min(len(names) - 1, max(1, round(tune_fraction * len(names))))
        on_tune = np.zeros(len(names), dtype=bool)
        on_tune[np.argsort(hashes, kind="stable")[:count]] = True
    return on_tune


@dataclass(frozen=True)
class QuerySplit:
    """Positions (into the query list) of the tuning and held-out queries, split by label.

    A query is on the tuning side when all its labels are tuning labels, held out when all are
    held-out labels; a query with labels on both sides is in neither, so nothing learned from a
    tuning label can be scored on a held-out query through a shared label.
    """

    tune: np.ndarray
    held: np.ndarray
    mixed: int
    tune_labels: int
    held_labels: int


def split_by_label(relevance: Relevance, tune_fraction: float, seed: int) -> QuerySplit:
    on_tune = tuning_labels(relevance.label_names, tune_fraction, seed)
    query_labels = relevance.incidence[relevance.queries]  # q x L
    tune_only = ~(query_labels & ~on_tune[None, :]).any(axis=1)
    held_only = ~(query_labels & on_tune[None, :]).any(axis=1)
    split = QuerySplit(
        np.flatnonzero(tune_only),
        np.flatnonzero(held_only),
        int((~tune_only & ~held_only).sum()),
        int(on_tune.sum()),
        int((~on_tune).sum()),
    )
    if split.tune.size == 0 or split.held.size == 0:
        raise InputError(
            f"splitting the queries by label left {split.tune.size} tuning and {split.held.size} held-out queries "
            f"({len(relevance.label_names)} labels); use a corpus with more labels or change tuning.tune_fraction"
        )
    return split


def drop_self(ranked: np.ndarray, query_rows: np.ndarray, depth: int) -> np.ndarray:
    """Remove each query's own row from its ranking (wherever it appears) and cut to ``depth``.

    ``ranked`` must hold at least ``depth + 1`` columns so that every row keeps ``depth``.
    """
    if ranked.shape[1] < depth + 1:
        raise ValueError(f"need depth + 1 = {depth + 1} ranked columns to drop the query itself, got {ranked.shape[1]}")
    is_self = ranked == query_rows[:, None]
    # stable sort moves the (at most one) self entry to the end, keeping everyone else's order
    order = np.argsort(is_self, axis=1, kind="stable")
    return np.take_along_axis(ranked, order, axis=1)[:, :depth]
