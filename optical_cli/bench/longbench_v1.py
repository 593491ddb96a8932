"""`optical bench longbench-v1`: LongBench (v1), the benchmark Glyph reports, through the one protocol.

The facts are THUDM/LongBench's (``LongBench/``, MIT): each dataset's answer length (``config/dataset2maxlen.json``,
the table below) and metric (``eval.py``'s ``dataset2metric``, ``metrics.py``: ``bench/metrics.py``). Its
prompts (``config/dataset2prompt.json``) are its own prose, not shipped: ``bench.prompts`` names the user's
copy, and a run without one exits 2 saying where to get it.
Items: ``<dataset>.jsonl`` files with ``input``, ``context``, ``answers``, ``length``, ``dataset``,
``language``, ``all_classes`` and ``_id``, from a local folder or from the hub's ``data.zip``.

The prompt is split at its ``{context}``: what precedes it is the instruction (text in every condition),
the context becomes pages or text, and what follows (the question and the answer cue) is text after it;
the reader joins context and what follows with one newline (where the template has none, as in ``lcc``,
that newline is added). Glyph rewrote the prompts for images (``dataset2vlmprompt.json``); ours keep
LongBench's words in every condition, so the conditions differ only in how the context arrives. LongBench
reads trec, triviaqa, samsum, lsht, lcc and repobench-p without a chat template; every reader here uses its
chat turn.
"""

from __future__ import annotations

import json
import random
import zipfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..models.loading import require_downloads
from ..prompts import PromptParts
from .benchmark import Scored, doubling_bin
from .config import SERVER_RESUMABLE, LongBenchV1Config
from .data import DatasetUnavailable, dataset_file
from .longbench import model_downloads
from .metrics import LONGBENCH_V1_METRICS, longbench_v1_score, task_score
from .runner import settings_from
from .scoring import condition_key
from .steps import BenchSelection, run_selection

V1_HUB_ID = "THUDM/LongBench"
# Tokens each dataset answers in: LongBench's config/dataset2maxlen.json (THUDM/LongBench, commit 2e00731)
LONGBENCH_V1_MAXLEN: dict[str, int] = {
    "narrativeqa": 128,
    "qasper": 128,
    "multifieldqa_en": 64,
    "multifieldqa_zh": 64,
    "hotpotqa": 32,
    "2wikimqa": 32,
    "musique": 32,
    "dureader": 128,
    "gov_report": 512,
    "qmsum": 512,
    "multi_news": 512,
    "vcsum": 512,
    "trec": 64,
    "triviaqa": 32,
    "samsum": 128,
    "lsht": 64,
    "passage_count": 32,
    "passage_retrieval_en": 32,
    "passage_retrieval_zh": 32,
    "lcc": 64,
    "repobench-p": 64,
}
PROMPTS_URL = "https://raw.githubusercontent.com/THUDM/LongBench/main/LongBench/config/dataset2prompt.json"
V1_FILES = ("summary.json", "score_by_length.png")
V1_RESUMABLE = {"bench.datasets", "bench.conditions", "bench.plots"} | SERVER_RESUMABLE


@dataclass
class V1Item:
    id: str
    dataset: str
    context: str
    input: str
    answers: list[str]
    all_classes: list[str]
    length: int  # LongBench's own length field (words; characters for Chinese)


class LongBenchV1:
    """LongBench v1 as a :class:`~optical_cli.bench.benchmark.Benchmark`."""

    title = "LongBench v1"
    item_columns = ("dataset", "length", "answers")
    groups = {"by_dataset": ("dataset", ()), "by_length": ("length", ())}
    chance = None

    def __init__(self, prompts: dict[str, str], maxlen: dict[str, int]):
        self.prompts, self.maxlen = prompts, maxlen

    def context(self, item: V1Item) -> str:
        return item.context

    def fields(self, item: V1Item) -> dict[str, Any]:
        length = doubling_bin(item.length, 4000, upper_inclusive=False)  # LongBench-E: 0-4K, 4K-8K, then doubling
        return {"dataset": item.dataset, "length": length, "answers": list(item.answers)}

    def _parts(self, item: V1Item) -> tuple[str, str]:
        head, _, tail = self.prompts[item.dataset].partition("{context}")
        tail = tail.replace("{input}", item.input)
        return head.replace("{input}", item.input), tail[1:] if tail.startswith("\n") else tail

    def document_prompt(self, item: V1Item, document: str) -> PromptParts:
        head, tail = self._parts(item)
        return PromptParts(head, document, tail)

    def no_context_prompt(self, item: V1Item) -> PromptParts:
        head, tail = self._parts(item)
        return PromptParts(head, "", tail)

    def score(self, item: V1Item, output: str) -> Scored:
        return Scored(output, longbench_v1_score(item.dataset, output, item.answers, item.all_classes))

    def max_new_tokens(self, item: V1Item) -> int | None:
        return self.maxlen.get(item.dataset)


