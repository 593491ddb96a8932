"""`optical index build-energy` and `optical index search` end to end, and their bad-input exits."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from optical_cli.cli import app
from optical_cli.index.search import Searcher
from optical_cli.index.store import load_index
from optical_cli.paths import CONFIG_DIR

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def cve_index(tmp_path_factory):
    """A real index over a seeded 24-record slice of the bundled CVE corpus, embedded with MiniLM."""
    out = tmp_path_factory.mktemp("cve_index")
    result = invoke(
        "index",
        "build-energy",
        "--limit",
        24,
        "-o",
        out,
        "--json",
        "--set",
        f"embed.cache_dir={out / 'cache'}",
        "--set",
        "runtime.device=cpu",
        "--set",
        "build.neighbor_k=4",
    )
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


def test_build_on_cve_corpus(cve_index):
    out, summary = cve_index
    assert summary["items"] == 24 and summary["dim"] == 384 and summary["embedding_cache_hit"] is False
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "ok" and manifest["format"] == "optical-energy-index" and manifest["count"] == 24
    for name in ("lambdas.parquet", "vectors.npy", "laplacian.npz", "config.yaml"):
        assert (out / name).is_file()
    vectors = np.load(out / "vectors.npy")
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)  # normalised embeddings


def test_repeat_build_hits_cache_and_is_identical(cve_index, tmp_path):
    out, _ = cve_index
    again = invoke(
        "index",
        "build-energy",
        "--limit",
        24,
        "-o",
        tmp_path,
        "--json",
        "--set",
        f"embed.cache_dir={out / 'cache'}",
        "--set",
        "runtime.device=cpu",
        "--set",
        "build.neighbor_k=4",
    )
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["embedding_cache_hit"] is True
    import pandas as pd

    assert pd.read_parquet(out / "lambdas.parquet").equals(pd.read_parquet(tmp_path / "lambdas.parquet"))


def test_text_search_json_lines(cve_index):
    out, _ = cve_index
    result = invoke(
        "index",
        "search",
        "--index",
        out,
        "--query",
        "buffer overflow allows remote code execution",
        "-k",
        5,
        "--json",
        "--set",
        "runtime.device=cpu",
    )
    assert result.exit_code == 0, result.output
    hits = [json.loads(line) for line in result.stdout.splitlines()]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert all(h["id"].startswith("CVE-") and {"score", "d_lambda", "dirichlet"} <= set(h) for h in hits)
    assert not any("d_G" in h for h in hits)  # lambda_blend 0: lambda is the dispersion, d_G would repeat d_lambda
    assert "weigh the same term (together 0.15)" in " ".join(result.stderr.split())
    assert [h["score"] for h in hits] == sorted(h["score"] for h in hits)


@pytest.mark.parametrize("blank", ["", "   ", "\t\n"])
def test_blank_query_is_one_line_exit_2(cve_index, blank):
    out, _ = cve_index
    result = invoke("index", "search", "--index", out, "--query", "real query", "--query", blank, "--json")
    assert result.exit_code == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --query number 2 is empty"), result.stderr


def test_queries_file_and_modes(cve_index, tmp_path):
    out, _ = cve_index
    queries = tmp_path / "q.jsonl"
    queries.write_text(
        '{"id": "a", "text": "SQL injection in login form"}\n{"id": "b", "text": "cross-site scripting"}\n'
    )
    for mode in ("cosine", "hybrid"):
        result = invoke(
            "index",
            "search",
            "--index",
            out,
            "--queries",
            queries,
            "--mode",
            mode,
            "-k",
            3,
            "--json",
            "--set",
            "runtime.device=cpu",
        )
        assert result.exit_code == 0, result.output
        hits = [json.loads(line) for line in result.stdout.splitlines()]
        assert [h["query_id"] for h in hits] == ["a"] * 3 + ["b"] * 3 and hits[0]["mode"] == mode


def test_query_vector_dimension_mismatch_and_k(cve_index, tmp_path):
    out, _ = cve_index
    np.save(tmp_path / "q.npy", np.ones(10, np.float32))
    result = invoke("index", "search", "--index", out, "--query-vector", tmp_path / "q.npy")
    assert result.exit_code == 2 and "dimension" in result.output
    np.save(tmp_path / "q.npy", np.ones(384, np.float32))
    result = invoke("index", "search", "--index", out, "--query-vector", tmp_path / "q.npy", "-k", 25)
    assert result.exit_code == 2 and "only 24 items" in result.output
    result = invoke("index", "search", "--index", out, "--query-vector", tmp_path / "q.npy", "-k", 3, "--json")
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 3


def test_batch_search_prints_one_summary_line_and_ann_matches_exact(cve_index, tmp_path):
    out, summary = cve_index
    assert summary["ann"] == "hnsw" and (out / "ann.faiss").is_file()
    vectors = np.load(out / "vectors.npy")[:12] + 0.01
    np.save(tmp_path / "q.npy", vectors)
    found = {}
    for candidates in ("exact", "ann"):
        result = invoke(
            "index",
            "search",
            "--index",
            out,
            "--query-vector",
            tmp_path / "q.npy",
            "-k",
            5,
            "--json",
            "--candidates",
            candidates,
            "--set",
            "search.ann_candidates=24",
        )
        assert result.exit_code == 0, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            f"12 queries, k=5, mode energy, candidates {candidates}: search "
        )
        found[candidates] = [(h["query_id"], h["id"]) for h in map(json.loads, result.stdout.splitlines())]
    assert found["ann"] == found["exact"] and len(found["ann"]) == 60  # every item a candidate: identical
    result = invoke(
        "index", "search", "--index", out, "--query-vector", tmp_path / "q.npy", "-k", 5, "--candidates", "both"
    )
    assert result.exit_code == 2 and "--candidates" in result.output


def test_published_formula_warns_when_dispersion_weight_is_negative(tmp_path):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(6, 24)) * 3)[rng.integers(6, size=300)] + rng.normal(size=(300, 24))  # tau > 1 here
    np.save(tmp_path / "v.npy", x.astype(np.float32))
    result = invoke(
        "index",
        "build-energy",
        "--input",
        tmp_path / "v.npy",
        "--limit",
        0,
        "-o",
        tmp_path / "pub",
        "--json",
        "--set",
        "build.lambda_formula=published",
        "--set",
        "build.ann=none",
    )
    assert result.exit_code == 0, result.output
    assert "warning:" in result.stderr and "negative weight" in result.stderr
    assert json.loads(result.stdout)["lambda_formula"] == "published" and json.loads(result.stdout)["ann"] == "none"
    assert not (tmp_path / "pub" / "ann.faiss").exists()
    result = invoke(
        "index", "build-energy", "--input", tmp_path / "v.npy", "--limit", 0, "-o", tmp_path / "default", "--json"
    )
    assert result.exit_code == 0 and "warning:" not in result.stderr


def test_ridged_build_is_stored_and_searched_with_ann(tmp_path):
    rng = np.random.default_rng(0)
    x = ((rng.normal(size=(6, 24)) * 3)[rng.integers(6, size=300)] + rng.normal(size=(300, 24))).astype(np.float32)
    np.save(tmp_path / "v.npy", x)
    result = invoke(
        "index",
        "build-energy",
        "--input",
        tmp_path / "v.npy",
        "--limit",
        0,
        "-o",
        tmp_path / "ix",
        "--json",
        "--set",
        "build.dirichlet_ridge=0.5",
    )
    assert result.exit_code == 0, result.output
    beta = json.loads(result.stdout)["dirichlet_beta"]
    assert beta > 0 and json.loads((tmp_path / "ix" / "manifest.json").read_text())["dirichlet_beta"] == beta
    index = load_index(tmp_path / "ix")  # the ANN holds R x with R = (L + beta I)^{1/2}: ||R x||^2 = x^T (L + beta I) x
    stored = index.ann.reconstruct_n(0, index.ann.ntotal)
    np.testing.assert_allclose((stored**2).sum(1), Searcher(index).item_energy.numpy(), rtol=1e-4)
    np.save(tmp_path / "q.npy", x[:4] + 0.3 * rng.normal(size=(4, 24)).astype(np.float32))
    hits = {}
    for candidates in ("exact", "ann"):
        result = invoke(
            "index",
            "search",
            "--index",
            tmp_path / "ix",
            "--query-vector",
            tmp_path / "q.npy",
            "-k",
            5,
            "--json",
            "--candidates",
            candidates,
        )
        assert result.exit_code == 0, result.output
        hits[candidates] = [json.loads(line) for line in result.stdout.splitlines()]
    assert all(0 < h["ridge"] < h["dirichlet"] for h in hits["exact"])  # the identity part of the Dirichlet energy
    assert [h["id"] for h in hits["ann"]] == [
        h["id"] for h in hits["exact"]
    ]  # 50 candidates of 300 items find the top 5
    result = invoke(
        "index",
        "build-energy",
        "--input",
        tmp_path / "v.npy",
        "-o",
        tmp_path / "bad",
        "--set",
        "build.dirichlet_ridge=-1",
    )
    assert result.exit_code == 2 and "dirichlet_ridge" in result.output and "Traceback" not in result.output


def test_vector_input_with_invalid_rows(tmp_path):
    x = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    x[3, 1], x[7] = np.nan, 0
    np.save(tmp_path / "v.npy", x)
    result = invoke("index", "build-energy", "--input", tmp_path / "v.npy", "-o", tmp_path / "ix", "--limit", 0)
    assert result.exit_code == 2 and "rows 3" in result.output and "all-zero rows 7" in result.output
    assert not (tmp_path / "ix" / "lambdas.parquet").exists()
    result = invoke(
        "index",
        "build-energy",
        "--input",
        tmp_path / "v.npy",
        "-o",
        tmp_path / "ix",
        "--limit",
        0,
        "--drop-invalid",
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["items"] == 38
    result = invoke("index", "search", "--index", tmp_path / "ix", "--query", "text on a vector index")
    assert result.exit_code == 2 and "built from vectors" in result.output


def test_bad_inputs_exit_2(tmp_path):
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"id": "x", "description": "a"}\n{"id": "x", "description": "b"}\n')
    result = invoke("index", "build-energy", "--input", dup, "-o", tmp_path / "d")
    assert result.exit_code == 2 and "duplicate ids x" in result.output
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {dup}: duplicate ids x; every item needs a unique id"
    ] and "Traceback" not in result.output
    assert not (tmp_path / "d").exists()  # no half-written index
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"id": "a", "description": "fine"}\n{"id": "b", "description": \n')
    result = invoke("index", "build-energy", "--input", broken, "-o", tmp_path / "d")
    assert result.exit_code == 2 and "broken.jsonl:2: invalid JSON" in result.stderr
    assert "embedding" not in result.stderr  # the error alone: no empty progress bar drawn before it
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "manifest.json").write_text('{"command": "render"}')
    result = invoke("index", "search", "--index", tmp_path / "foreign", "--query", "x")
    assert result.exit_code == 2 and "not a usable energy index" in result.output
    assert "NEW_DIR" in result.output and "--overwrite" not in result.output  # advice that works: not ours
    result = invoke("index", "search", "--index", tmp_path / "foreign")
    assert result.exit_code == 2 and "exactly one of" in result.output
    result = invoke("index", "search", "--index", tmp_path / "foreign", "--query", "x", "--mode", "nope")
    assert result.exit_code == 2 and "--mode" in result.output and "hybrid" in result.output


def test_shipped_configs_validate():
    from pathlib import Path

    from optical_cli.config.registry import load_config
    from optical_cli.paths import REPO_ROOT

    for path in (REPO_ROOT / "configs" / "index.yaml", REPO_ROOT / "configs" / "tiny" / "index.yaml"):
        assert load_config("index", Path(path)).build.neighbor_k == 8


def test_rendered_documents_become_searchable(tmp_path):
    """render -> encode (tiny random DeepEncoder) -> index over the pooled page features -> search."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, word in (("alpha.txt", "alpha"), ("beta.txt", "beta"), ("gamma.txt", "gamma")):
        (docs / name).write_text((word + " ") * 4000)
    render = tmp_path / "render"
    assert (
        invoke("render", docs, "-o", render, "--set", "render.mode=tiny", "--set", "render.tokenizer=none").exit_code
        == 0
    )
    encode = tmp_path / "encode"
    result = invoke(
        "encode", "-i", render, "-o", encode, "-c", CONFIG_DIR / "tiny" / "encode.yaml", "--set", "encode.shard_pages=2"
    )
    assert result.exit_code == 0, result.output
    pages = json.loads((encode / "metrics.json").read_text())["summary"]["pages"]
    index = tmp_path / "index"
    result = invoke(
        "index",
        "build-energy",
        "--input",
        encode,
        "-o",
        index,
        "--json",  # the encode run directory, sharded
        "--set",
        "build.neighbor_k=2",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["items"] == pages >= 3
    query = tmp_path / "q.npy"
    np.save(query, np.load(index / "vectors.npy")[0])
    result = invoke("index", "search", "--index", index, "--query-vector", query, "-k", 2, "--mode", "cosine", "--json")
    assert result.exit_code == 0, result.output
    hits = [json.loads(line) for line in result.stdout.splitlines()]
    assert hits[0]["rank"] == 1 and "alpha" in hits[0]["id"]


def _advised_build(message: str) -> str:
    """The `optical index build-energy ...` command an error advises."""
    return message.split("`optical index build-energy ", 1)[1].split("`", 1)[0]


def test_search_advice_on_a_directory_that_is_no_index_works(tmp_path):
    """The advice of `index search` on a folder of someone's files, a render run or a damaged index can be
    followed as written (a new directory where optical may not write; --overwrite on its own run)."""
    vectors = np.random.default_rng(1).normal(size=(30, 8)).astype(np.float32)
    np.save(tmp_path / "v.npy", vectors)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "README.md").write_text("my notes")
    pages = tmp_path / "pages"
    assert invoke("render", "-o", pages).exit_code == 0
    built = tmp_path / "ix"
    assert invoke("index", "build-energy", "--input", tmp_path / "v.npy", "--limit", 0, "-o", built).exit_code == 0
    (built / "lambdas.parquet").unlink()
    for directory, expect_new in ((notes, True), (pages, True), (built, False)):
        refused = invoke("index", "search", "--index", directory, "--query-vector", tmp_path / "v.npy")
        assert refused.exit_code == 2, refused.output
        advice = _advised_build(" ".join(refused.stderr.split()))
        assert ("NEW_DIR" in advice) == expect_new
        target = tmp_path / f"new-{directory.name}" if expect_new else directory
        flags = advice.replace("NEW_DIR", str(target)).split()
        rebuilt = invoke("index", "build-energy", "--input", tmp_path / "v.npy", "--limit", 0, *flags)
        assert rebuilt.exit_code == 0, rebuilt.output
        found = invoke("index", "search", "--index", target, "--query-vector", tmp_path / "v.npy", "--json")
        assert found.exit_code == 0, found.output
    assert (notes / "README.md").read_text() == "my notes" and (pages / "layout.jsonl").is_file()


