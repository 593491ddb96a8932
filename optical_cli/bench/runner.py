"""Run the benchmark conditions over the selected items, one resumable record at a time.

Conditions, all on the same items with the same template and decoding:

- ``native``: the document as text, middle-truncated to ``max_context_tokens`` tokens;
- ``optical``: the document rendered to pages (middle-truncated to ``max_pages``), encoded,
  adapted and spliced where the text would be;
- ``native-matched``: the document as text, middle-truncated to as many tokens as the
  optical condition's pages occupy on that item (the same context budget, so the question
  is whether pages beat plain text at equal cost);
- ``no-context``: question and choices only (what the model knows without the document).

A failure on one item (out of memory, context too long, any error) is recorded with its
reason and counts as wrong; the run goes on. Each finished (item, condition) is appended to
the run's log (``items.jsonl``; ``items.csv`` is its table) at once, so an interrupted run resumes where
it stopped.
"""

from __future__ import annotations

import csv
import gc
import io
import json
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from ..artifacts import atomic_write_csv, atomic_write_json, to_json_line
from ..distributed import Processes
from ..engines.reader import ContextExceeded, Generation, Reader, ReadRequest, in_flight, read_all
from ..errors import InputError
from ..memory import PeakMemory, headline_gib, is_out_of_memory
from ..prompts import PromptParts, middle_truncate
from ..records import RecordLog
from .benchmark import LONGBENCH_V2, Benchmark, item_columns
from .config import SERVER_RESUMABLE
from .data import LongBenchItem, load_items, select_items
from .scoring import summarize_run

CONDITIONS = ("native", "optical", "native-matched", "no-context")
PAGE_CONDITIONS = ("optical", "native-matched")  # the conditions a render setting changes

ITEM_COLUMNS = item_columns(LONGBENCH_V2)  # bench longbench's items.csv
_LEGACY_COLUMNS = (  # items.csv of versions before items.jsonl and score
    "id",
    "condition",
    "length",
    "difficulty",
    "domain",
    "status",
    "reason",
    "answer",
    "prediction",
    "correct",
    "input_tokens",
    "context_tokens",
    "doc_tokens",
    "pages",
    "chars_per_page",
    "truncated",
    "latency_s",
    "render_s",
    "encode_s",
    "adapter_s",
    "prefill_s",
    "decode_s",
    "peak_memory_gib",
    "output",
)
_INT_COLUMNS = ("input_tokens", "context_tokens", "doc_tokens", "pages")
_FLOAT_COLUMNS = (
    "score",
    "chars_per_page",
    "latency_s",
    "render_s",
    "encode_s",
    "adapter_s",
    "prefill_s",
    "decode_s",
    "peak_memory_gib",
)
_BOOL_COLUMNS = ("correct", "truncated")


@dataclass(frozen=True)
class BenchSettings:
    conditions: tuple[str, ...]
    max_context_tokens: int
    max_pages: int
    max_new_tokens: int = 128
    temperature: float = 0.1
    seed: int = 0
    # page settings of a render grid (labels; "" is the reader's own): optical and native-matched run on each
    renders: tuple[str, ...] = ("",)


def parse_conditions(names: Sequence[str]) -> tuple[str, ...]:
    """Validated condition names in the canonical order (optical before native-matched)."""
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in CONDITIONS]
    if unknown:
        raise InputError(f"unknown condition(s) {', '.join(unknown)}; choose from {', '.join(CONDITIONS)}")
    if not names:
        raise InputError(f"no conditions given; choose from {', '.join(CONDITIONS)}")
    return tuple(c for c in CONDITIONS if c in names)


# ---------------------------------------------------------------------------------------
# items.jsonl: the run's record log (one row at a time, a torn last row repaired: records.py);
# items.csv: the same rows as a table, rewritten atomically from the log


def log_path(items_csv: Path) -> Path:
    return items_csv.with_suffix(".jsonl")


def read_back(row: dict[str, Any], columns: Sequence[str] = ITEM_COLUMNS) -> dict[str, Any]:
    """The row as it reads back from the log, so fresh and resumed rows look the same."""
    return json.loads(to_json_line({key: row.get(key) for key in columns}))


