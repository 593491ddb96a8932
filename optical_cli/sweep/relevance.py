"""Relevance judged by shared labels (CWE ids for the CVE corpus), not by any baseline.

Two records are relevant to each other when their label lists intersect. Every labelled
record that has at least one other record sharing a label can be a query; records without
labels stay in the corpus as distractors but never become queries. A query is never
relevant to itself and is removed from its own results before scoring.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..artifacts import iter_jsonl_objects
from ..errors import InputError


@dataclass(frozen=True)
class LabelledCorpus:
    ids: list[str]
    texts: list[str]
    labels: list[tuple[str, ...]]

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, rows: np.ndarray) -> "LabelledCorpus":
        return LabelledCorpus(
            ids=[self.ids[i] for i in rows],
            texts=[self.texts[i] for i in rows],
            labels=[self.labels[i] for i in rows],
        )


def _labels_of(value: object, where: str, field: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, list) and all(isinstance(item, (str, int)) for item in value):
        return tuple(dict.fromkeys(str(item) for item in value))
    raise InputError(f"{where}: field '{field}' must be a list of labels or a string, got {type(value).__name__}")


def load_labelled_jsonl(path: str | Path, id_field: str = "id", text_field: str = "text", label_field: str = "label") -> LabelledCorpus:
    """Read a JSONL corpus with an id, a text and a label (list or single string) per line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"corpus not found: {path}; set sweep.corpus to a JSONL file with '{id_field}', '{text_field}' and '{label_field}' fields")
    ids: list[str] = []
    texts: list[str] = []
    labels: list[tuple[str, ...]] = []
    seen: dict[str, int] = {}
    for number, record in iter_jsonl_objects(path):
        where = f"{path}:{number}"
        for field in (id_field, text_field):
            if field not in record:
                raise InputError(f"{where}: missing field '{field}' (fields present: {', '.join(record)}); set sweep.id_field / sweep.text_field")
        record_id = str(record[id_field])
        text = record[text_field]
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"{where}: field '{text_field}' must be a non-empty string")
        if record_id in seen:
            raise InputError(f"{where}: duplicate id '{record_id}' (first on line {seen[record_id]}); ids must be unique")
        seen[record_id] = number
        ids.append(record_id)
        texts.append(text)
        labels.append(_labels_of(record.get(label_field), where, label_field))
    if not ids:
        raise InputError(f"{path}: the corpus is empty")
    if not any(labels):
        raise InputError(f"{path}: no record has a '{label_field}' label; relevance needs labels (set sweep.label_field)")
    return LabelledCorpus(ids, texts, labels)


@dataclass(frozen=True)
class Relevance:
    """Label incidence of a corpus and the queries drawn from it."""

    incidence: np.ndarray  # items x labels, bool
    label_names: list[str]
    queries: np.ndarray  # row numbers of the query items
    n_relevant: np.ndarray  # per query: relevant items in the corpus, the query excluded

    def hits(self, query_rows: np.ndarray, ranked: np.ndarray) -> np.ndarray:
        """Relevance (queries x depth, bool) of ranked item rows for the given query rows."""
        query_labels = self.incidence[query_rows]  # q x L
        out = np.empty(ranked.shape, dtype=bool)
        chunk = max(1, 4_000_000 // max(ranked.shape[1] * self.incidence.shape[1], 1))
        for start in range(0, len(query_rows), chunk):
            stop = start + chunk
            item_labels = self.incidence[ranked[start:stop]]  # q x depth x L
            out[start:stop] = (item_labels & query_labels[start:stop, None, :]).any(axis=2)
        return out


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
        block = rows[start:start + 1024]
        shared = as_float[block] @ as_float.T  # labels in common with every item
        counts[start:start + 1024] = (shared > 0).sum(axis=1) - 1
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
    return Relevance(incidence, names, candidates, n_relevant)


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
