"""The benchmark's prompt template and middle truncation.

LongBench v2's protocol puts the whole document first, then the question and its four
choices, and asks for the answer as "The correct answer is (X)". Every condition uses the
same template; they differ only in how the document arrives (text, page images, or not at
all). A prompt is kept in three parts (what precedes the document, the document, what
follows it), so the optical condition puts its vision tokens exactly where the text
condition puts the document.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, TypeVar

from .data import LETTERS, LongBenchItem

T = TypeVar("T")

# The document sits between tags after a one-line instruction; the question follows it. In the
# optical condition the pages' vision blocks take the document's place between the same tags.
PREAMBLE = (
    "Read the document between the <document> tags, then answer the multiple-choice question that follows it."
    "\n\n<document>\n"
)
AFTER_DOCUMENT = "</document>\n\n"
NO_CONTEXT_INTRO = "Answer the multiple-choice question below.\n\n"
ANSWER_FORMAT = (
    "\n\nChoose one option. End your reply with one line in exactly this form: "
    '"The correct answer is (X)", where X is A, B, C or D.'
)


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


def question_block(item: LongBenchItem) -> str:
    lines = [f"Question: {item.question.strip()}", "Choices:"]
    lines += [f"({letter}) {choice.strip()}" for letter, choice in zip(LETTERS, item.choices)]
    return "\n".join(lines) + ANSWER_FORMAT


def document_prompt(item: LongBenchItem, document: str) -> PromptParts:
    """Document first, then question and choices: the template of the text conditions and,
    with ``document`` replaced by page images, of the optical condition."""
    return PromptParts(PREAMBLE, document, AFTER_DOCUMENT + question_block(item))


def no_context_prompt(item: LongBenchItem) -> PromptParts:
    """Question and choices only: how much the model answers from prior knowledge alone."""
    return PromptParts("", "", NO_CONTEXT_INTRO + question_block(item))


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
    ``question_block(item)`` reproduces the benchmark's prompt for that item."""
    return PromptParts(PREAMBLE, "", AFTER_DOCUMENT + question)