def read_rows(items_csv: Path, columns: Sequence[str] = ITEM_COLUMNS) -> list[dict[str, Any]]:
    """The rows of a run (its items.jsonl; an items.csv of earlier versions, which had no log, is read once
    into one)."""
    log = RecordLog(log_path(items_csv))
    if not log.path.exists() and items_csv.exists():
        log.rewrite(_legacy_csv_rows(items_csv))
    return [read_back(row, columns) for row in log.read()]


def write_table(items_csv: Path, columns: Sequence[str] = ITEM_COLUMNS) -> None:
    """items.csv from the log: every row, the benchmark's columns."""
    rows = [{key: _to_csv_value(row.get(key)) for key in columns} for row in RecordLog(log_path(items_csv)).read()]
    atomic_write_csv(items_csv, rows, list(columns))


def row_key(row: dict[str, Any]) -> tuple[str, str, str]:
    """What identifies a row: item, condition and (in a render grid) the page setting."""
    return row["id"], row["condition"], row.get("render") or ""


def _to_csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


def _legacy_csv_rows(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames is not None and tuple(reader.fieldnames) != _LEGACY_COLUMNS:
        raise InputError(
            f"{path}: not an items.csv of this benchmark version (columns differ); use another --output-dir"
        )
    rows = list(reader)
    if not text.endswith("\n") and rows:  # the last record was cut off mid-write
        rows.pop()
    return [_from_csv_row(r) for r in rows if None not in r and all(v is not None for v in r.values())]


def _from_csv_row(raw: dict[str, str]) -> dict[str, Any]:
    row: dict[str, Any] = dict(raw)
    for key in _INT_COLUMNS:
        row[key] = int(raw[key]) if raw[key] else None
    for key in _FLOAT_COLUMNS:
        row[key] = float(raw[key]) if raw.get(key) else None
    for key in _BOOL_COLUMNS:
        row[key] = raw[key] == "1"
    row["prediction"] = raw["prediction"] or None
    return row


# ---------------------------------------------------------------------------------------
# One (item, condition)


@dataclass
class _OpticalPlan:
    """The pages an item becomes, computed once and shared by optical and native-matched."""

    pages: list[Any]
    context_tokens: int
    truncated: bool
    render_s: float
    chars_per_page: float  # document characters per page of the whole layout: how full the pages are


@dataclass
class _Attempt:
    """What a condition knows before (and whether or not) the model answers."""

    prompt: PromptParts
    context_tokens: int = 0
    pages: int = 0
    truncated: bool = False
    render_s: float = 0.0
    chars_per_page: float | None = None


def _failure(exc: BaseException) -> tuple[str, str]:
    reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}".rstrip(": ")
    if isinstance(exc, ContextExceeded):
        return "context_exceeded", reason
    return ("oom" if is_out_of_memory(exc) else "error"), reason


def _release_memory() -> None:
    """After a failure: drop what the failed attempt held so the next item starts clean."""
    gc.collect()

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def seed_for(seed: int, item_id: str, condition: str) -> int:
    """Sampling at temperature 0.1 is seeded per (item, condition): reruns and resumes agree."""
    return (seed * 1_000_003 + zlib.crc32(f"{item_id}/{condition}".encode())) % (2**31)


