"""`optical sweep diffusion` end to end on a tiny labelled corpus, plus its usage errors.

The corpus embeddings are planted in the embedding cache (clustered by label), so the test
runs the real pipeline - relevance, prepare/finish per cell, exact energy search, cosine,
FAISS, heatmaps, tuning, resume - without loading a sentence model.
"""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from optical_cli.cli import app
from optical_cli.index.embed import texts_key

runner = CliRunner()
N_RECORDS = 150


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    rng = np.random.default_rng(0)
    labels = [[f"CWE-{i % 5}"] if i % 6 else [] for i in range(N_RECORDS)]  # every 6th record unlabelled
    labels[7] = ["CWE-1", "CWE-2"]
    records = [
        {"id": f"CVE-{i:04d}", "description": f"record {i} about topic {i % 5}", "cwe": labels[i]}
        for i in range(N_RECORDS)
    ]
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    centres = rng.normal(size=(5, 24))
    vectors = centres[np.arange(N_RECORDS) % 5] + 0.9 * rng.normal(size=(N_RECORDS, 24))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    cache = root / "cache"
    cache.mkdir()
    np.save(cache / f"{texts_key('default', [r['description'] for r in records])}.npy", vectors)
    return corpus, cache


def _invoke(corpus, cache, out, *extra):
    args = [
        "sweep",
        "diffusion",
        "--config",
        "configs/tiny/diffusion.yaml",
        "--corpus",
        str(corpus),
        "--limit",
        "0",
        "--output-dir",
        str(out),
        "--set",
        f"embed.cache_dir={cache}",
        "--set",
        "sweep.text_queries=[]",
        "--set",
        "runtime.device=cpu",
        *extra,
    ]
    return runner.invoke(app, args)


def _interrupt_after(out, cells: int) -> None:
    """Make ``out`` what a sweep killed after its baselines and ``cells`` grid cells leaves: cells.jsonl cut
    there, the manifest still saying running for a process that no longer exists."""
    lines = (out / "cells.jsonl").read_text().splitlines(keepends=True)
    kept = [line for line in lines if json.loads(line)["method"] != "energy"]
    kept += [line for line in lines if json.loads(line)["method"] == "energy"][:cells]
    (out / "cells.jsonl").write_text("".join(kept))
    manifest = json.loads((out / "manifest.json").read_text())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    manifest.update(status="running", pid=int(dead.stdout))
    (out / "manifest.json").write_text(json.dumps(manifest))


def test_tiny_sweep_end_to_end_and_resume(tiny_corpus, tmp_path):
    corpus, cache = tiny_corpus
    out = tmp_path / "run"
    first = _invoke(corpus, cache, out, "--eta", "0.05,0.1", "--steps", "2,4", "--json")
    assert first.exit_code == 0, first.output
    baselines = len(json.loads(first.stdout)["baselines"])
    _interrupt_after(out, cells=1)  # as if killed after the first cell
    result = _invoke(corpus, cache, out, "--eta", "0.05,0.1", "--steps", "2,4", "--json", "--resume")
    assert result.exit_code == 0, result.output
    assert "1 of 4 cells done" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["timing"]["cells_evaluated"] == 3 and summary["timing"]["cells_skipped"] == 1 + baselines
    for name in (
        "sweep.csv",
        "per_query.csv",
        "heatmaps.png",
        "summary.json",
        "cells.jsonl",
        "tuning.csv",
        "manifest.json",
    ):
        assert (out / name).is_file(), name
    assert json.loads((out / "manifest.json").read_text())["status"] == "ok"

    with open(out / "sweep.csv") as handle:
        rows = list(csv.DictReader(handle))
    energy = [r for r in rows if r["method"] == "energy"]
    assert {(r["eta"], r["steps"]) for r in energy} == {("0.05", "2"), ("0.05", "4"), ("0.1", "2"), ("0.1", "4")}
    cosine = next(r for r in rows if r["method"] == "cosine")
    assert float(cosine["mrr"]) > 0.5  # clustered vectors: label neighbours come first
    for row in rows:
        for metric in ("mrr", "map_cut_20", "ndcg_at_10", "recall_at_10", "recall_at_20", "precision_at_10"):
            assert float(row[f"{metric}_low"]) <= float(row[metric]) <= float(row[f"{metric}_high"])
            assert float(row[f"{metric}_cluster_low"]) <= float(row[metric]) <= float(row[f"{metric}_cluster_high"])
    faiss = [r for r in rows if r["method"] == "faiss"]
    if faiss:  # FAISS exact inner product ranks like brute-force cosine
        assert float(faiss[0]["ndcg_at_10"]) == pytest.approx(float(cosine["ndcg_at_10"]), abs=1e-3)

    # 125 labelled records are the queries (unlabelled ones are distractors only), split by label
    setup = summary["setup"]
    assert setup["queries"] == 125 and setup["items"] == N_RECORDS
    assert setup["tune_queries"] + setup["held_out_queries"] + setup["mixed_label_queries_left_out"] == 125
    assert all(int(r["n_queries"]) == setup["held_out_queries"] for r in rows)  # every row: held-out queries only
    with open(out / "per_query.csv") as handle:
        assert sum(1 for _ in handle) == 1 + 125 * len(rows)
    assert set(summary["best"]) >= {"ndcg_at_10", "recall_at_20"}
    assert {"low", "cluster_low"} <= set(summary["best"]["ndcg_at_10"]["vs_cosine"])
    default = summary["default"]  # the configured build.eta/steps cell, every metric against cosine
    assert (default["eta"], default["steps"]) == (0.1, 4)
    assert {"difference", "low", "high", "cluster_low", "cluster_high"} <= set(
        default["metrics"]["ndcg_at_10"]["vs_cosine"]
    )
    head_tail = summary["head_tail"]  # the head (MRR, P@1) and the tail (recall@20/50/100, label variety) vs cosine
    assert list(head_tail["head"]) == ["mrr", "precision_at_1"]
    assert list(head_tail["tail"]) == ["recall_at_20", "recall_at_50", "recall_at_100", "distinct_labels_at_20"]
    labels = head_tail["tail"]["distinct_labels_at_20"]
    assert 1 <= labels["value"] <= 20 and 1 <= labels["cosine"] <= 20 and "cluster_low" in labels["vs_cosine"]
    assert head_tail["tail"]["recall_at_100"]["value"] >= head_tail["tail"]["recall_at_20"]["value"]
    tuning = summary["tuning"]
    assert tuning["tune_queries"] == setup["tune_queries"] and tuning["held_out_queries"] == setup["held_out_queries"]
    assert set(tuning["held_out"]) == {"tuned", "default", "cosine"}

    resumed = _invoke(corpus, cache, out, "--eta", "0.05,0.1", "--steps", "2,4", "--resume", "--json")
    assert resumed.exit_code == 0, resumed.output
    again = json.loads(resumed.stdout)
    assert again["timing"]["cells_evaluated"] == 0 and again["timing"]["cells_skipped"] == len(rows)
    with open(out / "sweep.csv") as handle:
        assert list(csv.DictReader(handle)) == rows


