"""A library of documents (`optical index add-documents`, `remove-documents`, `ask --library`): every page
indexed through the index's own store and its add/delete, citations that hold the planted facts, documents
skipped, replaced and removed, the energy model rebuilt, Milvus Lite underneath."""

import json
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT
from typer.testing import CliRunner

from optical_cli.cli import app
from optical_cli.config.registry import load_config
from optical_cli.index.manifest import read_manifest
from optical_cli.serving.library import add_documents, rebuild_library, remove_documents, search_library

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from library_check import FACTS, TARGET, fact_pages, make_documents, measure

runner = CliRunner()
SERVE = str(REPO_ROOT / "configs" / "tiny" / "serve.yaml")


@pytest.fixture
def index_config(tmp_path) -> Path:
    """configs/tiny/index.yaml with the embedding cache in this test's folder."""
    data = yaml.safe_load((REPO_ROOT / "configs" / "tiny" / "index.yaml").read_text())
    data["embed"]["cache_dir"] = str(tmp_path / "embeddings")
    path = tmp_path / "index.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_a_library_of_20_documents_cites_the_pages_that_hold_at_least_9_of_10_planted_facts(tmp_path, index_config):
    paths = make_documents(tmp_path, documents=20, paragraphs=30)
    library = tmp_path / "library"
    added = invoke("index", "add-documents", library, tmp_path, "-c", index_config, "--json")
    assert added.exit_code == 0, added.output
    report = json.loads(added.stdout)
    assert report["documents"] == 20 and report["added"] == [str(p) for p in paths] and report["pages"] > 40
    rows = measure(library, load_config("index", index_config), slots=8)
    assert sum(row["cited"] for row in rows) >= TARGET, rows
    question, phrase = FACTS[3][1], FACTS[3][2]
    asked = invoke(
        "ask", "--library", library, question, "-c", SERVE, "--set", f"ask.index_config={index_config}", "--json"
    )
    assert asked.exit_code == 0, asked.output
    answer = json.loads(asked.stdout)
    assert answer["select"] == "library" and answer["pages"] == 8 and len(answer["citations"]) == 8
    assert fact_pages(library)[phrase] in answer["citations"]
    assert answer["document_pages"] == report["library_pages"] and answer["document_tokens"] is None
    assert all(entry["rank"] >= 1 and entry["citation"].startswith(str(tmp_path)) for entry in answer["pages_read"])
    from test_ask import FakeServer, expected_tokens

    server = FakeServer(tokens=expected_tokens(8, question))
    try:
        served = invoke(
            "ask",
            "--library",
            library,
            question,
            "-c",
            SERVE,
            "--set",
            f"ask.index_config={index_config}",
            "--server",
            server.url,
            "--json",
        )
    finally:
        server.close()
    assert served.exit_code == 0, served.output
    assert json.loads(served.stdout)["citations"] == answer["citations"]  # chosen on the client, the same pages
    both = invoke("ask", tmp_path / "report-01.txt", question, "--library", library, "-c", SERVE)
    assert both.exit_code == 2 and "only the question" in both.stderr


def test_documents_are_skipped_when_unchanged_replaced_when_changed_and_removed(tmp_path, index_config):
    cfg = load_config("index", index_config)
    docs = make_documents(tmp_path, documents=4, paragraphs=20)
    library = tmp_path / "library"
    first = add_documents(library, [str(p) for p in docs], cfg)
    assert len(first.added) == 4 and first.index["operation"] == "build"
    again = add_documents(library, [str(tmp_path)], cfg)
    assert again.added == [] and len(again.unchanged) == 4 and again.index == {}
    docs[1].write_text(docs[1].read_text() + "\n\nA new closing paragraph about the harbour of Quenby.")
    before = set((library / "pages").iterdir())
    old_passages = json.loads((library / "library.json").read_text())["documents"][str(docs[1])]["passages"]
    changed = add_documents(library, [str(tmp_path)], cfg)
    assert changed.added == [str(docs[1])] and changed.index["operation"] == "add"
    assert changed.index["deleted"] == old_passages and changed.index["added"] == changed.passages
    assert len(set((library / "pages").iterdir()) ^ before) == 2  # the old version's pages went, the new came
    found = search_library(library, "What is the harbour of Quenby?", cfg, 2)
    assert found.reads[0].document == str(docs[1])
    removed = remove_documents(library, [str(docs[1])], cfg)
    assert removed.documents == 3 and removed.index["operation"] == "delete"
    assert all(read.document != str(docs[1]) for read in search_library(library, "harbour of Quenby", cfg, 8).reads)
    unknown = invoke("index", "remove-documents", library, tmp_path / "nope.txt", "-c", index_config)
    assert unknown.exit_code == 2 and "not in the library" in unknown.stderr
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    refused = invoke("index", "add-documents", stray, docs[0], "-c", index_config)
    assert refused.exit_code == 2 and "not a library" in refused.stderr and (stray / "notes.txt").read_text() == "mine"


def test_a_library_on_milvus_lite_adds_rebuilds_and_answers(tmp_path, index_config):
    cfg = load_config("index", index_config, ["store.backend=milvus"])
    docs = make_documents(tmp_path, documents=6, paragraphs=20)
    library = tmp_path / "library"
    add_documents(library, [str(p) for p in docs[:3]], cfg)
    added = add_documents(library, [str(p) for p in docs[3:]], cfg)
    assert added.index["backend"] == "milvus" and added.index["operation"] == "add"
    rebuilt = rebuild_library(library, cfg)
    manifest = read_manifest(library / "index")
    assert rebuilt.index["operation"] == "rebuild" and manifest["store"]["backend"] == "milvus"
    assert manifest["added_since_build"] == 0 and manifest["count"] == rebuilt.index["items"]
    phrase, question = FACTS[1][2], FACTS[1][1]
    found = search_library(library, question, cfg, 4)
    assert fact_pages(library)[phrase] in [read.citation for read in found.reads]
