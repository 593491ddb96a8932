"""The benchmark runner with a fake reader: conditions, failure accounting, resume."""

import csv
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from bench_fakes import TOKENS_PER_PAGE, WORDS_PER_PAGE, BatchingFakeReader, FakeReader

from optical_cli.bench.data import load_items
from optical_cli.bench.runner import BenchSettings, log_path, parse_conditions, read_rows, run_benchmark
from optical_cli.bench.scoring import summarize_run
from optical_cli.distributed import Processes
from optical_cli.errors import InputError

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
    assert (
        by[("syn-short-easy-2", "native")]["status"] == "error"
        and "bad shape" in by[("syn-short-easy-2", "native")]["reason"]
    )
    assert by[("syn-short-easy-1", "native")]["status"] == "context_exceeded"  # 60 context tokens > 50
    assert len(rows) == 8  # every other item still ran
    block = summarize_run(rows, ["native", "optical"])["conditions"]["optical"]
    assert block["failures"] == {"oom": 1} and block["completed"] == 3 and block["n"] == 4
    assert block["accuracy"] == sum(r["correct"] for r in rows if r["condition"] == "optical") / 4


def _tear(path) -> None:
    text = path.read_text()
    path.write_text(text[: text.rstrip("\n").rfind("\n") + 20])  # the last record cut off mid-write


