"""`optical render`: text to page images."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..paths import SAMPLE_DOCUMENT
from ..reports.console import emit_json, print_table, progress_bar, warn
from .common import ConfigOpt, JsonOpt, OutputDirOpt, OverwriteOpt, SetOpt, claim_output, handled_errors, load, run_dir


def render(
    inputs: Annotated[
        Optional[list[str]],
        typer.Argument(
            metavar="INPUTS",
            help="Text, markdown or PDF files, directories of .txt/.md/.pdf, or - for stdin (default: the bundled "
            "sample).",
            show_default=False,
        ),
    ] = None,
    input_opt: Annotated[
        Optional[list[str]],
        typer.Option("--input", "-i", metavar="PATH", help="Same as the positional INPUTS (repeatable)."),
    ] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    output_dir: OutputDirOpt = None,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Render text (or a PDF's text layer, or with render.source=pdf-pages its own pages) to page images
    (page_0001.png, ...) plus layout.jsonl, sized for a DeepEncoder mode."""
    from ..documents import read_documents
    from ..render.pages import PageRenderer, check_renderable, render_to_dir

    with handled_errors():
        cfg = load("render", config, sets)
        claim = claim_output("render", output_dir, overwrite=overwrite, resumable=False)
        renderer = PageRenderer(cfg.render)  # font and geometry problems surface before any output
        sources = list(inputs or []) + list(input_opt or []) or [str(SAMPLE_DOCUMENT)]
        documents = read_documents(sources, cfg.render.encoding, cfg.render.errors)
        for warning in check_renderable(documents, cfg.render):  # nothing renderable fails here, before output
            warn(warning)
        with run_dir("render", cfg, claim, device="cpu") as run, progress_bar("rendering pages") as advance:
            report = render_to_dir(documents, renderer, run.path, cfg.runtime.workers, progress=advance)
            run.update(report=report.as_dict())
        summary = report.as_dict() | {"output_dir": str(run.path)}
        hidden = ("per_document", "pdfs_without_text_layer")
        print_table("render", [(k, v) for k, v in summary.items() if k not in hidden and v is not None])
        if json_out:
            emit_json(summary)