class _ItemRunner:
    """Runs the conditions of one item under one page setting, sharing the optical plan between two of them.

    ``reader`` reads text; ``pages`` (the same reader, or one drawing pages under another render setting of
    a grid) renders and reads pages; ``render`` is that setting's label ("" outside a grid)."""

    def __init__(
        self,
        reader: Reader,
        settings: BenchSettings,
        item: Any,
        benchmark: Benchmark = LONGBENCH_V2,
        pages: Reader | None = None,
        render: str = "",
        token_ids: dict[str, list[int]] | None = None,
    ):
        self.reader = reader
        self.pages = pages or reader
        self.settings = settings
        self.item = item
        self.benchmark = benchmark
        self.render = render
        self.context = benchmark.context(item)
        self._plan: _OpticalPlan | None = None
        self._token_ids = {} if token_ids is None else token_ids  # {"document": ids}, shared across settings

    def doc_ids(self) -> list[int]:
        """The document's token ids, computed once per item (untimed: measuring the length
        is bookkeeping, not part of any condition's cost)."""
        if "document" not in self._token_ids:
            self._token_ids["document"] = list(self.reader.encode_text(self.context))
        return self._token_ids["document"]

    def plan(self) -> _OpticalPlan:
        if self._plan is None:
            start = time.perf_counter()
            kept, total = self.pages.render(self.context, self.settings.max_pages)
            render_s = time.perf_counter() - start
            self._plan = _OpticalPlan(
                kept,
                self.pages.vision_tokens(kept),
                len(kept) < total,
                render_s,
                len(self.context) / max(1, total),
            )
        return self._plan

    def _text_attempt(self, budget: int) -> _Attempt:
        ids = self.doc_ids()
        kept, truncated = middle_truncate(ids, budget)
        text = self.reader.decode_text(kept) if truncated else self.context
        return _Attempt(self.benchmark.document_prompt(self.item, text), context_tokens=len(kept), truncated=truncated)

    def attempt(self, condition: str) -> tuple[_Attempt, ReadRequest]:
        s = self.settings
        options = dict(
            max_new_tokens=self.benchmark.max_new_tokens(self.item) or s.max_new_tokens,
            temperature=s.temperature,
            seed=seed_for(s.seed, self.item.id, condition),
        )
        if condition == "native":
            attempt = self._text_attempt(s.max_context_tokens)
        elif condition == "no-context":
            attempt = _Attempt(self.benchmark.no_context_prompt(self.item))
        elif condition == "native-matched":
            attempt = self._text_attempt(self.plan().context_tokens)
        elif condition == "optical":
            plan = self.plan()
            attempt = _Attempt(
                self.benchmark.document_prompt(self.item, ""),
                context_tokens=plan.context_tokens,
                pages=len(plan.pages),
                truncated=plan.truncated,
                render_s=plan.render_s,
                chars_per_page=plan.chars_per_page,
            )
            return attempt, ReadRequest(attempt.prompt, pages=plan.pages, **options)
        else:
            raise InputError(f"unknown condition {condition!r}; choose from {', '.join(CONDITIONS)}")
        return attempt, ReadRequest(attempt.prompt, **options)

    def new_row(self, condition: str) -> dict[str, Any]:
        """The row before anything is tried: the item's own columns, nothing answered yet."""
        row: dict[str, Any] = {"id": self.item.id, "condition": condition, **self.benchmark.fields(self.item)}
        if condition in PAGE_CONDITIONS and self.render:
            row["render"] = self.render
        row.update(
            status="ok",
            reason="",
            prediction=None,
            score=0.0,
            correct=False,
            output="",
            pages=0,
            truncated=False,
            render_s=0.0,
            encode_s=0.0,
            adapter_s=0.0,
            prefill_s=None,
            decode_s=None,
            latency_s=0.0,
        )
        return row

    def prepare(self, condition: str) -> _Pending:
        """The row as far as it goes before the model answers, and the request for the model
        (None when preparing already failed: the row then holds the failure)."""
        row = self.new_row(condition)
        try:
            row["doc_tokens"] = len(self.doc_ids())
            if condition == "native-matched":
                self.plan()  # its budget comes from the pages; rendering them is the optical condition's cost
        except Exception as exc:  # noqa: BLE001 - recorded like any other failure
            row["status"], row["reason"] = _failure(exc)
            return _Pending(row, None, 0.0, self)
        start = time.perf_counter()
        try:
            attempt, request = self.attempt(condition)
        except Exception as exc:  # noqa: BLE001 - any failure is recorded on the item and counted wrong
            row["status"], row["reason"] = _failure(exc)
            return _Pending(row, None, time.perf_counter() - start, self)
        row.update(
            context_tokens=attempt.context_tokens,
            pages=attempt.pages,
            truncated=attempt.truncated,
            render_s=attempt.render_s,
            chars_per_page=attempt.chars_per_page,
        )
        return _Pending(row, request, time.perf_counter() - start, self)


@dataclass
class _Pending:
    row: dict[str, Any]
    request: ReadRequest | None
    prepare_s: float  # building the prompt (rendering the pages, for the first condition that needs them)
    item_runner: _ItemRunner | None = None


