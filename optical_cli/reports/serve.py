"""`optical ask`'s report on stderr: what was read and why (notes, citations), what the answer cost (pages,
vision and document tokens, pages encoded, seconds) and whether the loop guard cut it; and the report of a
library's change (index add-documents / remove-documents)."""

from __future__ import annotations

from rich.markup import escape

from .console import emit_json, err, print_table, random_weights_banner, warn


def print_answer_cost(answer) -> None:
    if answer.random_weights:
        random_weights_banner("the models are random; the answer is noise (a plumbing check, not a reading).")
    for note in answer.notes:
        err.print(f"[dim]note: {escape(note)}[/]", soft_wrap=True)
    if answer.select in ("retrieve", "library"):
        err.print(escape("read: " + ", ".join(answer.citations)), soft_wrap=True)
    times = answer.timings
    encoded = "" if times.get("pages_encoded") is None else f", {times['pages_encoded']} pages encoded"
    rendering = answer.rendering or {}
    drawn = str(rendering.get("mode")) + (f" at {rendering['font_size']} px" if rendering.get("font_size") else "")
    tokens = "" if answer.document_tokens is None else f" for {answer.document_tokens} document tokens"
    err.print(
        escape(
            f"{answer.pages} of {answer.document_pages} pages ({drawn}), {answer.vision_tokens} vision tokens{tokens}; "
            f"{answer.input_tokens} input tokens; {answer.engine}: {answer.model}; {times['total_s']:.2f} s "
            f"(prefill {times['prefill_s']:.2f}, decode {times['decode_s']:.2f}{encoded})"
        ),
        soft_wrap=True,
    )
    if answer.finish_reason == "repetition":
        err.print("the loop guard cut the answer where it began to repeat itself (ask.loop_guard)", soft_wrap=True)


def print_library_change(report, json_out: bool) -> None:
    """``index add-documents`` / ``remove-documents``: a table, the notes, the rebuild advice; JSON with --json."""
    fields = report.as_dict()
    shown = {key: value for key, value in fields.items() if key not in ("notes", "index")}
    shown.update({key: len(value) for key, value in shown.items() if isinstance(value, list)})
    print_table("library", list(shown.items()))
    for note in report.notes:
        warn(note)
    if report.index.get("rebuild_due"):
        warn(
            f"{report.index['changed_share']:.0%} of the passages the library's energy model was built on were "
            f"added or deleted since: rebuild it with `optical index add-documents {report.library} --rebuild`"
        )
    if json_out:
        emit_json(fields)
