"""`optical encode`: pages to DeepEncoder features and compression metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InputError
from ..reports.console import emit_json, print_table, progress_bar
from .common import (
    ConfigOpt,
    JsonOpt,
    OutputDirOpt,
    OverwriteOpt,
    SetOpt,
    attention_record,
    check_resumable,
    claim_output,
    handled_errors,
    join_processes,
    load,
    report_resume,
    reuse_attention_choices,
    run_dir,
)

# Settings that may change between a run and its --resume: they change neither the pages nor the features.
ENCODE_RESUMABLE = {"encode.batch_size", "encode.queue_pages", "runtime.workers"}


InputsOpt = Annotated[
    Optional[list[Path]],
    typer.Option(
        "--input", "-i", metavar="PATH", help="Image file, directory of images, or render run directory (repeatable)."
    ),
]
TextOpt = Annotated[
    Optional[Path], typer.Option("--text", help="Text file to render (at the mode's page size) and encode in one go.")
]
OutputOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--output",
        help="Features .safetensors (default: features.safetensors in the run directory; shards and an index "
        "beside it when the pages exceed one shard).",
    ),
]
ShardsResumeOpt = Annotated[
    bool, typer.Option("--resume", help="Continue the run in --output-dir: encode only the shards not yet on disk.")
]


def encode(
    inputs: InputsOpt = None,
    text: TextOpt = None,
    output: OutputOpt = None,
    resume: ShardsResumeOpt = False,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    output_dir: OutputDirOpt = None,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Encode pages with DeepEncoder: features (pages x tokens x 1280, in shards) plus compression metrics.

    Under `accelerate launch --num_processes N -m optical_cli.cli encode ...` the processes share
    the shards; with a pinned deepencoder.attention the output equals one process's.
    """
    from ..devices import resolve_device
    from ..encode.pipeline import METRIC_FILES, build_runner, plan_inputs, run_encode

    with handled_errors():
        cfg = load("encode", config, sets)
        if output is not None and output.suffix != ".safetensors":
            raise InputError(f"--output {output}: the features file must end in .safetensors")
        claim = claim_output("encode", output_dir, resume=resume, overwrite=overwrite)
        check_resumable(claim, cfg, "encode", ENCODE_RESUMABLE)
        plan = plan_inputs(list(inputs or []), text, cfg)
        procs = join_processes(cfg.runtime.device)
        device = procs.place(resolve_device(cfg.runtime.device))
        encoder = build_runner(cfg, device)  # bad weights fail here, before any output
        if resume:
            _resume_shards(claim, cfg, plan, encoder, output or output_dir / "features.safetensors")
        with run_dir("encode", cfg, claim, procs=procs, device=str(device)) as run:
            with progress_bar("encoding pages", len(plan)) as advance:
                summary, reports = run_encode(
                    cfg, plan, encoder, output or run.path / "features.safetensors", run.path, procs, resume, advance
                )
            if summary:  # the main process
                run.record_existing(*METRIC_FILES, Path(summary["features"]).name)
                run.update(result=summary, process_pages=reports, **attention_record(cfg.deepencoder.attention))
        if summary:
            print_table("encode", list(summary.items()))
            if json_out:
                emit_json({**summary, "metrics": str(run.path / "metrics.json")})


def _resume_shards(claim, cfg, plan, encoder, features: Path) -> None:
    """Say how many shards a resume finds, and encode the rest with the attention paths chosen before."""
    from ..encode.pipeline import check_shards_on_disk

    done, total, choices = check_shards_on_disk(cfg, plan, encoder.dtype, features)
    reused = reuse_attention_choices(claim, cfg.deepencoder.attention, choices)
    report_resume(
        f"{done} of {total} shards on disk in {claim.path}; encoding the other {total - done}"
        + (f" with the attention paths chosen before ({reused} view shapes)" if reused else "")
    )
