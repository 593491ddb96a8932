"""Index persistence: round trip, damaged and foreign directories; inputs and their validation."""

import json

import numpy as np
import pytest
import torch

from optical_cli.errors import InputError
from optical_cli.index.build import build
from optical_cli.index.config import EnergyBuildSection, EnergyInputSection
from optical_cli.index.inputs import read_items, validate_vectors
from optical_cli.index.search import Searcher, SearchParams
from optical_cli.index.store import load_index, save_index


@pytest.fixture(scope="module")
def index():
    x = np.random.default_rng(2).normal(size=(80, 12)).astype(np.float32)
    built = build(x, EnergyBuildSection(kmeans_iters=3), ids=[f"a{i}" for i in range(80)], seed=0)
    built.model, built.texts = "default", [f"text {i}" for i in range(80)]
    return built


def test_round_trip(index, tmp_path):
    save_index(index, tmp_path)
    loaded = load_index(tmp_path)
    assert loaded.ids == index.ids and loaded.texts == index.texts and loaded.model == "default"
    for name in ("vectors", "lambdas", "rayleigh", "dispersion", "dirichlet", "norm"):
        assert torch.allclose(getattr(loaded, name), getattr(index, name), rtol=1e-6, atol=0)
    assert torch.equal(loaded.graph.src, index.graph.src) and torch.equal(loaded.graph.weight, index.graph.weight)
    assert loaded.scales == index.scales and loaded.dirichlet_scale == index.dirichlet_scale
    assert loaded.dirichlet_beta == index.dirichlet_beta == 0.0
    q = index.vectors[:3].numpy() + 0.1
    before = Searcher(index).search(q, SearchParams(k=4))
    after = Searcher(loaded).search(q, SearchParams(k=4))
    assert [[h.id for h in r] for r in before] == [[h.id for h in r] for r in after]


def test_ann_structure_round_trip(index, tmp_path):
    import dataclasses

    from optical_cli.index.ann import FILE, build_ann

    with_ann = dataclasses.replace(
        index, ann=build_ann(index.vectors, index.dirichlet_metric(index.vectors.device), "ivf", 1)
    )
    fields = save_index(with_ann, tmp_path)
    assert fields["ann"]["kind"] == "ivf" and FILE in fields["files"]
    loaded = load_index(tmp_path)
    q = index.vectors[:3].numpy() + 0.1
    params = SearchParams(k=4, candidates="ann", ann_candidates=30, ivf_nprobe=1000)
    assert [[h.id for h in r] for r in Searcher(with_ann).search(q, params)] == [
        [h.id for h in r] for r in Searcher(loaded).search(q, params)
    ]
    (tmp_path / FILE).write_bytes(b"garbage")
    with pytest.raises(InputError, match="damaged"):
        load_index(tmp_path)
    save_index(index, tmp_path)  # rebuilt without ANN: the stale structure goes
    assert not (tmp_path / FILE).exists() and load_index(tmp_path).ann is None


def test_ridge_round_trip_and_version_2_reads_as_no_ridge(index, tmp_path):
    import dataclasses

    ridged = dataclasses.replace(index, dirichlet_beta=2.5)
    assert save_index(ridged, tmp_path)["dirichlet_beta"] == 2.5
    assert load_index(tmp_path).dirichlet_beta == 2.5
    q = index.vectors[:3].numpy() + 0.1
    params = SearchParams(k=4)
    hits = lambda ix: [(h.id, h.terms["ridge"]) for r in Searcher(ix).search(q, params) for h in r]
    assert [i for i, _ in hits(load_index(tmp_path))] == [i for i, _ in hits(ridged)]
    np.testing.assert_allclose([t for _, t in hits(load_index(tmp_path))], [t for _, t in hits(ridged)], rtol=1e-5)
    # an index written before the ridge existed: no key, version 2, built with the pure Dirichlet energy
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    del manifest["dirichlet_beta"]
    manifest["format_version"] = 2
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert load_index(tmp_path).dirichlet_beta == 0.0


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "vectors.npy").write_bytes(b"garbage"), "damaged"),
        (lambda d: (d / "laplacian.npz").unlink(), "laplacian.npz is missing"),
        (lambda d: (d / "manifest.json").write_text("{not json"), "manifest.json is damaged"),
        (lambda d: (d / "manifest.json").write_text(json.dumps({"hello": 1})), "does not describe"),
        (lambda d: _edit(d, format_version=99), "format version 99"),
        (lambda d: _edit(d, status="failed"), "did not finish"),
        (lambda d: _edit(d, dim=5), r"expected \(5, 5\)"),
    ],
)
def test_damaged_or_foreign_directory(index, tmp_path, damage, message):
    save_index(index, tmp_path)
    damage(tmp_path)
    with pytest.raises(InputError, match=message):
        load_index(tmp_path)


