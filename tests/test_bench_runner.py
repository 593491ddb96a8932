"""The benchmark runner with a fake reader: conditions, failure accounting, resume."""

from pathlib import Path

import pytest
import torch

from optical_cli.bench.data import load_items
from optical_cli.bench.runner import BenchSettings, parse_conditions, read_rows, run_benchmark
from optical_cli.bench.scoring import summarize
from optical_cli.errors import InputError

from bench_fakes import TOKENS_PER_PAGE, WORDS_PER_PAGE, FakeReader

FIXTURE = Path(__file__).parent / "data" / "longbench_fixture.jsonl"
ALL = ("native", "optical", "native-matched", "no-context")


def _settings(**overrides):
    base = dict(conditions=ALL, max_context_tokens=60, max_pages=3, max_new_tokens=16, temperature=0.1, seed=0)
    return BenchSettings(**{**base, **overrides})


def test_conditions_and_rows(tmp_path):
    items = load_items(str(FIXTURE))[:3]
    reader = FakeReader()
    rows = run_benchmark(reader, items, _settings(), tmp_path / "items.csv")
    assert len(rows) == 12 and read_rows(tmp_path / "items.csv") == rows
    by = {(r["id"], r["condition"]): r for r in rows}
    item = items[0]
    doc_words = len(item.context.split())
    native = by[(item.id, "native")]
    assert native["truncated"] and native["context_tokens"] == 60 and native["doc_tokens"] == doc_words
    words = item.context.split()
    assert reader.prompts[0].document == " ".join(words[:30] + words[-30:])  # first and last half of the budget
    assert reader.prompts[0].question.index("Question:") < reader.prompts[0].question.index("(D)")
    assert native["prediction"] == "A" and native["correct"] == (item.answer == "A")
    optical = by[(item.id, "optical")]
    total_pages = -(-doc_words // WORDS_PER_PAGE)
    assert optical["pages"] == min(3, total_pages) and optical["truncated"] == (total_pages > 3)
    assert optical["context_tokens"] == TOKENS_PER_PAGE * optical["pages"]
    assert optical["prediction"] == "B" and optical["correct"] == (item.answer == "B")
    matched = by[(item.id, "native-matched")]
    assert matched["context_tokens"] == optical["context_tokens"]  # the same context budget as the pages
    assert by[(item.id, "no-context")]["context_tokens"] == 0
    assert all(r["status"] == "ok" and r["latency_s"] > 0 for r in rows)


def test_injected_oom_is_recorded_counted_wrong_and_the_run_continues(tmp_path):
    items = load_items(str(FIXTURE))[:4]
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    reader = FakeReader(fail={("rye", "pages"): oom, ("winch", "text"): ValueError("bad shape")}, max_input_tokens=50)
    rows = run_benchmark(reader, items, _settings(conditions=("native", "optical")), tmp_path / "items.csv")
    by = {(r["id"], r["condition"]): r for r in rows}
    failed = by[("syn-short-easy-1", "optical")]  # its answer is B, which the fake would have got right
    assert failed["status"] == "oom" and "out of memory" in failed["reason"] and not failed["correct"]
    assert by[("syn-short-easy-2", "native")]["status"] == "error" and "bad shape" in by[("syn-short-easy-2", "native")]["reason"]
    assert by[("syn-short-easy-1", "native")]["status"] == "context_exceeded"  # 60 context tokens > 50
    assert len(rows) == 8  # every other item still ran
    block = summarize(rows, ["native", "optical"])["conditions"]["optical"]
    assert block["failures"] == {"oom": 1} and block["completed"] == 3 and block["n"] == 4
    assert block["accuracy"] == sum(r["correct"] for r in rows if r["condition"] == "optical") / 4


def test_resume_skips_finished_pairs_and_repairs_a_torn_row(tmp_path):
    items = load_items(str(FIXTURE))[:3]
    path = tmp_path / "items.csv"
    run_benchmark(FakeReader(), items[:2], _settings(conditions=("native", "no-context")), path)
    text = path.read_text()
    path.write_text(text[: text.rstrip("\n").rfind("\n") + 20])  # tear the last record mid-write
    with pytest.raises(InputError, match="--resume"):
        run_benchmark(FakeReader(), items, _settings(conditions=("native", "no-context")), path)
    reader = FakeReader()
    rows = run_benchmark(reader, items, _settings(conditions=("native", "no-context")), path, resume=True)
    assert len(rows) == 6 and len(read_rows(path)) == 6
    # the torn pair (item 2, no-context) and item 3's two pairs are the only ones run again
    assert len(reader.calls) == 3
    assert sorted((r["id"], r["condition"]) for r in rows) == sorted((i.id, c) for i in items for c in ("native", "no-context"))


def test_unknown_condition():
    assert parse_conditions(["no-context", "optical", "native"]) == ("native", "optical", "no-context")
    with pytest.raises(InputError, match="unknown condition.*visual.*choose from native, optical"):
        parse_conditions(["native", "visual"])