def load_templates(prompts: str | None) -> tuple[dict[str, str], dict[str, int]]:
    """(each dataset's prompt template from ``bench.prompts``, each dataset's answer length)."""
    if not prompts:
        raise InputError(
            "bench.prompts is not set: LongBench v1's prompts are its own text, not shipped with optical; get "
            f"them with `curl -LO {PROMPTS_URL}` and pass --set bench.prompts=dataset2prompt.json"
        )
    path = Path(prompts)
    try:
        templates = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable dataset2prompt.json ({exc})") from None
    if not isinstance(templates, dict) or not all(isinstance(v, str) for v in templates.values()):
        raise InputError(f"{path}: a dataset2prompt.json maps each dataset to its prompt template (a string)")
    return templates, dict(LONGBENCH_V1_MAXLEN)


def read_dataset(source: str, dataset: str) -> list[dict]:
    """A dataset's records: ``<dataset>.jsonl`` in a local folder, a local data.zip, or the hub's data.zip."""
    path = Path(source)
    if path.is_dir():
        file = path / f"{dataset}.jsonl"
        if not file.is_file():
            raise InputError(f"{file} not found; bench.data must hold <dataset>.jsonl files (LongBench's data/ folder)")
        return _jsonl(file.read_text(encoding="utf-8"), str(file))
    archive = path if path.is_file() else dataset_file(source, "data.zip", "LongBench v1's data", "bench.data")
    try:
        with zipfile.ZipFile(archive) as zipped:
            return _jsonl(zipped.read(f"data/{dataset}.jsonl").decode("utf-8"), f"{archive}:data/{dataset}.jsonl")
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise InputError(f"{archive}: no readable data/{dataset}.jsonl ({type(exc).__name__})") from None


def _jsonl(text: str, where: str) -> list[dict]:
    try:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except ValueError as exc:
        raise InputError(f"{where}: not JSON lines ({exc})") from None


def parse_v1_record(record: dict, dataset: str, index: int) -> V1Item:
    try:
        answers = record["answers"]
        return V1Item(
            str(record.get("_id") or f"{dataset}-{index:05d}"),
            dataset,
            str(record["context"]),
            str(record["input"]),
            [str(a) for a in (answers if isinstance(answers, list) else [answers])],
            [str(c) for c in (record.get("all_classes") or [])],
            int(record.get("length") or 0),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"LongBench v1 {dataset} item {index}: missing or bad field ({exc})") from None


def select_v1(cfg: LongBenchV1Config, resume_from: Path | None = None, progress=None) -> BenchSelection:
    section = cfg.bench
    prompts, maxlen = load_templates(section.prompts)
    unknown = [d for d in section.datasets if d not in LONGBENCH_V1_METRICS or d not in prompts]
    if unknown:
        raise InputError(
            f"unknown LongBench v1 dataset(s) {', '.join(unknown)}; choose from {', '.join(LONGBENCH_V1_METRICS)}"
        )
    try:
        records, unavailable = {d: read_dataset(section.data, d) for d in section.datasets}, None
    except DatasetUnavailable as exc:
        records, unavailable = None, exc
    if not section.server:
        require_downloads(model_downloads(cfg))
    if records is None:
        raise unavailable
    items = []
    for dataset in section.datasets:
        mine = [parse_v1_record(r, dataset, i) for i, r in enumerate(records[dataset])]
        if section.num_samples is not None and len(mine) > section.num_samples:
            picked = set(random.Random(f"{cfg.runtime.seed}/{dataset}").sample(range(len(mine)), section.num_samples))
            mine = [item for n, item in enumerate(mine) if n in picked]
        items += mine
        if progress:
            progress(len(mine), description=f"read {dataset}")
    benchmark = LongBenchV1(prompts, maxlen)
    return BenchSelection(settings_from(section, cfg.runtime.seed), items, benchmark, section.data).count_done(
        resume_from
    )


def dataset_table(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per condition: each dataset's score as LongBench prints it (mean x100, 2 decimals) and their average."""
    table = {}
    for key in dict.fromkeys(condition_key(r) for r in rows):
        mine = [r for r in rows if condition_key(r) == key]
        scores = {
            d: task_score([r["score"] or 0.0 for r in mine if r["dataset"] == d])
            for d in dict.fromkeys(r["dataset"] for r in mine)
        }
        table[key] = scores | {"average": round(sum(scores.values()) / len(scores), 2)}
    return table


run_v1 = partial(run_selection, name="bench-longbench-v1", extra=lambda rows: {"longbench_v1": dataset_table(rows)})
