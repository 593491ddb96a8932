"""Offline LongBench-schema items from the CVE corpus: valid records whose answer is in the document."""

import json
import subprocess
import sys
from pathlib import Path

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
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_longbench_items.py"), "--chars", "2000", "--count", "2",
                    "--output", str(out)], check=True, capture_output=True)
    items = load_items(str(out))
    assert [i.id for i in items] == ["cve-2000-0", "cve-2000-1"]
    assert all(len(i.context) >= 2000 for i in items) and items[0].context != items[1].context
    assert json.loads(out.read_text())[0]["domain"].startswith("Synthetic")