def test_resume_skips_finished_pairs_and_repairs_a_torn_row_twice(tmp_path):
    items = load_items(str(FIXTURE))[:3]
    path, conditions = tmp_path / "items.csv", ("native", "no-context")
    run_benchmark(FakeReader(), items[:2], _settings(conditions=conditions), path)
    _tear(log_path(path))
    with pytest.raises(InputError, match="--resume"):
        run_benchmark(FakeReader(), items, _settings(conditions=conditions), path)
    reader = FakeReader()
    rows = run_benchmark(reader, items, _settings(conditions=conditions), path, resume=True)
    assert len(rows) == 6 and len(read_rows(path)) == 6
    # the torn pair (item 2, no-context) and item 3's two pairs are the only ones run again
    assert len(reader.calls) == 3
    assert sorted((r["id"], r["condition"]) for r in rows) == sorted((i.id, c) for i in items for c in conditions)
    _tear(log_path(path))  # torn again: the last pair alone runs again, every pair once, items.csv agrees
    again = FakeReader()
    rows = run_benchmark(again, items, _settings(conditions=conditions), path, resume=True)
    assert len(again.calls) == 1 and len(read_rows(path)) == 6
    with open(path, newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [(r["id"], r["condition"]) for r in table] == [(r["id"], r["condition"]) for r in read_rows(path)]


def test_unknown_condition():
    assert parse_conditions(["no-context", "optical", "native"]) == ("native", "optical", "no-context")
    with pytest.raises(InputError, match="unknown condition.*visual.*choose from native, optical"):
        parse_conditions(["native", "visual"])


@dataclass
class ThreadProcess(Processes):
    """Process ``index`` of ``count``, played by a thread; ``wait`` is a barrier shared by the threads."""

    barrier: threading.Barrier | None = None

    def wait(self):
        self.barrier.wait(timeout=30)


def as_processes(count, run):
    """Call ``run(procs)`` on ``count`` threads at once, as ``accelerate launch`` would on processes."""
    barrier, results = threading.Barrier(count), [None] * count

    def one(index):
        try:
            results[index] = run(ThreadProcess(index, count, barrier=barrier))
        except BaseException as exc:  # noqa: BLE001 - a crashed process: the others see a broken barrier
            barrier.abort()
            results[index] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


class Crash(BaseException):
    """A process dying (not an item failing: the runner records those and goes on)."""


def _without_timing(rows):
    """Rows without what is measured rather than computed: seconds and peak memory (the process's
    resident set keeps growing between runs in one test process)."""
    return [{k: v for k, v in r.items() if not k.endswith("_s") and k != "peak_memory_gib"} for r in rows]


def test_processes_deal_out_items_and_the_main_one_merges_them_in_order(tmp_path):
    items = load_items(str(FIXTURE))[:5]
    alone = run_benchmark(FakeReader(), items, _settings(), tmp_path / "items.csv")
    path = tmp_path / "shared" / "items.csv"
    path.parent.mkdir()
    readers = [FakeReader(), FakeReader()]
    main, other = as_processes(
        2, lambda procs: run_benchmark(readers[procs.index], items, _settings(), path, procs=procs)
    )
    assert other is None and {q for _, q in readers[1].calls} == {
        items[1].question,
        items[3].question,
    }  # every other item
    assert sorted(path.parent.iterdir()) == [path, log_path(path)]  # the parts are merged and removed
    assert _without_timing(main) == _without_timing(read_rows(path)) == _without_timing(alone)


def test_resume_merges_parts_left_by_another_process_count(tmp_path):
    items = load_items(str(FIXTURE))[:4]
    path = tmp_path / "items.csv"
    dying = FakeReader(fail={(items[0].question, "pages"): Crash()})  # after its first row (native)
    results = as_processes(
        3,
        lambda procs: run_benchmark(
            dying if procs.index == 0 else FakeReader(), items[:3], _settings(), path, procs=procs
        ),
    )
    assert isinstance(results[0], Crash) and len(list(tmp_path.glob("items.part-*.jsonl"))) == 3
    with pytest.raises(InputError, match="--resume"):
        run_benchmark(FakeReader(), items, _settings(), path)
    reader = FakeReader()
    rows = run_benchmark(reader, items, _settings(), path, resume=True)  # one process now
    assert {q for _, q in reader.calls} == {
        items[0].question,
        items[3].question,
    }  # the lost process's item, the new one
    assert len(reader.calls) == 3 + 4  # item 1's native row was kept
    assert len(rows) == 16 and not list(tmp_path.glob("items.part-*"))
    assert [(r["id"], r["condition"]) for r in read_rows(path)] == [(i.id, c) for i in items for c in ALL]


def _comparable(rows):
    return [{k: v for k, v in r.items() if k not in ("latency_s", "render_s", "peak_memory_gib")} for r in rows]


def test_requests_in_flight_give_the_rows_of_one_at_a_time_in_groups(tmp_path):
    items = load_items(str(FIXTURE))[:3]
    alone = run_benchmark(FakeReader(), items, _settings(), tmp_path / "alone.csv")
    reader = BatchingFakeReader(in_flight=5)
    together = run_benchmark(reader, items, _settings(), tmp_path / "together.csv")
    assert reader.groups == [5, 5, 2]  # 3 items x 4 conditions, across item boundaries
    assert _comparable(together) == _comparable(alone)
    for row in together:  # its own work: preparation plus encode, adapter and engine time
        assert row["latency_s"] >= row["encode_s"] + row["adapter_s"] + row["prefill_s"] + row["decode_s"] - 1e-6
        assert row["latency_s"] < 1.0


def test_a_failed_request_in_a_group_fails_its_row_only_and_a_failed_group_is_retried_one_by_one(tmp_path):
    items = load_items(str(FIXTURE))[:4]
    oom = torch.OutOfMemoryError("CUDA out of memory")
    fail = {("rye", "pages"): oom}
    reader = BatchingFakeReader(in_flight=8, fail=fail, max_input_tokens=50)
    rows = run_benchmark(reader, items, _settings(conditions=("native", "optical")), tmp_path / "a.csv")
    by = {(r["id"], r["condition"]): r for r in rows}
    assert by[("syn-short-easy-1", "optical")]["status"] == "oom"
    assert by[("syn-short-easy-1", "native")]["status"] == "context_exceeded"
    assert reader.groups == [8]
    alone = run_benchmark(
        FakeReader(fail=fail, max_input_tokens=50),
        items,
        _settings(conditions=("native", "optical")),
        tmp_path / "alone.csv",
    )
    assert _comparable(rows) == _comparable(alone) and sum(r["status"] == "ok" for r in rows) == 3

    dead = BatchingFakeReader(in_flight=8, fail_groups=True, fail=fail, max_input_tokens=50)
    retried = run_benchmark(dead, items, _settings(conditions=("native", "optical")), tmp_path / "b.csv")
    assert _comparable(retried) == _comparable(rows)


def test_an_interrupted_batched_run_resumes_after_its_last_finished_group(tmp_path):
    items = load_items(str(FIXTURE))[:3]
    path = tmp_path / "items.csv"

    class Interrupted(BatchingFakeReader):
        def read_many(self, requests):
            if len(self.groups) == 2:
                raise KeyboardInterrupt
            return super().read_many(requests)

    with pytest.raises(KeyboardInterrupt):
        run_benchmark(Interrupted(in_flight=5), items, _settings(), path)
    assert len(read_rows(path)) == 10  # two whole groups on disk
    reader = BatchingFakeReader(in_flight=5)
    rows = run_benchmark(reader, items, _settings(), path, resume=True)
    assert reader.groups == [2] and len(rows) == 12
    assert _comparable(rows) == _comparable(run_benchmark(FakeReader(), items, _settings(), tmp_path / "alone.csv"))
