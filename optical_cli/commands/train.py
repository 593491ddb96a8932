"""`optical train-adapter`: teach Qwen3-VL to read DeepEncoder tokens."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from .common import (
    ConfigOpt,
    JsonOpt,
    OutputDirOpt,
    SetOpt,
    emit_json,
    err,
    handled_errors,
    join_processes,
    load,
    print_table,
    progress_bar,
    run_dir,
)

ResumeOpt = Annotated[Optional[Path], typer.Option("--resume", help="Continue the run in this directory from its latest checkpoint (or from this checkpoint directory).")]


def _resume_target(resume: Path) -> tuple[Path, Path]:
    """(run directory, path to resume from) for --resume RUN_DIR or --resume RUN_DIR/checkpoints/step-N."""
    from ..errors import InputError

    if not resume.is_dir():
        raise InputError(f"--resume {resume}: not a directory; pass a train-adapter run directory")
    run_path = resume.parent.parent if (resume / "trainer_state.pth").is_file() else resume
    if not (run_path / "config.yaml").is_file():
        raise InputError(f"--resume {resume}: no config.yaml in {run_path}; pass a train-adapter run directory")
    return run_path, resume


TRAIN_RANDOM_BANNER = (
    "RANDOM WEIGHTS: Qwen3-VL or DeepEncoder is random (vlm.source / deepencoder.weights = random). The losses "
    "and the reading check below test the pipeline; they are not results."
)


def train_adapter_command(
    config: ConfigOpt = None,
    sets: SetOpt = None,
    output_dir: OutputDirOpt = None,
    resume: ResumeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Train the vision-token adapter (DeepEncoder and Qwen3-VL frozen); writes adapter.pth, metrics.jsonl, loss.png."""
    from ..models.loading import RANDOM_SOURCE
    from ..train import load_reader, open_checkpoint, read_documents, train_adapter

    with handled_errors():
        resume_from = None
        if resume is not None:
            run_path, resume_from = _resume_target(resume)
            config = config or run_path / "config.yaml"
            output_dir = output_dir or run_path
        cfg = load("train-adapter", config, sets)
        # An unusable corpus, a corrupt checkpoint or a model that cannot be loaded fails here,
        # before the run directory exists and before any progress bar is drawn.
        documents = read_documents(cfg)
        checkpoint = open_checkpoint(resume_from) if resume_from is not None else None
        random_weights = cfg.vlm.source == RANDOM_SOURCE or cfg.deepencoder.weights == "random"
        procs = join_processes(cfg.runtime.device)  # under accelerate launch: one run directory for all processes
        if random_weights and procs.is_main:
            err.print(f"[bold yellow]{TRAIN_RANDOM_BANNER}[/]", soft_wrap=True)
        with err.status(escape(f"loading the language model ({cfg.vlm.source})")):
            reader = load_reader(cfg)
        with run_dir("train-adapter", cfg, output_dir, procs=procs) as run, progress_bar("training", None) as advance:
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

            result = train_adapter(cfg, run.path, resume=checkpoint, progress=on_event, documents=documents, reader=reader)
            run.record_existing("adapter.pth", "adapter.json", "metrics.jsonl", "loss.png", "reading.jsonl")
            run.update(result=dataclasses.asdict(result), parameters=result.parameters,
                       peak_memory_gib=result.peak_memory_gib, random_weights=random_weights)
        if not procs.is_main:  # under accelerate launch only the main process reports
            return
        summary = {**dataclasses.asdict(result), "random_weights": random_weights}
        rows = [(f"{key}.{inner}", value) if isinstance(block, dict) else (key, block)
                for key, block in summary.items()
                for inner, value in (block.items() if isinstance(block, dict) else [(None, block)])]
        print_table("train-adapter", rows)
        if json_out:
            emit_json({"run_dir": str(run.path), **summary})
