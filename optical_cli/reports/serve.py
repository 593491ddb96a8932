"""`optical ask`'s report on stderr: what the answer cost (pages, vision and document tokens, seconds),
and whether the loop guard cut it."""

from __future__ import annotations

from rich.markup import escape

from .console import err, random_weights_banner


def print_answer_cost(answer) -> None:
    if answer.random_weights:
        random_weights_banner("the models are random; the answer is noise (a plumbing check, not a reading).")
    times = answer.timings
    err.print(
        escape(
            f"{answer.pages} of {answer.document_pages} pages, {answer.vision_tokens} vision tokens for "
            f"{answer.document_tokens} document tokens; {answer.input_tokens} input tokens; {answer.engine}: "
            f"{answer.model}; {times['total_s']:.2f} s "
            f"(prefill {times['prefill_s']:.2f}, decode {times['decode_s']:.2f})"
        ),
        soft_wrap=True,
    )
    if answer.finish_reason == "repetition":
        err.print("the loop guard cut the answer where it began to repeat itself (ask.loop_guard)", soft_wrap=True)