def _finished_row(pending: _Pending, outcome: Generation | Exception | None, latency_s: float) -> dict[str, Any]:
    """The row once the model answered (or failed); ``latency_s`` is the model call's share."""
    row = pending.row
    if isinstance(outcome, Exception):
        row["status"], row["reason"] = _failure(outcome)
    elif outcome is not None:
        scored = pending.item_runner.benchmark.score(pending.item_runner.item, outcome.text)
        row.update(
            output=outcome.text,
            prediction=scored.prediction,
            score=scored.score,
            correct=scored.score == 1.0,
            input_tokens=outcome.input_tokens,
            encode_s=outcome.encode_s,
            adapter_s=outcome.adapter_s,
            prefill_s=outcome.prefill_s,
            decode_s=outcome.decode_s,
        )
    row["latency_s"] = pending.prepare_s + latency_s
    return row


def _model_seconds(outcome: Generation | Exception | None, asked: int, wall: float) -> float:
    """A row's share of the model call: all of it when it was alone, its own times when it shared
    the call, nothing when it never reached the model (or failed inside a shared call)."""
    if outcome is None:
        return 0.0
    if asked == 1:
        return wall
    if isinstance(outcome, Exception):
        return 0.0
    return outcome.encode_s + outcome.adapter_s + (outcome.prefill_s or 0.0) + (outcome.decode_s or 0.0)


def _by_reader(reader: Reader, asked: Sequence[_Pending]) -> list[tuple[Reader, list[_Pending]]]:
    """The requests grouped by the reader that answers them: pages by the reader of their render setting
    (in a grid of modes, one that encodes in that mode), everything else by ``reader``."""
    groups: dict[int, tuple[Reader, list[_Pending]]] = {}
    for p in asked:
        engine = p.item_runner.pages if p.request.pages is not None else reader
        groups.setdefault(id(engine), (engine, []))[1].append(p)
    return list(groups.values())


def run_rows(reader: Reader, pairs: Sequence[tuple[_ItemRunner, str]], memory: PeakMemory) -> list[dict[str, Any]]:
    """(item, condition) pairs as rows. One pair at a time, a row's latency is the wall time of its
    preparation and model call and its peak memory its own; several in flight (a reader with
    ``read_many``), a row's latency is its preparation plus its own encode, adapter and engine
    time (queueing included), and every row carries the group's peak memory."""
    with memory.stage() as peaks:
        pending = [item_runner.prepare(condition) for item_runner, condition in pairs]
        asked = [p for p in pending if p.request is not None]
        start = time.perf_counter()
        answered = {}
        for engine, share in _by_reader(reader, asked):
            answered.update(zip(map(id, share), read_all(engine, [p.request for p in share])))
        wall = time.perf_counter() - start
        rows = [
            _finished_row(p, answered.get(id(p)), _model_seconds(answered.get(id(p)), len(asked), wall))
            for p in pending
        ]
    for row in rows:
        row["peak_memory_gib"] = headline_gib(peaks)
    if any(row["status"] != "ok" for row in rows):
        _release_memory()  # out here, once the exceptions and their frames (holding tensors) are gone
    return rows


# ---------------------------------------------------------------------------------------
# The whole run


def wanted_keys(items: Sequence[Any], settings: BenchSettings) -> list[tuple[str, str, str]]:
    """Every (item, condition, render setting) row of a selection, in run order."""
    return [
        (item.id, condition, render)
        for item in items
        for condition in settings.conditions
        for render in (settings.renders if condition in PAGE_CONDITIONS else ("",))
    ]