def test_add_texts_embedded_with_the_index_model_and_found_by_their_own_text(cve_index, tmp_path):
    import shutil

    out, _ = cve_index
    index = tmp_path / "ix"
    shutil.copytree(out, index)
    records = [json.loads(line) for line in (CONFIG_DIR.parent / "data" / "cve" / "cves.jsonl").open()][-4:]
    new = tmp_path / "new.jsonl"
    new.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = invoke("index", "add", "--index", index, "--input", new, "--json", "--set", f"embed.cache_dir={tmp_path}")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["added"] == 4 and report["count"] == 28 and report["generation"] == 1
    for record in records:
        found = invoke("index", "search", "--index", index, "-q", record["description"], "-k", 3, "--json")
        hits = [json.loads(line) for line in found.stdout.splitlines()]
        assert hits[0]["id"] == record["id"] and hits[0]["labels"] == record["cwe"]
    result = invoke("index", "delete", "--index", index, "--ids", records[0]["id"], "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["count"] == 27
    found = invoke("index", "search", "--index", index, "-q", records[0]["description"], "-k", 27, "--json")
    assert records[0]["id"] not in {json.loads(line)["id"] for line in found.stdout.splitlines()}


def test_milvus_backend_without_its_client_is_exit_2_before_anything_is_written(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pymilvus", None)  # as if the milvus extra were not installed
    x = np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32)
    np.save(tmp_path / "v.npy", x)
    result = invoke(
        "index", "build-energy", "--input", tmp_path / "v.npy", "--limit", 0, "-o", tmp_path / "ix",
        "--set", "store.backend=milvus",
    )  # fmt: skip
    assert result.exit_code == 2 and "pip install 'optical[milvus]'" in result.output
    assert not (tmp_path / "ix").exists()