def _edit(directory, **fields):
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest.update(fields)
    (directory / "manifest.json").write_text(json.dumps(manifest))


def test_missing_directory(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_index(tmp_path / "nope")
    with pytest.raises(InputError, match="no manifest"):
        load_index(tmp_path)


# --- inputs ------------------------------------------------------------------------------


def test_invalid_rows_are_named_or_dropped():
    x = np.ones((5, 3), np.float32)
    x[1, 2], x[3] = np.inf, 0
    ids = list("abcde")
    with pytest.raises(InputError, match=r"NaN/Inf in rows b; all-zero rows d"):
        validate_vectors(ids, x, False, "f.npy")
    kept, vectors, dropped = validate_vectors(ids, x, True, "f.npy")
    assert kept == ["a", "c", "e"] and vectors.shape == (3, 3) and dropped == 2


def test_text_inputs_duplicates_and_subset(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps({"key": f"k{i}", "body": f"text {i}"}) for i in range(10)) + "\n")
    section = EnergyInputSection(id_field="key", text_field="body", limit=4)
    a, b = read_items(section, path, seed=5), read_items(section, path, seed=5)
    assert a.ids == b.ids and len(a) == 4 and a.ids == sorted(a.ids, key=lambda s: int(s[1:]))
    assert a.texts[0] == f"text {a.ids[0][1:]}"
    with pytest.raises(InputError, match="no text field 'description'"):
        read_items(EnergyInputSection(id_field="key"), path)
    path.write_text('{"id": "x", "description": "a"}\n{"id": "x", "description": "b"}\n')
    with pytest.raises(InputError, match="duplicate ids x"):
        read_items(EnergyInputSection(), path)


def test_vector_files(tmp_path):
    import pandas as pd
    from safetensors.numpy import save_file

    x = np.arange(12, dtype=np.float32).reshape(4, 3) + 1
    np.save(tmp_path / "v.npy", x)
    assert read_items(EnergyInputSection(limit=None), tmp_path / "v.npy").ids == ["0", "1", "2", "3"]
    pd.DataFrame({"id": list("wxyz"), "vector": list(x)}).to_parquet(tmp_path / "v.parquet")
    items = read_items(EnergyInputSection(limit=None), tmp_path / "v.parquet")
    assert items.ids == list("wxyz") and np.allclose(items.vectors, x)
    features = np.stack([x, 2 * x, 3 * x])  # [pages, tokens, D] as written by `optical encode`
    features[1, 2:] = 0  # page 2 has 2 real tokens, then zero padding
    tokens = np.array([4, 2, 4], dtype=np.int64)
    save_file(
        {"features": features, "tokens": tokens},
        str(tmp_path / "f.safetensors"),
        metadata={"sources": json.dumps(["a.txt", "b.txt", "b.txt"])},
    )
    items = read_items(EnergyInputSection(limit=None), tmp_path / "f.safetensors")
    assert items.ids == ["a.txt", "b.txt#1", "b.txt#2"]
    assert np.allclose(items.vectors, [x.mean(0), 2 * x[:2].mean(0), 3 * x.mean(0)])
    np.save(tmp_path / "bad.npy", np.ones(3))
    with pytest.raises(InputError, match="2-D"):
        read_items(EnergyInputSection(), tmp_path / "bad.npy")
    with pytest.raises(InputError, match="unsupported"):
        read_items(EnergyInputSection(), tmp_path / "x.txt") if (tmp_path / "x.txt").write_text("a") else None
