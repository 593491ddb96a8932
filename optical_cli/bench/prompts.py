"""The benchmark's prompts: LongBench's question and choices in the template of ``optical_cli/prompts.py``.

LongBench v2's protocol puts the whole document first, then the question and its four
choices, and asks for the answer as "The correct answer is (X)". Every condition uses the
same template; they differ only in how the document arrives (text, page images, or not at
all). A prompt is kept in three parts (what precedes the document, the document, what
follows it), so the optical condition puts its vision tokens exactly where the text
condition puts the document.
"""

from __future__ import annotations

from ..prompts import AFTER_DOCUMENT, PREAMBLE, PromptParts
from .data import LETTERS, LongBenchItem

NO_CONTEXT_INTRO = "Answer the multiple-choice question below.\n\n"
ANSWER_FORMAT = (
    "\n\nChoose one option. End your reply with one line in exactly this form: "
    '"The correct answer is (X)", where X is A, B, C or D.'
)


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
