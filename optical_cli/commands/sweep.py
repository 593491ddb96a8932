"""`optical sweep diffusion` (energy search over an eta x steps grid against labels) and `optical sweep frontier`
(rendering settings against an OCR judge's legibility)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..reports.console import emit_json, progress_bar, warn
from ..reports.sweep import cell_name, print_frontier, print_sweep_report
from .common import (
    ConfigOpt,
    JsonOpt,
    OutputDirOpt,
    OverwriteOpt,
    SetOpt,
    all_if_zero,
    check_resumable,
    claim_output,
    config_option,
    handled_errors,
    load,
    report_resume,
    run_dir,
    with_flags,
)

app = typer.Typer(
    help="Sweeps: energy-index parameters against real relevance labels (diffusion); rendering settings against "
    "legibility (frontier).",
    no_args_is_help=True,
)


EtaOpt = Annotated[
    Optional[str],
    config_option("diffusion", "sweep.etas", "--eta", help="Comma-separated eta values, e.g. 0.05,0.1,0.15,0.2."),
]
StepsOpt = Annotated[
    Optional[str],
    config_option("diffusion", "sweep.steps", "--steps", help="Comma-separated diffusion step counts, e.g. 2,4,6,8."),
]
NumQueriesOpt = Annotated[
    Optional[int],
    config_option(
        "diffusion",
        "sweep.num_queries",
        "--num-queries",
        help="Seeded sample of N labelled records as queries (null: all).",
    ),
]
CorpusLimitOpt = Annotated[
    Optional[int],
    config_option("diffusion", "sweep.limit", "--limit", help="Seeded corpus subset of N records (0 = all)."),
]
CorpusOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--corpus",
        help="JSONL with id, text and label fields, or Parquet with id, vector and label columns (default: the "
        "bundled CVE corpus).",
    ),
]
CellsResumeOpt = Annotated[bool, typer.Option("--resume", help="Skip cells already finished in --output-dir.")]
FrontierInputOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--input",
        "-i",
        metavar="PATH",
        help="A document (.txt/.md/.pdf) or a directory of them (repeatable; default: the bundled sample "
        "and CVE text).",
        show_default=False,
    ),
]
FontSizeOpt = Annotated[
    Optional[str],
    config_option(
        "frontier", "sweep.font_sizes", "--font-size", help="Comma-separated font sizes in px, e.g. 6,8,10,12."
    ),
]
ModeOpt = Annotated[
    Optional[str],
    config_option(
        "frontier", "sweep.modes", "--mode", help="Comma-separated DeepEncoder modes: tiny, small, base, large, gundam."
    ),
]
JudgeOpt = Annotated[
    Optional[str],
    config_option(
        "frontier",
        "sweep.judge",
        "--judge",
        help="Who reads the pages: ocr (PP-OCRv4 recogniser on each drawn line segment).",
    ),
]


@app.command("diffusion")
def sweep_diffusion(
    eta: EtaOpt = None,
    steps: StepsOpt = None,
    num_queries: NumQueriesOpt = None,
    limit: CorpusLimitOpt = None,
    corpus: CorpusOpt = None,
    resume: CellsResumeOpt = False,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    output_dir: OutputDirOpt = None,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Energy search over an eta x steps grid vs cosine, judged by shared labels (CWE ids)."""
    from ..sweep.diffusion import read_sweep_inputs
    from ..sweep.grid import DIFFUSION_RESUMABLE, diffusion_cells_done, parse_eta_list, parse_steps_list
    from ..sweep.pipeline import DIFFUSION_FILES, run_diffusion_sweep

    with handled_errors():
        flags = {
            "--eta": ("sweep.etas", None if eta is None else parse_eta_list(eta)),
            "--steps": ("sweep.steps", None if steps is None else parse_steps_list(steps)),
            "--num-queries": ("sweep.num_queries", num_queries),
            "--limit": ("sweep.limit", all_if_zero(limit)),
            "--corpus": ("sweep.corpus", None if corpus is None else str(corpus)),
        }
        cfg = with_flags(load("diffusion", config, sets), flags)
        claim = claim_output("sweep diffusion", output_dir, resume=resume, overwrite=overwrite)
        check_resumable(claim, cfg, "diffusion", DIFFUSION_RESUMABLE)  # before the corpus is embedded
        cells = len(cfg.sweep.etas) * len(cfg.sweep.steps)
        if claim.resuming:
            done = diffusion_cells_done(output_dir / "cells.jsonl", cfg.sweep.etas, cfg.sweep.steps)
            report_resume(f"{done} of {cells} cells done in {output_dir}")
        inputs = read_sweep_inputs(cfg)  # a bad corpus fails here, before the run directory exists
        with run_dir("sweep diffusion", cfg, claim) as run, progress_bar("sweep", total=cells) as advance:
            summary = run_diffusion_sweep(cfg, run.path, resume, _diffusion_hooks(advance), inputs)
            run.record_existing(*DIFFUSION_FILES)
            run.update(sweep_seconds=summary["timing"]["sweep_seconds"])
        print_sweep_report(summary, run.path)
        for warning in summary.get("warnings", []):
            warn(warning)
        if json_out:
            emit_json({k: v for k, v in summary.items() if not k.startswith("_")})


