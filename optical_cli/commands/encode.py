"""`optical encode`: pages to DeepEncoder features and compression metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import (
    ConfigOpt,
    JsonOpt,
    OutputDirOpt,
    SetOpt,
    emit_json,
    handled_errors,
    load,
    print_table,
    progress_bar,
    run_dir,
)


def encode(
    inputs: Annotated[Optional[list[Path]], typer.Option("--input", "-i", metavar="PATH", help="Image file, directory of images, or render run directory (repeatable).")] = None,
    text: Annotated[Optional[Path], typer.Option("--text", help="Text file to render (at the mode's page size) and encode in one go.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", help="Features .safetensors (default: features.safetensors in the run directory).")] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    output_dir: OutputDirOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Encode pages with DeepEncoder: features (pages x tokens x 1280) plus compression metrics."""
    from ..encode import build_encoder, plan_inputs, run_encode
    from ..errors import InputError

    with handled_errors():
        cfg = load("encode", config, sets)
        if output is not None and output.suffix != ".safetensors":
            raise InputError(f"--output {output}: the features file must end in .safetensors")
        plan = plan_inputs(list(inputs or []), text, cfg)
        encoder = build_encoder(cfg)  # bad or missing weights fail here, before any output
        with run_dir("encode", cfg, output_dir) as run:
            with progress_bar("encoding pages", len(plan.pages) or None) as advance:
                summary = run_encode(cfg, plan, encoder, output or run.file("features.safetensors"), run.file("metrics.json"), advance)
            run.update(result=summary)
        print_table("encode", list(summary.items()))
        if json_out:
            emit_json({**summary, "metrics": str(run.path / "metrics.json")})
