"""`optical index add` / `delete`: lambdas from the stored model, deletions, bad input, and atomicity under kills."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from optical_cli.cli import app
from optical_cli.config.registry import load_config
from optical_cli.index.search import Searcher, SearchParams
from optical_cli.index.store import load_index
from optical_cli.index.update import add_items, delete_items

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def clustered(n: int, dim: int = 24, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, dim)) * 3
    return (centres[rng.integers(8, size=n)] + rng.normal(size=(n, dim))).astype(np.float32)


def write_vectors(path, ids, vectors):
    pd.DataFrame({"id": ids, "vector": list(vectors.astype(np.float64))}).to_parquet(path)
    return path


def energy_cfg(*sets):
    return load_config("index", None, ["runtime.device=cpu", *sets])


def build_index(tmp_path, ids, vectors, name="ix", *sets):
    source = write_vectors(tmp_path / f"{name}-build.parquet", ids, vectors)
    extra = [a for s in sets for a in ("--set", s)]
    result = invoke("index", "build-energy", "--input", source, "--limit", 0, "-o", tmp_path / name, "--json", *extra)
    assert result.exit_code == 0, result.output
    return tmp_path / name


def top_ids(index, queries, k=10, candidates="exact"):
    params = SearchParams(k=k, candidates=candidates, ann_candidates=40)
    return [[h.id for h in hits] for hits in Searcher(index).search(queries, params)]


def snapshot(directory, queries):
    """What a reader sees: the live ids and the top 10 of some queries (exact and ANN)."""
    index = load_index(directory)
    return sorted(index.ids), top_ids(index, queries), top_ids(index, queries, candidates="ann")


@pytest.fixture(scope="module")
def data():
    x = clustered(700)
    return [f"v{i}" for i in range(700)], x


def test_an_added_item_gets_the_lambda_the_build_gave_it(data, tmp_path):
    ids, x = data
    directory = build_index(tmp_path, ids[:600], x[:600])
    built = load_index(directory)
    gone = ids[100:110]
    report = delete_items(directory, energy_cfg(), gone)
    assert report.deleted == 10 and report.count == 590 and report.generation == 1
    assert not set(gone) & set(load_index(directory).ids)
    report = add_items(directory, energy_cfg(), write_vectors(tmp_path / "back.parquet", gone, x[100:110]))
    assert report.added == 10 and report.count == 600 and report.generation == 2
    assert report.added_since_build == 10 and report.deleted_since_build == 10
    assert report.changed_share == pytest.approx(20 / 600, abs=1e-6)
    after = load_index(directory)
    row = {i: n for n, i in enumerate(after.ids)}
    for name in ("lambdas", "rayleigh", "dispersion", "dirichlet", "norm"):
        original = getattr(built, name)[100:110]
        again = getattr(after, name)[[row[i] for i in gone]]
        torch.testing.assert_close(again, original, rtol=1e-5, atol=1e-7)


def test_added_items_are_found_and_deleted_items_never_are(data, tmp_path):
    ids, x = data
    directory = build_index(tmp_path, ids[:600], x[:600])
    add_items(directory, energy_cfg(), write_vectors(tmp_path / "new.parquet", ids[600:], x[600:]))
    index = load_index(directory)
    assert len(index) == 700 and index.ann is not None  # the build's structure plus the segment's
    for candidates in ("exact", "ann"):
        found = top_ids(index, x[600:], k=10, candidates=candidates)
        assert all(ids[600 + q] in hits for q, hits in enumerate(found)), candidates
    gone = ids[:50] + ids[650:]
    delete_items(directory, energy_cfg(), gone)
    index = load_index(directory)
    assert len(index) == 600
    for candidates in ("exact", "ann"):
        hits = top_ids(index, x[:60], k=20, candidates=candidates)
        assert not set(gone) & {i for row in hits for i in row}, candidates
        assert all(len(row) == 20 for row in hits)


def test_duplicate_ids_upsert_and_unknown_deletes(data, tmp_path):
    ids, x = data
    directory = build_index(tmp_path, ids[:300], x[:300])
    manifest = (directory / "manifest.json").read_bytes()
    again = write_vectors(tmp_path / "again.parquet", ids[290:310], x[290:310] + 0.5)
    result = invoke("index", "add", "--index", directory, "--input", again)
    assert result.exit_code == 2 and "already in the index: v290" in result.output and "--upsert" in result.output
    assert (directory / "manifest.json").read_bytes() == manifest
    result = invoke("index", "add", "--index", directory, "--input", again, "--upsert", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["added"] == 20 and report["deleted"] == 10 and report["count"] == 310
    index = load_index(directory)
    assert len(set(index.ids)) == len(index.ids) == 310
    replaced = index.vectors[index.ids.index("v295")].numpy()
    np.testing.assert_allclose(replaced, x[295] + 0.5, rtol=1e-6)
    result = invoke("index", "delete", "--index", directory, "--ids", "v1,nope", "--ids", "v2")
    assert result.exit_code == 2 and "not in the index: nope" in result.output
    assert len(load_index(directory)) == 310


def test_bad_input_exits_2_and_leaves_the_index_untouched(data, tmp_path):
    ids, x = data
    directory = build_index(tmp_path, ids[:200], x[:200])
    before = {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}
    bad = x[200:210].copy()
    bad[3, 2] = np.nan
    cases = [
        (write_vectors(tmp_path / "nan.parquet", ids[200:210], bad), "NaN/Inf in rows v203"),
        (write_vectors(tmp_path / "dim.parquet", ids[200:210], x[200:210, :10]), "dimension 10, the index has 24"),
        (tmp_path / "missing.parquet", "input file not found"),
    ]
    texts = tmp_path / "texts.jsonl"
    texts.write_text('{"id": "t1", "description": "a buffer overflow"}\n')
    cases.append((texts, "built from vectors"))
    for path, message in cases:
        result = invoke("index", "add", "--index", directory, "--input", path)
        assert result.exit_code == 2 and message in result.output, result.output
        assert "Traceback" not in result.output
    assert {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()} == before
    assert not (directory / "segments").exists()
    result = invoke("index", "add", "--index", tmp_path / "nowhere", "--input", cases[0][0])
    assert result.exit_code == 2 and "index directory not found" in result.output


def test_rebuild_is_due_past_the_configured_share(data, tmp_path):
    ids, x = data
    directory = build_index(tmp_path, ids[:200], x[:200])
    first = write_vectors(tmp_path / "a.parquet", ids[200:230], x[200:230])
    threshold = ("--set", "store.rebuild_after=0.2", "--json")
    result = invoke("index", "add", "--index", directory, "--input", first, *threshold)
    assert json.loads(result.stdout)["rebuild_due"] is False and "rebuild the index" not in result.stderr
    second = write_vectors(tmp_path / "b.parquet", ids[230:250], x[230:250])
    result = invoke("index", "add", "--index", directory, "--input", second, *threshold)
    report = json.loads(result.stdout)
    assert report["changed_share"] == 0.25 and report["rebuild_due"] is True
    assert "rebuild the index" in " ".join(result.stderr.split())
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["added_since_build"] == 50 and manifest["built_count"] == 200 and manifest["generation"] == 2


def test_a_change_stopped_before_any_rename_leaves_the_index_before_or_after(data, tmp_path, monkeypatch):
    """Every file of a change lands by a rename (artifacts.atomic_path): stop the change before each one in turn."""
    ids, x = data
    directory = build_index(tmp_path, ids[:300], x[:300])
    add_items(directory, energy_cfg(), write_vectors(tmp_path / "first.parquet", ids[300:320], x[300:320]))
    queries = x[::37] + 0.05
    before = snapshot(directory, queries)
    change = write_vectors(tmp_path / "change.parquet", ids[310:340], x[310:340] - 0.2)  # 10 replaced, 20 new
    real_replace = os.replace
    for number in range(1, 30):
        calls = []

        def replace(src, dst, _number=number, _calls=calls):
            _calls.append(str(dst))
            if len(_calls) == _number:
                raise KeyboardInterrupt(f"stopped before renaming onto {dst}")
            return real_replace(src, dst)

        monkeypatch.setattr(os, "replace", replace)
        try:
            add_items(directory, energy_cfg(), change, upsert=True)
            stopped = False
        except KeyboardInterrupt:
            stopped = True
        monkeypatch.setattr(os, "replace", real_replace)
        state = snapshot(directory, queries)
        if not stopped:
            break
        assert state == before, f"stopped before rename {number} ({calls[-1]}): not the index of before"
    assert not stopped and number >= 5  # the segment's files, the deletion list, the manifest
    assert state != before and len(state[0]) == 340
    assert json.loads((directory / "manifest.json").read_text())["generation"] == 2


def _add_process(directory, change):
    """`optical index add --upsert` in its own process (a fork of a process that ran torch can deadlock)."""
    command = [sys.executable, "-m", "optical_cli.cli", "index", "add", "--index", str(directory), "--input",
               str(change), "--upsert", "--set", "runtime.device=cpu"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_sigkill_at_random_moments_during_add(tmp_path):
    """Several `optical index add` processes killed with SIGKILL at random moments of their writing: each
    leaves the index of before or of after, and the next add completes it."""
    x = clustered(3000, dim=64, seed=1)
    ids = [f"k{i}" for i in range(3000)]
    directory = build_index(tmp_path, ids[:1500], x[:1500])
    change = write_vectors(tmp_path / "change.parquet", ids[1400:3000], x[1400:3000] + 0.01)  # 100 replaced
    queries = x[::97] + 0.05
    before = snapshot(directory, queries)
    child = _add_process(directory, change)
    while not (directory / "segments").exists() and child.poll() is None:
        time.sleep(0.005)
    started = time.perf_counter()  # the writing starts with the segment directory, ends with the manifest's commit
    manifest = directory / "manifest.json"
    while json.loads(manifest.read_text()).get("generation") == 0 and child.poll() is None:
        time.sleep(0.002)
    writing = time.perf_counter() - started
    assert child.wait() == 0
    after = snapshot(directory, queries)
    assert after != before and len(after[0]) == 3000
    delays = [0.0, *np.random.default_rng(0).uniform(0.0, writing, size=4)]  # one at the very start of the writing
    outcomes = []
    for attempt, delay in enumerate(delays):
        fresh = build_index(tmp_path, ids[:1500], x[:1500], name=f"kill{attempt}")
        child = _add_process(fresh, change)
        while not (fresh / "segments").exists() and child.poll() is None:
            time.sleep(0.005)
        time.sleep(float(delay))
        child.send_signal(signal.SIGKILL)
        child.wait()
        state = snapshot(fresh, queries)
        assert state in (before, after), f"attempt {attempt}: neither before nor after"
        outcomes.append("after" if state == after else "before")
        add_items(fresh, energy_cfg(), change, upsert=True)  # the next writer cleans up and completes
        assert snapshot(fresh, queries) == after
    assert "before" in outcomes  # at least one kill landed inside the writing


HIDDEN_FCNTL = """
import sys, tempfile
sys.modules["fcntl"] = None  # as on Windows: `import fcntl` fails
import importlib, pkgutil, optical_cli.index
for module in pkgutil.iter_modules(optical_cli.index.__path__):
    importlib.import_module(f"optical_cli.index.{module.name}")
from pathlib import Path
from optical_cli.errors import InputError
from optical_cli.index.manifest import writer_lock
directory = Path(tempfile.mkdtemp())
with writer_lock(directory):
    try:
        with writer_lock(directory):
            raise SystemExit("a second writer got the lock")
    except InputError as exc:
        print("second writer refused:", exc)
with writer_lock(directory):
    print("free again")
"""


def test_the_index_imports_and_locks_without_fcntl():
    done = subprocess.run([sys.executable, "-c", HIDDEN_FCNTL], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "second writer refused: " in done.stdout and "free again" in done.stdout