def _diffusion_hooks(advance):
    """The progress bar counts grid cells; baselines and later stages show in its description."""
    from ..sweep.pipeline import DiffusionHooks

    state = {"stage": "cells", "embedded": 0}

    def embed(n: int, total: int | None = None) -> None:
        state["embedded"] += n
        advance(0, description=f"embedding corpus {state['embedded']}/{total}")

    def cell(record: dict, skipped: bool) -> None:
        energy = record["method"] == "energy"
        name = f"{record['method']} {cell_name(record)}" if energy else f"{record['method']} baseline"
        advance(1 if energy else 0, description=f"cells: {name}{' (resumed)' if skipped else ''}")

    def stage(name: str) -> None:  # embedding, sweeping, then the stages after the grid
        if name == "sweeping":
            state["stage"] = "sweeping"
        before = state["stage"] == "cells"
        advance(0, description=name if before else "cells" if name == "sweeping" else f"cells done; {name}")

    return DiffusionHooks(
        embed=embed, stage=stage, cell=cell, trial=lambda n: advance(0, description="cells done; tuning weights")
    )


@app.command("frontier")
def sweep_frontier(
    context: typer.Context,
    inputs: FrontierInputOpt = None,
    font_size: FontSizeOpt = None,
    mode: ModeOpt = None,
    judge: JudgeOpt = None,
    resume: CellsResumeOpt = False,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    output_dir: OutputDirOpt = None,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """The compression frontier: text tokens per vision token against an OCR judge's error, over font size x mode
    x reflow x line spacing x font."""
    from ..render.frontier import (
        FRONTIER_FILES,
        FRONTIER_RESUMABLE,
        FrontierHooks,
        check_cells,
        frontier_cells_done,
        read_inputs,
        run_render_sweep,
    )

    if context.info_name == "render":
        warn("`optical sweep render` is the old name of `optical sweep frontier`; use `sweep frontier`")
    with handled_errors():
        cfg = with_flags(load("frontier", config, sets), _render_flags(inputs, font_size, mode, judge))
        claim = claim_output("sweep frontier", output_dir, resume=resume, overwrite=overwrite)
        check_resumable(claim, cfg, "frontier", FRONTIER_RESUMABLE)
        done, cells = frontier_cells_done(cfg, claim.path if claim.resuming else None)
        if claim.resuming:
            report_resume(f"{done} of {cells} cells done in {output_dir}")
        documents = read_inputs(cfg)  # bad inputs fail here, before the run directory exists
        check_cells(cfg)  # a font or size that cannot lay out a page fails before any work
        directory = run_dir("sweep frontier", cfg, claim, device="cpu")
        with directory as run, progress_bar("sweep frontier", cells) as advance:
            summary = run_render_sweep(cfg, documents, run.path, resume, _render_hooks(advance, FrontierHooks))
            run.record_existing(*FRONTIER_FILES)
            run.update(sweep_seconds=summary["timing"]["seconds"])
        print_frontier(summary)
        if "warning" in summary:
            warn(summary["warning"])
        if json_out:
            emit_json(summary | {"output_dir": str(run.path)})


# the name of earlier versions: the same command, announced as deprecated when run under it
app.command("render", hidden=True)(sweep_frontier)


def _render_flags(inputs, font_size, mode, judge) -> dict:
    """sweep frontier's flags as config keys (``with_flags``), each list checked by its parser."""
    from ..lists import parse_choice, parse_choices, parse_list
    from ..render.frontier import MODE_CHOICES

    hint = "the trained-reader judge is not built yet"
    judged = None if judge is None else parse_choice(judge, "--judge", ("ocr",), hint)
    sizes = None if font_size is None else parse_list(font_size, "--font-size", "6,8,10,12", int, "a whole number")
    return {
        "--input": ("sweep.inputs", list(inputs) if inputs else None),
        "--font-size": ("sweep.font_sizes", sizes),
        "--mode": ("sweep.modes", None if mode is None else parse_choices(mode, "--mode", MODE_CHOICES)),
        "--judge": ("sweep.judge", judged),
    }


def _render_hooks(advance, hooks_class):
    """Progress per finished cell (its CER), and the stage names."""

    def cell(record: dict, skipped: bool) -> None:
        resumed = " (resumed)" if skipped else ""
        advance(1, description=f"{_render_cell_name(record)}: cer {record['cer']:.3f}{resumed}")

    return hooks_class(cell=cell, stage=lambda name: advance(0, description=name))


def _render_cell_name(record: dict) -> str:
    return (
        f"{record['mode']} {record['font_size']}px{' reflow' if record['reflow'] else ''} x{record['line_spacing']:g}"
    )
