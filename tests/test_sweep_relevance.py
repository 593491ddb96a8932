"""Relevance by shared labels: corpus reading, query selection, self exclusion."""

import json

import numpy as np
import pytest

from optical_cli.errors import InputError
from optical_cli.sweep import relevance as rel


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


LABELS = [("A",), ("A", "B"), ("B",), (), ("C",), ("A",)]


def test_relevance_is_shared_label_and_queries_skip_unlabelled_and_unique():
    relevance = rel.build_relevance(LABELS)
    # row 3 has no label (distractor only), row 4's label "C" is carried by nobody else
    assert relevance.queries.tolist() == [0, 1, 2, 5]
    # 0: shares A with 1, 5 -> 2;  1: A with 0, 5 and B with 2 -> 3;  2: B with 1 -> 1;  5: A with 0, 1 -> 2
    assert relevance.n_relevant.tolist() == [2, 3, 1, 2]
    assert [relevance.relevant_rows(p).tolist() for p in range(4)] == [[1, 5], [0, 2, 5], [1], [0, 1]]
    assert [relevance.label_names[c] for c in relevance.primary] == [
        "A",
        "A",
        "B",
        "A",
    ]  # the first label is the cluster


def test_label_split_keeps_labels_apart_and_is_stable_across_subsets():
    labels = [(f"L{i % 12}",) for i in range(240)] + [("L0", "L1")] * 3
    relevance = rel.build_relevance(labels)
    split = rel.split_by_label(relevance, 0.5, seed=0)
    tune_labels = {relevance.label_names[c] for c in relevance.primary[split.tune]}
    held_labels = {relevance.label_names[c] for c in relevance.primary[split.held]}
    assert tune_labels and held_labels and not tune_labels & held_labels
    assert set(split.tune.tolist()).isdisjoint(split.held.tolist())
    assert split.tune.size + split.held.size + split.mixed == relevance.queries.size
    # a label's side depends on its name only: a subset of the corpus puts it on the same side
    smaller = rel.build_relevance(labels[:120])
    small_split = rel.split_by_label(smaller, 0.5, seed=0)
    assert {smaller.label_names[c] for c in smaller.primary[small_split.held]} <= held_labels
    other = rel.split_by_label(relevance, 0.5, seed=1)
    assert other.held.tolist() != split.held.tolist()


def test_label_split_with_one_label_is_an_input_error():
    with pytest.raises(InputError, match="more labels"):
        rel.split_by_label(rel.build_relevance([("A",)] * 5), 0.5, seed=0)


def test_seeded_query_sample():
    labels = [("A",)] * 30 + [("B",)] * 30
    first = rel.build_relevance(labels, num_queries=10, seed=4)
    again = rel.build_relevance(labels, num_queries=10, seed=4)
    other = rel.build_relevance(labels, num_queries=10, seed=5)
    assert first.queries.tolist() == again.queries.tolist()
    assert first.queries.tolist() != other.queries.tolist()
    assert len(first.queries) == 10 and np.all(first.n_relevant == 29)
    assert len(rel.build_relevance(labels, num_queries=500).queries) == 60


def test_drop_self_wherever_it_appears():
    ranked = np.array([[7, 1, 2, 3], [4, 5, 9, 6], [8, 9, 10, 11]])
    out = rel.drop_self(ranked, np.array([7, 9, 0]), depth=3)
    assert out.tolist() == [[1, 2, 3], [4, 5, 6], [8, 9, 10]]
    with pytest.raises(ValueError):
        rel.drop_self(ranked, np.array([7, 9, 0]), depth=4)


def test_parquet_vectors_with_labels(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    vectors = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    pq.write_table(
        pa.table(
            {"id": ["a", "b", "c", "d"], "vector": [list(v) for v in vectors], "cwe": [["X"], ["X", "Y"], [], ["Y"]]}
        ),
        tmp_path / "v.parquet",
    )
    corpus = rel.load_labelled(tmp_path / "v.parquet", label_field="cwe")
    assert corpus.ids == ["a", "b", "c", "d"] and corpus.texts is None
    assert corpus.labels == [("X",), ("X", "Y"), (), ("Y",)]
    np.testing.assert_array_equal(corpus.vectors, vectors)
    assert corpus.subset(np.array([1, 3])).vectors.shape == (2, 3)
    with pytest.raises(InputError, match="no column 'label'"):
        rel.load_labelled(tmp_path / "v.parquet")


def test_load_jsonl_with_configurable_fields(tmp_path):
    path = _write(
        tmp_path / "c.jsonl",
        [
            {"key": "x1", "body": "first", "tags": ["CWE-79"]},
            {"key": "x2", "body": "second", "tags": []},
            {"key": "x3", "body": "third", "tags": "CWE-79"},
            {"key": "x4", "body": "fourth"},
        ],
    )
    corpus = rel.load_labelled_jsonl(path, "key", "body", "tags")
    assert corpus.ids == ["x1", "x2", "x3", "x4"]
    assert corpus.labels == [("CWE-79",), (), ("CWE-79",), ()]
    assert corpus.subset(np.array([0, 2])).texts == ["first", "third"]


@pytest.mark.parametrize(
    "records, message",
    [
        ([{"id": "a", "text": "t", "label": ["x"]}, {"id": "a", "text": "u", "label": ["x"]}], "duplicate id 'a'"),
        ([{"id": "a", "label": ["x"]}], "missing field 'text'"),
        ([{"id": "a", "text": "", "label": ["x"]}], "non-empty string"),
        ([{"id": "a", "text": "t", "label": {"x": 1}}], "list of labels"),
        ([{"id": "a", "text": "t"}], "no record has a 'label'"),
    ],
)
def test_bad_corpus_is_an_input_error(tmp_path, records, message):
    path = _write(tmp_path / "c.jsonl", records)
    with pytest.raises(InputError, match=message):
        rel.load_labelled_jsonl(path)


def test_missing_file_and_bad_json(tmp_path):
    with pytest.raises(InputError, match="corpus not found"):
        rel.load_labelled_jsonl(tmp_path / "nope.jsonl")
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "text": "t", "label": ["x"]}\n{oops\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2: invalid JSON"):
        rel.load_labelled_jsonl(path)


def test_sample_rows_is_sorted_and_seeded():
    from optical_cli.index.inputs import sample_rows

    rows = sample_rows(100, 10, seed=1)
    assert rows.tolist() == sorted(rows.tolist()) and len(set(rows.tolist())) == 10
    assert rows.tolist() == sample_rows(100, 10, seed=1).tolist()
    assert sample_rows(5, None, 0).tolist() == [0, 1, 2, 3, 4]
