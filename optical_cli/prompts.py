"""The prompt every engine reads: a document between tags, then a question; and middle truncation.

One template for the benchmark's conditions (bench/prompts.py adds LongBench's question and
choices), ``optical ask`` and the vLLM model directory's chat template. A prompt is kept in three
parts (what precedes the document, the document, what follows it), so pages put their vision
tokens exactly where text puts the document.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, TypeVar

T = TypeVar("T")

# The document sits between tags after a one-line instruction; the question follows it. In the
# optical condition the pages' vision blocks take the document's place between the same tags.
PREAMBLE = (
    "Read the document between the <document> tags, then answer the multiple-choice question that follows it."
    "\n\n<document>\n"
)
AFTER_DOCUMENT = "</document>\n\n"


@dataclass(frozen=True)
class PromptParts:
    """The user turn: ``preamble``, ``document`` (empty for no-context), then ``question``
    (closing tag, question, choices, answer format). The reader joins document and question
    with one newline, as the chat layout in ``models/vlm.py`` does."""

    preamble: str
    document: str
    question: str

    @property
    def text(self) -> str:
        return self.preamble + (f"{self.document}\n" if self.document else "") + self.question


def middle_truncate(sequence: Sequence[T], budget: int) -> tuple[list[T], bool]:
    """Keep the first half and the last half of ``budget`` elements; the middle goes.

    Works on token ids (the text conditions) and on pages (the optical condition). With an
    odd budget the extra element goes to the end, which carries the question's neighbourhood.
    """
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    items = list(sequence)
    if len(items) <= budget:
        return items, False
    head = budget // 2
    tail = budget - head
    return items[:head] + (items[len(items) - tail :] if tail else []), True


def question_prompt(question: str) -> PromptParts:
    """A free question about a document read as pages (``optical ask``): the optical condition's
    template with ``question`` where the benchmark puts its question and choices, so asking
    bench.prompts ``question_block(item)`` reproduces the benchmark's prompt for that item."""
    return PromptParts(PREAMBLE, "", AFTER_DOCUMENT + question)