def test_published_formula_is_reproducible_with_its_warning(tiny_corpus, tmp_path):
    corpus, cache = tiny_corpus
    result = _invoke(
        corpus,
        cache,
        tmp_path / "run",
        "--eta",
        "0.1",
        "--steps",
        "4",
        "--json",
        "--set",
        "build.lambda_formula=published",
        "--set",
        "tuning.enabled=false",
    )
    assert result.exit_code == 0, result.output
    assert "negative weight" in result.stderr and json.loads(result.stdout)["warnings"]
    quiet = _invoke(
        corpus, cache, tmp_path / "bounded", "--eta", "0.1", "--steps", "4", "--json", "--set", "tuning.enabled=false"
    )
    assert quiet.exit_code == 0 and "negative weight" not in quiet.stderr and json.loads(quiet.stdout)["warnings"] == []


def test_missing_faiss_is_a_warning_not_a_silent_skip(tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.setattr("optical_cli.sweep.diffusion.faiss_available", lambda: False)
    corpus, cache = tiny_corpus
    out = tmp_path / "run"
    result = _invoke(corpus, cache, out, "--eta", "0.05", "--steps", "2", "--json")
    assert result.exit_code == 0, result.output
    assert "sweep.faiss=true but faiss is not installed" in result.stderr
    with open(out / "sweep.csv") as handle:
        assert [r["method"] for r in csv.DictReader(handle)] == ["cosine", "energy"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--eta", "0.1,abc"], "'abc' is not a number"),
        (["--eta", ""], "empty list"),
        (["--steps=-2"], "must be >= 1"),
        (["--steps", "0"], "0 steps is no diffusion"),
        (["--eta", "0"], "eta 0 is no diffusion"),
        (["--steps", "2,x"], "not a whole number"),
        (["--resume"], "--resume needs --output-dir"),
    ],
)
def test_bad_grid_exits_2_with_one_line(tmp_path, flags, message):
    args = ["sweep", "diffusion", "--config", "configs/tiny/diffusion.yaml", *flags]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert list(tmp_path.iterdir()) == []  # not even results/ (conftest points RESULTS_DIR at tmp_path)


@pytest.mark.parametrize(
    "corpus_text, message",
    [
        (None, "corpus not found"),
        (
            '{"id": "a", "description": "x", "cwe": ["CWE-1"]}\n{"id": "a", "description": "y", "cwe": ["CWE-1"]}\n',
            "duplicate id 'a'",
        ),
        (
            '{"id": "a", "description": "x", "cwe": ["CWE-1"]}\n{"id": "b", "description": "y", "cwe": ["CWE-1"]}\n',
            "only 2 records",
        ),
    ],
    ids=["missing", "duplicate-id", "too-small"],
)
def test_bad_corpus_is_one_line_exit_2_and_leaves_no_run_dir(tmp_path, corpus_text, message):
    corpus = tmp_path / "corpus.jsonl"
    if corpus_text is not None:
        corpus.write_text(corpus_text)
    out = tmp_path / "out"
    result = _invoke(corpus, tmp_path, out)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.output
    assert not out.exists()  # no config.yaml/manifest.json of a run that never started