def run_benchmark(
    reader: Reader,
    items: Sequence[Any],
    settings: BenchSettings,
    items_csv: Path,
    *,
    resume: bool = False,
    progress: Callable[..., None] | None = None,
    procs: Processes | None = None,
    memory: PeakMemory | None = None,
    benchmark: Benchmark = LONGBENCH_V2,
    page_readers: Mapping[str, Reader] | None = None,
) -> list[dict[str, Any]] | None:
    """Run every (item, condition, render setting) not yet in the log beside ``items_csv`` (items.jsonl);
    return the rows of this selection. items.csv shows the log's rows as a table, in ``benchmark``'s columns.

    Under ``accelerate launch`` every process calls this: the items still to do are dealt out
    in turn (an item's conditions stay together: native-matched reuses optical's pages), each
    process appends to its own ``items.part-NN.jsonl``, and the main process merges them into
    items.jsonl in item and condition order, whatever the process count or resume history.
    It returns the rows there and None elsewhere. Parts left by an interrupted run of any process
    count are merged first on --resume. ``memory`` (default: one on ``reader.device``) measures
    each row's peak and the run's. ``page_readers`` maps each of ``settings.renders`` to the reader
    that draws and reads its pages (default: ``reader`` for the one setting "").
    """
    procs = procs or Processes()
    memory = memory or PeakMemory(reader.device)
    columns = item_columns(benchmark)
    if not resume and (_has_rows(items_csv) or _part_logs(items_csv)):
        raise InputError(
            f"{items_csv} already exists; pass --resume to continue that run or choose another --output-dir"
        )
    order = {item.id: n for n, item in enumerate(items)}
    if resume and procs.is_main:
        _consolidate(items_csv, order, columns, settings.renders)
    procs.wait()  # every process reads the merged file
    existing = read_rows(items_csv, columns) if resume else []
    done = {row_key(row) for row in existing}
    wanted = set(wanted_keys(items, settings))
    rows = [row for row in existing if row_key(row) in wanted]
    todo = [item for item in items if any(key not in done for key in wanted_keys([item], settings))]
    mine = todo[procs.index :: procs.count]
    if progress:
        total = len(rows) + sum(key not in done for key in wanted_keys(mine, settings))
        progress(len(rows) if procs.count == 1 else 0, total=total, description="resumed" if rows else None)
    target = RecordLog(log_path(items_csv) if procs.count == 1 else _part(items_csv, procs.index))
    readers = dict(page_readers or {"": reader})
    for group in _groups(reader, readers, settings, benchmark, mine, done):  # each group is on disk before the next
        for row in run_rows(reader, group, memory):
            target.append(read_back(row, columns))
            rows.append(read_back(row, columns))
            if progress:
                progress(1, description=f"{row['condition']} {row['id']}: {row['status']}")
        if procs.count == 1:
            write_table(items_csv, columns)
    procs.wait()  # every part is complete
    if not procs.is_main:
        return None
    _consolidate(items_csv, order, columns, settings.renders)
    return [row for row in read_rows(items_csv, columns) if row_key(row) in wanted]


def _groups(
    reader: Reader,
    page_readers: Mapping[str, Reader],
    settings: BenchSettings,
    benchmark: Benchmark,
    items: Sequence[Any],
    done: set,
):
    """The rows still to do, in groups of as many as the reader takes at once; an item's pages live only
    as long as a group that needs them, and its token ids are counted once for every render setting."""
    size, group = in_flight(reader), []
    for item in items:
        token_ids: dict[str, list[int]] = {}  # shared by the item's render settings
        runners: dict[str, _ItemRunner] = {}
        for condition, render in [(c, r) for i, c, r in wanted_keys([item], settings) if (i, c, r) not in done]:
            label = render or settings.renders[0]  # text conditions: the first setting's runner (pages shared)
            if label not in runners:
                pages = page_readers.get(label, reader)
                runners[label] = _ItemRunner(reader, settings, item, benchmark, pages, label, token_ids)
            group.append((runners[label], condition))
            if len(group) == size:
                yield group
                group = []
    if group:
        yield group


def throughput(rows_run: int, wall_s: float, conditions: int, in_flight: int) -> dict[str, Any]:
    """What this invocation got through: rows (and items: rows / conditions) per second of wall time,
    model loading excluded, and how many requests were in flight."""
    return {
        "rows": rows_run,
        "wall_s": round(wall_s, 3),
        "in_flight": in_flight,
        "rows_per_s": rows_run / wall_s if wall_s > 0 else None,
        "items_per_s": rows_run / conditions / wall_s if wall_s > 0 and conditions else None,
    }


def resume_progress(
    items_csv: Path, items: Sequence[Any], settings: BenchSettings, columns: Sequence[str] = ITEM_COLUMNS
) -> tuple[int, int]:
    """(rows of this selection already in the run's log or its per-process parts, rows wanted)."""
    wanted = set(wanted_keys(items, settings))
    found = read_rows(items_csv, columns) + [row for part in _part_logs(items_csv) for row in RecordLog(part).read()]
    return len(wanted & {row_key(row) for row in found}), len(wanted)


def _has_rows(items_csv: Path) -> bool:
    return any(path.exists() and path.stat().st_size > 0 for path in (items_csv, log_path(items_csv)))


