"""LongBench-schema items built offline from real text: the bundled CVE corpus.

A document is consecutive CVE records, one paragraph each (``CVE-id: description``), cut to a
length in characters or in tokens; its question asks which CVE the paragraph opening with a
given phrase describes, with four ids from the document as choices, so the item is answerable
from the document alone (by a trained reader; random weights only measure cost). Used by
``scripts/make_longbench_items.py`` and ``scripts/bench_cost.py``; the items are not
LongBench data and say so in their ``domain``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable, Iterator

from ..paths import CVE_CORPUS
from .data import LETTERS

DOMAIN = "Synthetic (CVE records, not LongBench data)"


def _records(corpus: Path) -> Iterator[dict]:
    with open(corpus, encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            if record.get("description"):
                yield record


def cve_paragraphs(corpus: Path = CVE_CORPUS, start: int = 0) -> Iterator[tuple[str, str]]:
    """(CVE id, paragraph) pairs from record ``start`` on, in corpus order."""
    for index, record in enumerate(_records(corpus)):
        if index >= start:
            yield record["id"], f"{record['id']}: {record['description']}"


def cve_document(
    size: int, measure: Callable[[str], int] = len, corpus: Path = CVE_CORPUS, start: int = 0
) -> tuple[str, list[str]]:
    """Whole paragraphs until ``measure(document)`` reaches ``size`` (characters by default; pass a
    token counter for tokens): (document, ids of its records in order)."""
    paragraphs, ids, used = [], [], 0
    for cve_id, paragraph in cve_paragraphs(corpus, start):
        paragraphs.append(paragraph)
        ids.append(cve_id)
        used += measure(paragraph + "\n\n")
        if used >= size:
            break
    return "\n\n".join(paragraphs), ids


def longbench_item(document: str, ids: list[str], item_id: str, seed: int = 0, length: str = "short") -> dict:
    """A LongBench v2 record asking which of four CVE ids the document's middle paragraph describes."""
    rng = random.Random(f"{item_id}/{seed}")
    paragraphs = document.split("\n\n")
    target = len(paragraphs) // 2
    answer_id, description = paragraphs[target].split(": ", 1)
    opening = " ".join(description.split()[:8])
    others = rng.sample([i for i in ids if i != answer_id], k=min(3, len(ids) - 1))
    choices = others + [answer_id]
    rng.shuffle(choices)
    choices += ["none of the above"] * (4 - len(choices))
    record = {
        "_id": item_id,
        "domain": DOMAIN,
        "sub_domain": "Which record",
        "difficulty": "easy",
        "length": length,
        "question": f'Which CVE does the paragraph that begins "{opening}" describe?',
        "answer": LETTERS[choices.index(answer_id)],
        "context": document,
    }
    record.update({f"choice_{letter}": choice for letter, choice in zip(LETTERS, choices)})
    return record