def test_shipped_sweep_configs_validate():
    from optical_cli.config.registry import load_config

    full = load_config("diffusion", "configs/diffusion.yaml")
    tiny = load_config("diffusion", "configs/tiny/diffusion.yaml")
    assert full.sweep.etas == [0.05, 0.1, 0.15, 0.2] and full.sweep.steps == [2, 4, 6, 8]
    assert tiny.sweep.limit == 200


def test_corpus_smaller_than_depth_is_exit_2(tiny_corpus, tmp_path):
    corpus, cache = tiny_corpus
    result = _invoke(corpus, cache, tmp_path / "out", "--set", "sweep.depth=200")
    assert result.exit_code == 2
    assert "lower sweep.depth" in result.stderr


@pytest.mark.parametrize(
    "change",
    [
        ["--eta", "0.05,0.1", "--steps", "2,4"],  # the grid
        ["--eta", "0.05", "--steps", "2"],
        ["--eta", "0.05", "--steps", "2,4", "--set", "tuning.trials=10"],  # the tuning
        ["--eta", "0.05", "--steps", "2,4", "--set", "sweep.text_queries=[overflow]"],  # the qualitative queries
    ],
)
def test_resume_of_a_finished_sweep_under_other_settings_leaves_it_byte_identical(tiny_corpus, tmp_path, change):
    """A resume never rewrites a finished run so that its files contradict each other (issue 31)."""
    corpus, cache = tiny_corpus
    out = tmp_path / "run"
    done = _invoke(corpus, cache, out, "--eta", "0.05", "--steps", "2,4", "--set", "tuning.trials=4")
    assert done.exit_code == 0, done.output
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    refused = _invoke(corpus, cache, out, "--set", "tuning.trials=4", *change, "--resume")
    assert refused.exit_code == 2, refused.output
    assert "finished" in refused.stderr and "new --output-dir" in refused.stderr
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before


def test_steps_zero_exits_2_before_any_output(tmp_path):
    out = tmp_path / "x"
    result = runner.invoke(
        app, ["sweep", "diffusion", "--config", "configs/tiny/diffusion.yaml", "--steps", "0", "-o", str(out)]
    )
    assert result.exit_code == 2 and "0 steps is no diffusion" in result.stderr
    assert not out.exists()
    zero = runner.invoke(
        app, ["sweep", "diffusion", "--config", "configs/tiny/diffusion.yaml", "--set", "sweep.steps=[0]"]
    )
    assert zero.exit_code == 2 and "sweep.steps" in zero.stderr


def test_progress_counts_grid_cells(tiny_corpus, tmp_path):
    """The bar counts the grid's cells (4 here), not cells plus baselines, and says so."""
    corpus, cache = tiny_corpus
    result = _invoke(
        corpus, cache, tmp_path / "run", "--eta", "0.05,0.1", "--steps", "2,4", "--set", "tuning.enabled=false"
    )
    assert result.exit_code == 0, result.output
    assert "4/4" in result.stderr and "6/6" not in result.stderr and "5/5" not in result.stderr
    assert "cells" in result.stderr


def _tear_last_line(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: data.rstrip(b"\n").rfind(b"\n") + 1 + 25])  # the last cell cut off mid-write


def test_a_torn_last_line_resumed_twice_gives_every_cell_once(tiny_corpus, tmp_path):
    corpus, cache = tiny_corpus
    out = tmp_path / "run"
    grid = ("--eta", "0.05,0.1", "--steps", "2,4")
    assert _invoke(corpus, cache, out, *grid).exit_code == 0
    untimed = lambda rows: [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in rows]
    with open(out / "sweep.csv") as handle:
        uninterrupted = untimed(csv.DictReader(handle))
    for _ in range(2):
        _interrupt_after(out, cells=4)  # killed while writing the last cell: its line torn
        _tear_last_line(out / "cells.jsonl")
        resumed = _invoke(corpus, cache, out, *grid, "--resume", "--json")
        assert resumed.exit_code == 0, resumed.output
        assert json.loads(resumed.stdout)["timing"]["cells_evaluated"] == 1
        cells = [json.loads(line) for line in (out / "cells.jsonl").read_text().splitlines()]
        energy = [(c["eta"], c["steps"]) for c in cells if c["method"] == "energy"]
        assert sorted(energy) == [(0.05, 2), (0.05, 4), (0.1, 2), (0.1, 4)]  # each once, none lost
        with open(out / "sweep.csv") as handle:
            assert untimed(csv.DictReader(handle)) == uninterrupted