def _part(items_csv: Path, process: int) -> Path:
    return items_csv.with_name(f"{items_csv.stem}.part-{process:02d}.jsonl")


def _part_logs(items_csv: Path) -> list[Path]:
    return sorted(items_csv.parent.glob(f"{items_csv.stem}.part-*.jsonl"))


def _consolidate(
    items_csv: Path, order: dict[str, int], columns: Sequence[str] = ITEM_COLUMNS, renders: Sequence[str] = ("",)
) -> None:
    """Fold the processes' part logs into the run's log and sort it in item, condition and render order
    (items outside this selection last, as they were), atomically; then remove the parts and write
    items.csv. A row met twice (a crash between writing and removing) keeps its first copy."""
    parts = _part_logs(items_csv)
    rank = {c: n for n, c in enumerate(CONDITIONS)}
    render_rank = {r: n for n, r in enumerate(renders)}
    rows, seen = [], set()
    found = read_rows(items_csv, columns) + [read_back(r, columns) for part in parts for r in RecordLog(part).read()]
    for row in found:
        if row_key(row) not in seen:
            seen.add(row_key(row))
            rows.append(row)

    def place(row: dict[str, Any]) -> tuple:
        if row["id"] not in order:
            return (len(order), 0, 0)
        return (order[row["id"]], rank[row["condition"]], render_rank.get(row.get("render") or "", len(render_rank)))

    ordered = sorted(rows, key=place)
    if parts or ordered != rows:
        RecordLog(log_path(items_csv)).rewrite(ordered)
    for part in parts:
        part.unlink()
    if ordered:
        write_table(items_csv, columns)


# ---------------------------------------------------------------------------------------
# A whole benchmark run: data -> rows -> summary.json and plots


def settings_from(section: Any, seed: int) -> BenchSettings:
    """Runner settings from the config's ``bench`` section."""
    return BenchSettings(
        conditions=parse_conditions(section.conditions),
        max_context_tokens=section.max_context_tokens,
        max_pages=section.max_pages,
        max_new_tokens=section.max_new_tokens,
        temperature=section.temperature,
        seed=seed,
    )


def load_selection(section: Any, seed: int) -> list[LongBenchItem]:
    """The items the config (and CLI flags folded into it) asks for."""
    return select_items(
        load_items(section.data, section.split),
        num_samples=section.num_samples,
        ids=section.ids,
        lengths=section.lengths,
        difficulties=section.difficulties,
        domains=section.domains,
        seed=seed,
    )


def write_summary(
    rows: list[dict[str, Any]],
    settings: BenchSettings,
    out_dir: Path,
    *,
    benchmark: Benchmark = LONGBENCH_V2,
    reader_description: str,
    random_weights: bool,
    data_source: str,
    parameters: dict | None = None,
    peak_memory_gib: dict | None = None,
    conventions: dict | None = None,
    throughput: dict | None = None,
) -> dict[str, Any]:
    """Write ``summary.json`` for the rows of this selection; return the summary."""
    summary = summarize_run(rows, settings.conditions, benchmark.groups, benchmark.chance)
    summary.update(
        benchmark=benchmark.title,
        models=reader_description,
        random_weights=random_weights,
        data=data_source,
        parameters=parameters or {},
        peak_memory_gib=peak_memory_gib or {},
        conventions=conventions or {},
        throughput=throughput or {},
        items=len({row["id"] for row in rows}),
        settings={
            "conditions": list(settings.conditions),
            "max_context_tokens": settings.max_context_tokens,
            "max_pages": settings.max_pages,
            "max_new_tokens": settings.max_new_tokens,
            "temperature": settings.temperature,
            "seed": settings.seed,
            **({"renders": list(settings.renders)} if settings.renders != ("",) else {}),
        },
        note=(
            "RANDOM WEIGHTS: these accuracies test the pipeline and say nothing about reading" if random_weights else ""
        ),
    )
    atomic_write_json(out_dir / "summary.json", summary)
    return summary


# Keys that may change between a run and its --resume: which items and conditions to run.
BENCH_RESUMABLE = {
    "bench.num_samples",
    "bench.ids",
    "bench.lengths",
    "bench.difficulties",
    "bench.domains",
    "bench.conditions",
    "bench.plots",
    "page_cache.dir",
    "page_cache.max_gb",
    "runtime.workers",
} | SERVER_RESUMABLE
