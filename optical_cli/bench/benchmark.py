"""What the runner needs from a benchmark, and LongBench v2's answer to it.

The runner (``runner.py``) is one protocol for every benchmark: the same four conditions, engines or
a server, resume, statistics. A benchmark module (``longbench``, ``ruler``, ``mrcr``,
``longbench_v1``) brings only what differs: its items, its prompt template split around the
document, its scorer, the columns of its ``items.csv`` and the groups its summary reports by.

Every row carries ``score`` (0 to 1: the benchmark's own per-item score) and ``correct`` (full
credit: score 1); accuracies are mean scores, with a Wilson interval when every score is 0 or 1
and a bootstrap interval otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

from ..prompts import PromptParts
from .data import LongBenchItem
from .prompts import document_prompt, no_context_prompt
from .scoring import CHANCE, LONGBENCH_V2_GROUPS, extract_answer

# Columns every benchmark's items.csv has (a benchmark adds its own after ``condition``).
CORE_COLUMNS_HEAD = ("id", "condition")
CORE_COLUMNS_TAIL = (
    "status",
    "reason",
    "prediction",
    "score",
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


@dataclass(frozen=True)
class Scored:
    """A benchmark's reading of one answer: what it extracted and the item's score in [0, 1]."""

    prediction: Any
    score: float


def doubling_bin(value: int, first: int, *, upper_inclusive: bool) -> int:
    """The upper end of the bin holding ``value`` among bins ending at ``first``, ``2 * first``, ...:
    MRCR's token bins hold their upper end (0-8,192 tokens is the first); LongBench-E's length bins
    do not (4,000 words starts the second)."""
    upper = first
    while value > upper or (value == upper and not upper_inclusive):
        upper *= 2
    return upper


class Benchmark(Protocol):
    #: Its name in titles and records (``LongBench v2``, ``RULER``, ...).
    title: str
    #: Its own columns in items.csv, between ``condition`` and the common ones.
    item_columns: tuple[str, ...]
    #: Summary groups: summary key -> (row column, the values in report order; empty: as met).
    groups: Mapping[str, tuple[str, Sequence[Any]]]
    #: What guessing scores (LongBench v2: 0.25), or None.
    chance: float | None

    def context(self, item: Any) -> str:
        """The document: what becomes pages, or text truncated to a budget."""
        ...

    def fields(self, item: Any) -> dict[str, Any]:
        """The item's own columns on every row."""
        ...

    def document_prompt(self, item: Any, document: str) -> PromptParts: ...

    def no_context_prompt(self, item: Any) -> PromptParts: ...

    def score(self, item: Any, output: str) -> Scored: ...

    def max_new_tokens(self, item: Any) -> int | None:
        """The item's own answer length (LongBench v1's dataset2maxlen, RULER's tokens to generate),
        or None for the settings' ``max_new_tokens``."""
        ...


def item_columns(benchmark: Benchmark) -> tuple[str, ...]:
    """Every column of the benchmark's items.csv, in order."""
    return CORE_COLUMNS_HEAD + tuple(benchmark.item_columns) + CORE_COLUMNS_TAIL


class LongBenchV2:
    """LongBench v2: four choices, the letter extracted by the official two patterns, 1 or 0."""

    title = "LongBench v2"
    item_columns = ("length", "difficulty", "domain", "answer")
    groups = LONGBENCH_V2_GROUPS
    chance = CHANCE

    def context(self, item: LongBenchItem) -> str:
        return item.context

    def fields(self, item: LongBenchItem) -> dict[str, Any]:
        return {"length": item.length, "difficulty": item.difficulty, "domain": item.domain, "answer": item.answer}

    def document_prompt(self, item: LongBenchItem, document: str) -> PromptParts:
        return document_prompt(item, document)

    def no_context_prompt(self, item: LongBenchItem) -> PromptParts:
        return no_context_prompt(item)

    def score(self, item: LongBenchItem, output: str) -> Scored:
        letter = extract_answer(output)
        return Scored(letter, 1.0 if letter == item.answer else 0.0)

    def max_new_tokens(self, item: LongBenchItem) -> int | None:
        return None


LONGBENCH_V2 = LongBenchV2()
