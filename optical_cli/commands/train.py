"""`optical train-adapter`: teach Qwen3-VL to read DeepEncoder tokens."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich.markup import escape

from ..errors import InputError
from ..reports.console import emit_json, err, print_table, progress_bar, random_weights_banner
from ..reports.train import TRAIN_RANDOM_WEIGHTS, print_training
from .common import (
    ConfigOpt,
    DeviceMemoryOpt,
    DevicesOpt,
    DryRunOpt,
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
    report_plan,
    report_resume,
    reuse_attention_choices,
    run_dir,
)

ResumeOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--resume",
        help="Continue the run in this directory from its latest checkpoint (or from this checkpoint directory).",
    ),
]


def _resume_target(resume: Path) -> tuple[Path, Path]:
    """(run directory, path to resume from) for --resume RUN_DIR or --resume RUN_DIR/checkpoints/step-N."""
    if not resume.is_dir():
        raise InputError(f"--resume {resume}: not a directory; pass a train-adapter run directory")
    run_path = resume.parent.parent if (resume / "trainer_state.pth").is_file() else resume
    if not (run_path / "config.yaml").is_file():
        raise InputError(f"--resume {resume}: no config.yaml in {run_path}; pass a train-adapter run directory")
    return run_path, resume


# Settings that may change on --resume: when to evaluate, checkpoint and read, and where the cache
# lives. Everything that shapes the training itself (data, model, schedule, seed) must stay, or
# the resumed run would not be the run it continues.
TRAIN_RESUMABLE = {
    "train.eval_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.read_pages",
    "train.read_max_new_tokens",
    "train.log_with",
    "train.log_every",
    "data.cache_dir",
    "data.encode_batch_size",
    "runtime.workers",
}


def train_adapter_command(
    config: ConfigOpt = None,
    sets: SetOpt = None,
    output_dir: OutputDirOpt = None,
    resume: ResumeOpt = None,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
    dry_run: DryRunOpt = False,
    device_memory: DeviceMemoryOpt = None,
    devices: DevicesOpt = 1,
) -> None:
    """Train the vision-token adapter (DeepEncoder, Qwen3-VL frozen): adapter.safetensors, metrics.jsonl, loss.png."""
    from ..train.run import RUN_ARTIFACTS, prepare_training, uses_random_weights

    with handled_errors():
        config, output_dir, resume_from = _resume_paths(resume, config, output_dir)
        cfg = load("train-adapter", config, sets)
        if dry_run:
            return _report_dry_run(cfg, devices, device_memory, json_out)
        claim = claim_output("train-adapter", output_dir, resume=resume is not None, overwrite=overwrite)
        check_resumable(claim, cfg, "train-adapter", TRAIN_RESUMABLE)
        procs = join_processes(cfg.runtime.device)  # under accelerate launch: one run directory for all processes
        reuse_attention_choices(claim, cfg.deepencoder.attention)  # pages not in the feature cache encode as before
        # An unusable corpus, a corrupt checkpoint or a model that cannot be loaded fails here,
        # before the run directory exists and before any progress bar is drawn.
        with err.status(escape(f"loading the language model ({cfg.vlm.source})")):
            prepared = prepare_training(cfg, procs, resume_from)
        if prepared.checkpoint is not None:
            report_resume(f"checkpoint at step {prepared.checkpoint.step} in {prepared.checkpoint.path}")
        random_weights = uses_random_weights(cfg)
        if random_weights and procs.is_main:
            random_weights_banner(TRAIN_RANDOM_WEIGHTS)
        device = str(prepared.runtime.device)
        with run_dir("train-adapter", cfg, claim, procs=procs, device=device) as run, progress_bar("training") as bar:
            result = prepared.train(run.path, progress=_progress(bar))
            run.record_existing(*RUN_ARTIFACTS)
            run.update(
                result=dataclasses.asdict(result),
                parameters=result.parameters,
                peak_memory_gib=result.peak_memory_gib,
                random_weights=random_weights,
                **attention_record(cfg.deepencoder.attention),
            )
        if procs.is_main:  # under accelerate launch only the main process reports
            _report_training({**dataclasses.asdict(result), "random_weights": random_weights}, run.path, json_out)


def _resume_paths(
    resume: Optional[Path], config: Optional[Path], output_dir: Optional[Path]
) -> tuple[Optional[Path], Optional[Path], Optional[Path]]:
    """(config, output dir, path to resume from): --resume RUN continues RUN with its own config."""
    if resume is None:
        return config, output_dir, None
    run_path, resume_from = _resume_target(resume)
    if output_dir is not None and output_dir.resolve() != run_path.resolve():
        raise InputError(f"--resume {resume} continues the run in {run_path}; leave out --output-dir {output_dir}")
    return config or run_path / "config.yaml", run_path, resume_from


def _report_dry_run(cfg, devices: int, device_memory: Optional[float], json_out: bool) -> None:
    from ..plan import plan_command

    report_plan(plan_command("train-adapter", cfg, devices, device_memory), json_out)


def _progress(advance: Callable[..., None]) -> Callable[[dict], None]:
    """The training's events on the progress bar."""

    def on_event(event: dict) -> None:
        if event["event"] == "start":
            advance(event["step"], total=event["total"], description="training")
        elif event["event"] == "encode":
            advance(0, description=f"encoding pages (+{event['pages']})")
        elif event["event"] == "step":
            shown = f"step {event['step']} loss {event['loss']:.4f}"
            if event.get("eval_loss") is not None:
                shown += f" eval {event['eval_loss']:.4f}"
            advance(1, description=shown)
        elif event["event"] == "reading":
            advance(0, description=f"reading check on {event['pages']} held-out pages")

    return on_event


def _report_training(summary: dict, run_path: Path, json_out: bool) -> None:
    print_training(summary)
    if json_out:
        emit_json({"run_dir": str(run_path), **summary})


def export_adapter_command(
    run: Annotated[Path, typer.Argument(help="A finished train-adapter run directory.", show_default=False)],
    out: Annotated[Path, typer.Argument(help="The folder to write (new or empty).", show_default=False)],
    bench: Annotated[
        Optional[Path],
        typer.Option("--bench", help="A bench longbench run of this adapter: its results go into the model card."),
    ] = None,
    push_to_hub: Annotated[
        Optional[str],
        typer.Option("--push-to-hub", metavar="OWNER/NAME", help="Upload the folder to this hub repository."),
    ] = None,
    private: Annotated[
        bool, typer.Option("--private", help="With --push-to-hub: create the repository private.")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier export in OUT.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Write a trained adapter as a folder to share: adapter.safetensors, adapter.json, lora/, loss.png, README.md."""
    from ..train.export import export_adapter

    with handled_errors():
        with err.status(escape(f"exporting {run} to {out}")):
            result = export_adapter(run, out, bench=bench, push_to=push_to_hub, private=private, overwrite=overwrite)
        print_table("export-adapter", [("folder", result["folder"]), *(("file", f) for f in result["files"])])
        if result["pushed_to"]:
            err.print(f"uploaded: {escape(result['pushed_to'])}")
        if json_out:
            emit_json(result)
