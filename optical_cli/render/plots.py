"""The render frontier's plot: the OCR judge's error against text tokens per vision token, one curve per
rendering, the DeepSeek-OCR paper's published points beside ours with their labels moved clear of ours."""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Annotation, Text

from ..plotting import new_figure, save_png


def write_frontier_plot(path: Path, rows: list[dict], published: tuple[dict, ...], max_error: float) -> None:
    """`sweep frontier`: ``frontier_figure`` written as a PNG."""
    save_png(frontier_figure(rows, published, max_error), path)


def frontier_figure(rows: list[dict], published: tuple[dict, ...], max_error: float) -> Figure:
    """Error (CER, 95% interval) against full-page text tokens per vision token, one curve per mode (and
    reflow / line spacing / font when they vary), font sizes annotated; the DeepSeek-OCR paper's
    published points (1 - precision, their reader) beside ours, their labels moved clear of ours."""
    figure, axis = new_figure((7.5, 5))
    ours = [_frontier_curve(axis, key, members, varying) for key, members, varying in _frontier_groups(rows)]
    px = [p["compression"] for p in published]
    py = [1.0 - p["precision"] for p in published]
    axis.plot(px, py, "k*--", markersize=11, label="DeepSeek-OCR paper (their reader, Fox): 1 - precision")
    theirs = [
        axis.annotate(
            p["label"] + " (theirs)",
            (p["compression"], 1.0 - p["precision"]),
            textcoords="offset points",
            xytext=(-20, 12),
            fontsize=8,
            arrowprops={"arrowstyle": "-", "color": "0.4", "linewidth": 0.6},
        )
        for p in published
    ]
    axis.axhline(max_error, color="grey", linestyle=":", label=f"sweep.max_error = {max_error:g}")
    axis.set_xlabel("text tokens per vision token (full pages)")
    axis.set_ylabel("character error rate (OCR judge; 95% interval)")
    axis.set_title("Compression frontier: denser pages against legibility")
    axis.set_ylim(bottom=0)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    _move_clear(figure, theirs, [label for labels in ours for label in labels])
    return figure


def _frontier_groups(rows: list[dict]):
    """(key, rows sorted by density, which key parts vary) per curve: mode, reflow, line spacing, font."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["mode"], row["reflow"], row["line_spacing"], row["font"]), []).append(row)
    varying = [len({key[i] for key in groups}) > 1 for i in range(4)]
    for key, members in sorted(groups.items(), key=lambda item: str(item[0])):
        yield key, sorted(members, key=lambda r: r["full_page_tokens_per_vision_token"]), varying


def _frontier_curve(axis, key: tuple, members: list[dict], varying: list[bool]) -> list:
    """One curve with its error bars and font-size labels; returns the labels."""
    x = [r["full_page_tokens_per_vision_token"] for r in members]
    y = [r["cer"] for r in members]
    err = [[max(0.0, r["cer"] - r["cer_low"]) for r in members], [max(0.0, r["cer_high"] - r["cer"]) for r in members]]
    parts = ("", f" reflow={key[1]}", f" spacing {key[2]:g}", f" {Path(key[3]).stem}")
    label = "ours: " + key[0] + "".join(part for part, shown in zip(parts, varying) if shown and part)
    axis.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label)
    return [
        axis.annotate(f"{r['font_size']}px", (a, b), textcoords="offset points", xytext=(4, 4), fontsize=8)
        for r, a, b in zip(members, x, y)
    ]


def _move_clear(figure: Figure, movable: list, fixed: list, step_points: float = 9.0, tries: int = 40) -> None:
    """Raise each movable annotation (in steps of ``step_points``) until its box overlaps no fixed
    annotation and no movable one placed before it: published labels never cover our own."""
    renderer = FigureCanvasAgg(figure).get_renderer()
    taken = [_text_box(text, renderer) for text in fixed]
    for text in movable:
        x, y = text.xyann
        for _ in range(tries):
            if not any(_text_box(text, renderer).overlaps(other) for other in taken):
                break
            y += step_points
            text.xyann = (x, y)
        taken.append(_text_box(text, renderer))


def _text_box(annotation: Annotation, renderer):
    """The display-space box of an annotation's text alone (its own extent includes the arrow)."""
    annotation.update_positions(renderer)
    return Text.get_window_extent(annotation, renderer)
