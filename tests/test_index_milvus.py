"""The Milvus backend (embedded Milvus Lite): the same results as the files backend, add/delete, atomic changes."""

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from optical_cli.cli import app
from optical_cli.config.registry import load_config
from optical_cli.index import manifest as manifest_mod
from optical_cli.index import milvus
from optical_cli.index.query import Queries, search_index
from optical_cli.index.store import load_index
from optical_cli.index.update import add_items, delete_items

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def clustered(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(10, dim)) * 3
    return (centres[rng.integers(10, size=n)] + rng.normal(size=(n, dim))).astype(np.float32)


def write_vectors(path, ids, vectors):
    pd.DataFrame({"id": ids, "vector": list(vectors.astype(np.float64))}).to_parquet(path)
    return path


def cfg(*sets):
    return load_config("index", None, ["runtime.device=cpu", *sets])


def hits(directory, vectors, *sets):
    outcome = search_index(directory, Queries([f"q{i}" for i in range(len(vectors))], None, vectors), cfg(*sets))
    return [[h.id for h in row] for row in outcome.results]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The same 1,500 vectors in both backends (1,200 built, 300 left to add)."""
    root = tmp_path_factory.mktemp("milvus")
    x = clustered(1500)
    ids = [f"v{i}" for i in range(1500)]
    source = write_vectors(root / "build.parquet", ids[:1200], x[:1200])
    for backend in ("files", "milvus"):
        result = invoke(
            "index", "build-energy", "--input", source, "--limit", 0, "-o", root / backend, "--json",
            "--set", f"store.backend={backend}",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
    return root, ids, x


def test_build_writes_the_collection_and_the_model_only(built):
    root, _, _ = built
    manifest = json.loads((root / "milvus" / "manifest.json").read_text())
    assert manifest["store"]["backend"] == "milvus" and manifest["store"]["collection"] == "items"
    assert manifest["count"] == 1200 and manifest["ann"]["kind"] == "hnsw" and manifest["ann"]["in"] == "milvus"
    assert (root / "milvus" / "milvus.db").exists() and (root / "milvus" / "laplacian.npz").is_file()
    assert not (root / "milvus" / "vectors.npy").exists()
    index = load_index(root / "milvus")
    files = load_index(root / "files")
    assert index.ids == files.ids
    np.testing.assert_array_equal(index.vectors.numpy(), files.vectors.numpy())
    np.testing.assert_allclose(index.lambdas.numpy(), files.lambdas.numpy(), rtol=1e-6)


def test_same_top_10_as_files_exact_and_ann_recall(built):
    root, _, x = built
    rng = np.random.default_rng(1)
    queries = x[rng.integers(1200, size=1000)] + rng.normal(scale=0.3, size=(1000, x.shape[1])).astype(np.float32)
    exact_files = hits(root / "files", queries)
    exact_db = hits(root / "milvus", queries)
    same = np.mean([a == b for a, b in zip(exact_files, exact_db)])
    assert same >= 0.99
    ann_db = hits(root / "milvus", queries, "search.candidates=ann")
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(ann_db, exact_db)])
    assert recall >= 0.95


def test_lambda_window_is_a_database_filter(built):
    root, _, x = built
    queries = x[:20] + 0.05
    window = ("search.lambda_window=0.02", "search.k=20")
    files = hits(root / "files", queries, *window)
    database = hits(root / "milvus", queries, *window, "search.candidates=ann", "search.ann_candidates=200")
    index = load_index(root / "files")
    lam = dict(zip(index.ids, index.lambdas.tolist()))
    own = load_index(root / "files").lambdas[:20]  # the queries sit next to items 0-19
    assert all(len(row) > 0 for row in files)
    for q, row in enumerate(database):
        assert all(abs(lam[i] - float(own[q])) <= 0.02 + 0.01 for i in row)  # the query's lambda is near item q's
    assert np.mean([len(set(a) & set(b)) / max(1, len(a)) for a, b in zip(files, database)]) >= 0.9


def test_add_and_delete_through_the_database(built, tmp_path):
    root, ids, x = built
    directory = tmp_path / "db"
    source = write_vectors(tmp_path / "b.parquet", ids[:600], x[:600])
    result = invoke(
        "index", "build-energy", "--input", source, "--limit", 0, "-o", directory, "--set", "store.backend=milvus"
    )
    assert result.exit_code == 0, result.output
    report = add_items(directory, cfg(), write_vectors(tmp_path / "new.parquet", ids[600:700], x[600:700]))
    assert report.backend == "milvus" and report.count == 700 and report.generation == 1
    for candidates in ("exact", "ann"):
        found = hits(directory, x[600:700], f"search.candidates={candidates}")
        assert np.mean([ids[600 + q] in row for q, row in enumerate(found)]) == 1.0
    with pytest.raises(Exception, match="already in the index"):
        add_items(directory, cfg(), write_vectors(tmp_path / "dup.parquet", ids[650:651], x[650:651]))
    gone = ids[:30] + ids[690:700]
    delete_items(directory, cfg(), gone)
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["count"] == 660 and manifest["pending_deletes"] == []
    for candidates in ("exact", "ann"):
        found = hits(directory, x[:40], f"search.candidates={candidates}", "search.k=20")
        assert not set(gone) & {i for row in found for i in row}


def test_an_add_stopped_before_its_commit_is_invisible_and_cleaned_up(built, tmp_path, monkeypatch):
    root, ids, x = built
    directory = tmp_path / "db"
    source = write_vectors(tmp_path / "b.parquet", ids[:400], x[:400])
    assert invoke("index", "build-energy", "--input", source, "--limit", 0, "-o", directory,
                  "--set", "store.backend=milvus").exit_code == 0  # fmt: skip
    queries = x[380:420] + 0.05
    before = hits(directory, queries), hits(directory, queries, "search.candidates=ann")
    change = write_vectors(tmp_path / "c.parquet", ids[390:420], x[390:420] - 0.1)  # 10 replaced, 20 new

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt("killed between the insert and the commit")

    monkeypatch.setattr(milvus, "commit_manifest", stopped)
    with pytest.raises(KeyboardInterrupt):
        add_items(directory, cfg(), change, upsert=True)
    monkeypatch.undo()
    assert (hits(directory, queries), hits(directory, queries, "search.candidates=ann")) == before
    assert len(load_index(directory)) == 400
    report = add_items(directory, cfg(), change, upsert=True)  # cleans the orphaned generation, then adds
    assert report.count == 420 and report.generation == 1
    index = load_index(directory)
    assert len(index) == 420 and len(set(index.ids)) == 420
    np.testing.assert_allclose(index.vectors[index.ids.index("v395")].numpy(), x[395] - 0.1, rtol=1e-6)
    manifest = manifest_mod.read_manifest(directory)
    assert manifest["pending_deletes"] == []


def test_a_second_process_waits_for_the_embedded_database(built, tmp_path):
    """Milvus Lite opens a database in one process at a time: a search waits (store.open_timeout) or says why."""
    import subprocess
    import sys
    import time

    root, _, x = built
    hold = (
        "import sys, time; from pymilvus import MilvusClient; c = MilvusClient(sys.argv[1]); "
        "print('open', flush=True); time.sleep(float(sys.argv[2])); c.close()"
    )
    database = str(root / "milvus" / "milvus.db")
    for seconds, timeout, works in ((2.0, 60.0, True), (4.0, 0.5, False)):
        child = subprocess.Popen(
            [sys.executable, "-c", hold, database, str(seconds)], stdout=subprocess.PIPE, text=True
        )
        assert child.stdout.readline().strip() == "open"
        started = time.perf_counter()
        try:
            found = hits(root / "milvus", x[:2], f"store.open_timeout={timeout}")
            assert works and len(found[0]) == 10 and time.perf_counter() - started > 1.0
        except Exception as exc:  # noqa: BLE001 - the refusal is the expected outcome of the short timeout
            assert not works and "another process may hold it" in str(exc), exc
        finally:
            child.wait()
