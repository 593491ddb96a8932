"""Offline LongBench-schema items from the CVE corpus, and the cost benchmark that reads them."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from optical_cli.bench.data import LETTERS, load_items
from optical_cli.bench.synthetic import cve_document, longbench_item

REPO = Path(__file__).resolve().parent.parent


def test_document_is_whole_paragraphs_of_real_records_up_to_the_size():
    document, ids = cve_document(3000)
    paragraphs = document.split("\n\n")
    assert len(paragraphs) == len(ids) and all(p.startswith(f"{i}: ") for p, i in zip(paragraphs, ids))
    measured = sum(len(p) + 2 for p in paragraphs)  # each paragraph and its separator
    assert measured >= 3000 > measured - len(paragraphs[-1]) - 2  # stops at the first paragraph reaching the size


def test_item_asks_about_a_paragraph_of_its_document_and_the_answer_names_it():
    document, ids = cve_document(5000, start=100)
    item = longbench_item(document, ids, "x")
    opening = item["question"].split('"')[1]
    answer_id = item[f"choice_{item['answer']}"]
    assert f"{answer_id}: {opening}" in document
    assert len({item[f"choice_{letter}"] for letter in LETTERS}) == 4


def test_script_writes_items_the_benchmark_loads(tmp_path):
    out = tmp_path / "items.json"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "make_longbench_items.py"),
            "--chars",
            "2000",
            "--count",
            "2",
            "--output",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    items = load_items(str(out))
    assert [i.id for i in items] == ["cve-2000-0", "cve-2000-1"]
    assert all(len(i.context) >= 2000 for i in items) and items[0].context != items[1].context
    assert json.loads(out.read_text())[0]["domain"].startswith("Synthetic")


def test_bench_cost_runs_native_and_optical_on_the_same_documents(tmp_path):
    out = tmp_path / "cost.csv"
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "bench_cost.py"),
            "--size",
            "tiny",
            "--lengths",
            "128,512",
            "--device",
            "cpu",
            "--batch",
            "2",
            "--batch-length",
            "128",
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["length"], r["condition"]) for r in rows] == [
        ("128", "native"),
        ("128", "optical"),
        ("512", "native"),
        ("512", "optical"),
    ]
    for native, optical in (rows[:2], rows[2:]):
        assert native["doc_tokens"] == optical["doc_tokens"] and native["status"] == optical["status"] == "ok"
        ratio = float(optical["latency_s"]) / float(native["latency_s"])
        assert float(optical["optical_over_native_latency"]) == pytest.approx(ratio, rel=1e-3)
        assert int(optical["pages"]) >= 1 and native["pages"] == "0" and optical["truncated"] == "False"
        assert float(optical["doc_tokens_per_vision_token"]) == pytest.approx(
            int(optical["doc_tokens"]) / (64 * int(optical["pages"])), rel=1e-3
        )
        assert float(optical["encode_s"]) > 0 and float(native["encode_s"]) == 0
    assert int(rows[2]["doc_tokens"]) > int(rows[0]["doc_tokens"]) >= 128
    for row in rows:  # each condition says the load it ran under, and is flagged when that exceeded its cores
        loads = [float(row["load_before"]), float(row["load_after"])]
        assert (row["load_flag"] == "loaded") == (max(loads) > int(row["cores"])) and int(row["cores"]) >= 1
    assert ("LOADED: not a figure" in run.stdout) == any(r["load_flag"] == "loaded" for r in rows)
    assert out.with_suffix(".png").is_file() and "optical/native latency" in run.stdout
    with open(tmp_path / "cost-throughput.csv", newline="") as handle:
        rates = list(csv.DictReader(handle))
    assert [(r["engine"], r["condition"], r["items"], r["ok"], r["in_flight"]) for r in rates] == [
        ("hf", "native", "2", "2", "1"),
        ("hf", "optical", "2", "2", "1"),
    ]
    assert all(float(r["items_per_s"]) == pytest.approx(2 / float(r["wall_s"]), rel=1e-3) for r in rates)
