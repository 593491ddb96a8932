"""`optical bench mrcr`: OpenAI's MRCR (multi-round coreference) through the benchmark's one protocol.

An item is a long conversation holding several similar requests; its last user turn asks for the i-th
one, its reply to start with a random prefix. The facts (openai/mrcr's dataset card; Glyph's MRCR client,
thu-coai/Glyph ``evaluation/mrcr``):

- fields ``prompt`` (the messages, as JSON), ``answer``, ``random_string_to_prepend``, ``n_needles``,
  ``desired_msg_index``, ``total_messages``, ``n_chars``; files ``2needle.parquet``, ``4needle.parquet``,
  ``8needle.parquet`` on the hub;
- the grade: 0 without the prefix, else difflib's sequence-match ratio with the prefix removed
  (``metrics.mrcr_grade``), reported per needle count and length bin.

As Glyph renders it, the conversation before the last turn becomes one document of ``User:`` and
``Assistant:`` turns (pages, or text in the text conditions); the last user turn is the question, as text.
The official harness sends the conversation as chat turns instead; the text conditions here read it as a
transcript, so that every condition reads the same prompt.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pandas

from ..engines.chain import ChainSpec
from ..errors import InputError
from ..models.loading import require_downloads
from ..models.tokenizers import load_chat_tokenizer
from ..prompts import PromptParts
from .benchmark import Scored, doubling_bin
from .config import SERVER_RESUMABLE, MrcrConfig
from .data import DatasetUnavailable, dataset_file
from .longbench import model_downloads
from .metrics import mrcr_grade
from .runner import settings_from
from .steps import BenchSelection, run_selection

MRCR_HUB_ID = "openai/mrcr"
INTRO = "Below is a conversation between a user and an assistant.\n\n"
MRCR_FILES = ("summary.json", "score_by_length.png")
MRCR_RESUMABLE = {"bench.conditions", "bench.plots", "runtime.workers"} | SERVER_RESUMABLE


@dataclass
class MrcrItem:
    id: str
    transcript: str  # every turn before the last, as User:/Assistant: blocks
    request: str  # the last user turn
    answer: str
    prefix: str
    needles: int
    tokens: int  # the transcript's tokens in the reader's tokenizer
    bin: int  # the upper end of its power-of-two token bin


def transcript(messages: list[dict]) -> tuple[str, str]:
    """(the turns before the last, as 'User: ...' / 'Assistant: ...' blocks; the last user turn)."""
    if not messages or messages[-1].get("role") != "user":
        raise InputError("an MRCR prompt must end with the user's request")
    names = {"user": "User", "assistant": "Assistant", "system": "System"}
    turns = [f"{names.get(m['role'], m['role'])}: {m['content']}" for m in messages[:-1]]
    return "\n\n".join(turns), messages[-1]["content"]


class Mrcr:
    """MRCR as a :class:`~optical_cli.bench.benchmark.Benchmark`."""

    title = "MRCR"
    item_columns = ("needles", "length", "answer_chars")
    groups = {"by_needles": ("needles", ()), "by_bin": ("length", ())}
    chance = None

    def context(self, item: MrcrItem) -> str:
        return item.transcript

    def fields(self, item: MrcrItem) -> dict[str, Any]:
        return {"needles": item.needles, "length": item.bin, "answer_chars": len(item.answer)}

    def document_prompt(self, item: MrcrItem, document: str) -> PromptParts:
        return PromptParts(INTRO, document, item.request)

    def no_context_prompt(self, item: MrcrItem) -> PromptParts:
        return PromptParts("", "", item.request)

    def score(self, item: MrcrItem, output: str) -> Scored:
        return Scored(output[:200], mrcr_grade(output, item.answer, item.prefix))

    def max_new_tokens(self, item: MrcrItem) -> int | None:
        return None


def read_mrcr_records(source: str, needles: list[int]) -> list[tuple[str, dict]]:
    """(id, record) of a local .jsonl/.json/.parquet file, or of the hub's NNneedle.parquet files."""
    path = Path(source)
    if path.exists():
        return [(f"{path.stem}-{i:05d}", record) for i, record in enumerate(_read_file(path))]
    found = []
    for count in needles or [2, 4, 8]:
        file = dataset_file(source, f"{count}needle.parquet", f"MRCR's {count}-needle items", "bench.data")
        found += [(f"{count}needle-{i:05d}", record) for i, record in enumerate(_read_file(file))]
    return found


def _read_file(path: Path) -> list[dict]:
    try:
        if path.suffix == ".parquet":
            return pandas.read_parquet(path).to_dict("records")
        text = path.read_text(encoding="utf-8")
        return (
            json.loads(text)
            if path.suffix == ".json"
            else [json.loads(line) for line in text.splitlines() if line.strip()]
        )
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable MRCR file ({type(exc).__name__}: {exc})") from None


def parse_mrcr_record(record_id: str, record: dict, count_tokens) -> MrcrItem:
    try:
        messages = json.loads(record["prompt"]) if isinstance(record["prompt"], str) else list(record["prompt"])
        history, request = transcript(messages)
        item = MrcrItem(
            record_id,
            history,
            request,
            str(record["answer"]),
            str(record["random_string_to_prepend"]),
            int(record["n_needles"]),
            0,
            0,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"MRCR item {record_id}: missing or bad field ({type(exc).__name__}: {exc})") from None
    item.tokens = count_tokens(history)
    item.bin = doubling_bin(item.tokens, 8192, upper_inclusive=True)  # MRCR's 0-8K, 8K-16K, ... bins
    return item


def select_mrcr(cfg: MrcrConfig, resume_from: Path | None = None, progress=None) -> BenchSelection:
    """The items (a seeded sample per needle count; the data fails before any model loads)."""
    section = cfg.bench
    try:
        records, unavailable = read_mrcr_records(section.data, section.needles), None
    except DatasetUnavailable as exc:
        records, unavailable = None, exc
    if not section.server:
        require_downloads(model_downloads(cfg))
    if records is None:
        raise unavailable
    tokenizer = load_chat_tokenizer(ChainSpec.from_config(cfg, "bench").tokenizer_source())
    kept = [(i, r) for i, r in records if not section.needles or int(r.get("n_needles", 0)) in section.needles]
    if section.max_chars:
        kept = [(i, r) for i, r in kept if int(r.get("n_chars", 0)) <= section.max_chars]
    kept = _sample(kept, section.num_samples, cfg.runtime.seed)
    items = []
    for record_id, record in kept:
        items.append(parse_mrcr_record(record_id, record, lambda text: len(tokenizer.encode(text))))
        if progress:
            progress(1, description=f"read {record_id}")
    settings = settings_from(section, cfg.runtime.seed)
    return BenchSelection(settings, items, Mrcr(), section.data).count_done(resume_from)


def _sample(records: list[tuple[str, dict]], per_count: int | None, seed: int) -> list[tuple[str, dict]]:
    if per_count is None:
        return records
    chosen = []
    for count in sorted({int(r.get("n_needles", 0)) for _, r in records}):
        mine = [pair for pair in records if int(pair[1].get("n_needles", 0)) == count]
        picked = set(random.Random(seed * 1000 + count).sample(range(len(mine)), min(per_count, len(mine))))
        chosen += [pair for n, pair in enumerate(mine) if n in picked]
    return chosen


run_mrcr = partial(run_selection, name="bench-mrcr")
