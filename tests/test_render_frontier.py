"""`optical sweep frontier`: the compression frontier and its OCR judge (render/frontier.py)."""

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from optical_cli.cli import app
from optical_cli.config.registry import load_config
from optical_cli.documents import Document
from optical_cli.render.frontier import (
    OcrJudge,
    RenderCell,
    bootstrap_cer,
    choose_operating_point,
    cve_text,
    judge_cell,
    lay_out,
    line_segments,
    segment_errors,
    vision_tokens_per_page,
)

runner = CliRunner()
PROSE = cve_text(5000)  # plain English prose: CVE descriptions, one paragraph each


@pytest.fixture(scope="module")
def judge():
    return OcrJudge(threads=2, batch=16)


def cer_of(judge, font_size, text=PROSE, pages_from=None, segments=24):
    cfg = load_config("frontier", None, [])
    layout = lay_out(RenderCell(font_size, "base", True, 1.2, "DejaVuSansMono"), cfg.render, [Document("t", text)])
    pages = None
    if pages_from is not None:  # the judge reads these pages but is scored against ``text``
        cell = RenderCell(font_size, "base", True, 1.2, "DejaVuSansMono")
        other = lay_out(cell, cfg.render, [Document("o", pages_from)])
        pages = [np.asarray(other.renderer.draw(lines).convert("L")) for lines in other.pages]
    truths, readings = judge_cell(layout, judge, segments, 40, seed=0, pages=pages)
    edits, chars, _ = segment_errors(truths, readings, judge.alphabet)
    return edits.sum() / chars.sum()


def test_line_segments_cut_at_word_boundaries_and_cover_every_word():
    line = "alpha beta gamma delta " + "x" * 25 + " omega"
    spans = line_segments(line, 12)
    assert all(b - a <= 12 for a, b in spans)
    assert [line[a:b] for a, b in spans] == ["alpha beta", "gamma delta", "x" * 12, "x" * 12, "x omega"]
    assert "".join(line[a:b] for a, b in spans).replace(" ", "") == line.replace(" ", "")


def test_judge_reads_legible_prose_and_fails_on_other_text_and_tiny_type(judge):
    legible = cer_of(judge, 12)
    assert legible <= 0.05
    assert cer_of(judge, 12, text=cve_text(5000 + 4000)[5200:], pages_from=PROSE) > 0.5  # a page of other text
    assert cer_of(judge, 4) > 0.4 > legible  # below legible size


def test_bootstrap_and_operating_point():
    edits, chars = np.array([0.0, 1.0, 0.0, 3.0]), np.array([10.0, 10.0, 10.0, 10.0])
    cer, low, high = bootstrap_cer(edits, chars, 500, seed=0)
    assert cer == pytest.approx(0.1) and 0.0 <= low <= cer <= high <= 0.3
    rows = [
        {"cer": 0.2, "full_page_tokens_per_vision_token": 20.0},
        {"cer": 0.04, "full_page_tokens_per_vision_token": 11.0},
        {"cer": 0.01, "full_page_tokens_per_vision_token": 7.0},
    ]
    assert choose_operating_point(rows, 0.05) is rows[1] and choose_operating_point(rows, 0.001) is None
    assert vision_tokens_per_page("base") == 256 and vision_tokens_per_page("gundam") == 4 * 100 + 256


def test_sweep_render_cli_frontier_plot_operating_point_and_resume(tmp_path):
    prose = tmp_path / "prose.txt"
    prose.write_text(cve_text(12000), encoding="utf-8")  # two pages at 12 px, one at 6 px
    out = tmp_path / "sweep"
    args = [
        "sweep",
        "render",
        "--input",
        str(prose),
        "--font-size",
        "6,12",
        "--judge",
        "ocr",
        "-o",
        str(out),
        "--json",
        "--set",
        "sweep.judge_segments=24",
        "--set",
        "sweep.bootstrap=200",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    with open(out / "frontier.csv", encoding="utf-8") as handle:
        rows = {int(row["font_size"]): row for row in csv.DictReader(handle)}
    assert set(rows) == {6, 12}
    for row in rows.values():
        assert float(row["cer_low"]) <= float(row["cer"]) <= float(row["cer_high"]) and row["mode"] == "base"
    assert float(rows[12]["cer"]) <= 0.05 and float(rows[12]["cer"]) < float(rows[6]["cer"])
    assert float(rows[6]["full_page_tokens_per_vision_token"]) > float(rows[12]["full_page_tokens_per_vision_token"])
    assert int(rows[6]["pages"]) < int(rows[12]["pages"])
    assert float(rows[6]["tokens_per_vision_token"]) > float(rows[12]["tokens_per_vision_token"])
    assert (out / "frontier.png").stat().st_size > 10_000
    assert summary["operating_point"]["font_size"] == 12
    fragment = out / "operating_point.yaml"
    rendered = runner.invoke(
        app, ["render", str(prose), "--config", str(fragment), "-o", str(tmp_path / "r"), "--json"]
    )
    assert rendered.exit_code == 0, rendered.output
    assert json.loads(rendered.stdout)["pages"] == int(rows[12]["pages"])
    assert "--set deepencoder.mode=base" in (out / "operating_point.sets").read_text()
    again = runner.invoke(
        app, [*args[:-4], "--resume", "--set", "sweep.judge_segments=24", "--set", "sweep.bootstrap=200"]
    )
    assert again.exit_code == 0, again.output
    assert "2 of 2 cells done" in again.stderr and json.loads(again.stdout)["timing"]["cells_resumed"] == 2
    assert len((out / "cells.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--font-size", "6,x"], "not a whole number"),
        (["--font-size", "3"], "font_size"),
        (["--mode", "huge"], "--mode"),
        (["--judge", "reader"], "not built yet"),
        (["--input", "missing.txt"], "input not found"),
    ],
)
def test_sweep_render_bad_input_exits_2_before_any_output(tmp_path, extra, expected):
    out = tmp_path / "o"
    result = runner.invoke(app, ["sweep", "frontier", "-o", str(out), *extra])
    assert result.exit_code == 2, result.output
    assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (out / "cells.jsonl").exists()


def test_published_labels_never_cover_ours_on_the_frontier_plot():
    """Our 10 px point next to the paper's ~97% point (CER 0.04 at 9.4x: the bundled text's base-mode frontier
    of the README with a 10 px CER near the paper's): the published labels are moved clear of every label of ours."""
    from optical_cli.render.frontier import DEEPSEEK_OCR_PUBLISHED
    from optical_cli.render.plots import frontier_figure

    measured = {
        6: (17.0, 0.170),
        7: (15.2, 0.048),
        8: (12.4, 0.007),
        9: (11.1, 0.004),
        10: (9.4, 0.040),
        12: (6.7, 0.003),
    }
    rows = [
        {
            "font_size": px,
            "mode": "base",
            "reflow": True,
            "line_spacing": 1.2,
            "font": "DejaVuSansMono",
            "full_page_tokens_per_vision_token": density,
            "cer": cer,
            "cer_low": cer * 0.8,
            "cer_high": cer * 1.2,
        }
        for px, (density, cer) in measured.items()
    ]
    boxes = label_boxes(frontier_figure(rows, DEEPSEEK_OCR_PUBLISHED, 0.05))
    theirs = [box for text, box in boxes if "(theirs)" in text]
    ours = [box for text, box in boxes if "(theirs)" not in text]
    assert len(theirs) == 2 and len(ours) == 6
    assert not any(a.overlaps(b) for a in theirs for b in ours)
    assert not theirs[0].overlaps(theirs[1])


def label_boxes(figure) -> list[tuple[str, object]]:
    """(text, display-space box of the text alone) of every annotation on the figure: what a reader sees."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Annotation, Text

    renderer = FigureCanvasAgg(figure).get_renderer()
    boxes = []
    for axis in figure.axes:
        for child in axis.get_children():
            if isinstance(child, Annotation):
                child.update_positions(renderer)
                boxes.append((child.get_text(), Text.get_window_extent(child, renderer)))
    return boxes


def test_the_old_name_sweep_render_still_runs_the_frontier_and_says_so():
    result = runner.invoke(app, ["sweep", "render", "--font-size", "x"])
    assert result.exit_code == 2 and "--font-size" in result.stderr
    assert "`optical sweep render` is the old name of `optical sweep frontier`" in result.stderr
