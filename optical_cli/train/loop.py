"""The training loop and the run around it (``train_adapter``): set-up, the feature cache, the steps with
their metrics and checkpoints, the trained adapter, the reading check."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import gather_object
from torch import nn

from ..memory import PeakMemory, busiest, peak_memory
from ..models.adapter import parameter_count
from ..models.deepencoder.runner import DeepEncoderPages, PageEncoder
from ..models.provenance import training_models
from ..models.vlm import VisionLanguageReader
from ..records import RecordLog
from ..tracking import Trackers, open_trackers
from .checkpoints import Checkpoint, save_checkpoint
from .config import TrainAdapterConfig
from .corpus import training_corpus
from .data import TrainingData, prepare_data
from .objectives import batch_loss, page_statistics
from .outputs import METRICS_FILE, plot_run_losses, save_trained, write_reading_records
from .pages import PageSet, TrainingEvents
from .reading import reading_check
from .setup import (
    Schedule,
    Trainee,
    TrainingRuntime,
    distribute,
    enable_gradient_checkpointing,
    make_schedule,
    make_trainee,
    start_or_resume,
    training_mode,
)
from .sharding import local_parameter_count


@dataclass
class TrainResult:
    steps: int
    train_pages: int
    eval_pages: int
    vision_tokens: int
    final_loss: float | None
    final_eval_loss: float | None
    first_loss: float | None
    pages_per_s: float
    step_s: float | None  # mean wall time of one optimizer step in this run (eval not counted)
    cache_hit: bool
    encode_s: float
    parameters: dict = field(default_factory=dict)  # deepencoder, adapter, language_model
    peak_memory_gib: dict = field(default_factory=dict)  # cpu_rss_gib (+ cuda_max_allocated_gib on a GPU)
    training_pages: dict = field(default_factory=dict)  # page_statistics of the training pages
    reading: dict = field(default_factory=dict)
    layout: str = "single"  # single | ddp | fsdp (the frozen LLM sharded across processes)
    language_model_local_parameters: int | None = (
        None  # the LLM's parameters this process holds (1/N of them under fsdp)
    )
    models: dict = field(default_factory=dict)  # language_model, tokenizer, deepencoder: source and hub revision


def _batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def _silent(event: dict) -> None:
    pass


@dataclass
class Loop:
    """The optimizer steps of one run and what they record: metrics.jsonl (every step), the eval loss
    (every ``train.eval_every`` steps), checkpoints (every ``train.checkpoint_every``). Each process takes
    every world-th micro-batch of the same shuffled order; the main process writes."""

    cfg: TrainAdapterConfig
    runtime: TrainingRuntime
    model: nn.Module
    data: TrainingData
    trainee: Trainee
    schedule: Schedule
    sharded: bool
    run_path: Path
    emit: TrainingEvents
    trackers: Trackers
    first_step: int
    parameters: dict  # deepencoder, language_model (counted before sharding), lora
    first_loss: float | None = None
    last_loss: float | None = None
    last_eval: float | None = None
    train_s: float = 0.0  # training time in this run (eval, checkpoints and metrics not counted)
    pages_seen: int = 0

    @property
    def metrics(self) -> RecordLog:
        return RecordLog(self.run_path / METRICS_FILE)

    def loss(self, pages: PageSet, examples: list, index: list[int]) -> torch.Tensor:
        return batch_loss(
            self.cfg.train.objective,
            self.model,
            self.trainee.adapter,
            pages,
            examples,
            index,
            self.data.pad_id,
            self.runtime.device,
            self.runtime.autocast,
        )

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean held-out loss, computed in eval mode (the caller's mode is restored)."""
        pages, examples, size = self.data.held_out, self.data.held_out_examples, self.cfg.train.batch_size
        if not len(pages):
            return None
        adapter, model = self.trainee.adapter, self.model
        modes = adapter.training, model.training
        adapter.eval()
        model.eval()
        total = 0.0
        for start in range(0, len(pages), size):
            index = list(range(start, min(len(pages), start + size)))
            total += float(self.loss(pages, examples, index)) * len(index)
        adapter.train(modes[0])
        model.train(modes[1])
        return total / len(pages)

    def step(self, step: int) -> dict:
        """Optimizer step ``step + 1``: this process's micro-batches of the step's group, gradients
        averaged across processes and clipped. Returns its epoch, loss (all processes'), lr, pages and
        tokens (every process's, as the LLM reads them: vision and text)."""
        accelerator, world = self.runtime.accelerator, self.runtime.world
        epoch, offset = divmod(step, self.schedule.steps_per_epoch)
        batches = _batches(len(self.data.train), self.cfg.train.batch_size, self.cfg.runtime.seed, epoch)
        per_step = self.schedule.micro_per_step
        group = batches[offset * per_step : (offset + 1) * per_step]
        mine = group[self.runtime.rank :: world]
        tokens = sum(self.data.train_examples[i].input_ids.shape[0] for index in mine for i in index) * world
        step_loss = torch.zeros((), device=self.runtime.device)
        for index in mine:
            loss = self.loss(self.data.train, self.data.train_examples, index)
            accelerator.backward(loss / len(mine))
            step_loss += loss.detach() / len(mine)
        self._average_and_clip()
        lr = self.trainee.scheduler.get_last_lr()[0]
        self.trainee.optimizer.step()
        self.trainee.scheduler.step()
        self.trainee.optimizer.zero_grad(set_to_none=True)
        loss = float(accelerator.reduce(step_loss, reduction="mean"))
        return {"epoch": epoch, "loss": loss, "lr": lr, "pages": sum(map(len, mine)) * world, "tokens": tokens}

    def _average_and_clip(self) -> None:
        """DDP averages the adapter's gradients (not under FSDP); LoRA's live outside it."""
        accelerator, trained, clip = self.runtime.accelerator, self.trainee.trained, self.cfg.train.grad_clip
        if self.runtime.world > 1:
            for param in trained if self.sharded else self.trainee.lora_params:
                if param.grad is not None:
                    param.grad = accelerator.reduce(param.grad, reduction="mean")
        if clip > 0:
            if self.sharded:
                torch.nn.utils.clip_grad_norm_(trained, clip)
            else:
                accelerator.clip_grad_norm_(trained, clip)

    def run(self, step: int) -> int:
        """Steps from ``step`` to the schedule's end; returns the last step."""
        opt, total = self.cfg.train, self.schedule.total_steps
        if step == 0:  # the starting point of the eval curve
            self.last_eval = self.evaluate()
            start = {"step": 0, "epoch": 0, "loss": None, "eval_loss": self.last_eval, "lr": 0.0}
            start |= {"pages_per_s": None, "tokens_per_s": None}
            self.write(start)
        training_mode(self.trainee.adapter, self.model, True, self.llm_train_mode)
        window_start = time.perf_counter()
        while step < total:
            done = self.step(step)
            step += 1
            elapsed = time.perf_counter() - window_start  # training only: eval below is not counted
            self.last_loss = done["loss"]
            self.first_loss = self.last_loss if self.first_loss is None else self.first_loss
            self.pages_seen += done["pages"]
            self.train_s += elapsed
            record = {
                "step": step,
                "epoch": done["epoch"],
                "loss": done["loss"],
                "eval_loss": None,
                "lr": done["lr"],
                "pages_per_s": done["pages"] / elapsed if elapsed > 0 else None,
                "tokens_per_s": done["tokens"] / elapsed if elapsed > 0 else None,
            }
            if step % opt.eval_every == 0 or step == total:
                record["eval_loss"] = self.last_eval = self.evaluate()
            self.write(record)
            self.emit({"event": "step", **record, "total": total})
            window_start = time.perf_counter()
        self.runtime.accelerator.wait_for_everyone()
        return step

    @property
    def llm_train_mode(self) -> bool:
        return self.cfg.train.gradient_checkpointing or self.trainee.lora is not None

    def write(self, record: dict) -> None:
        """The step's metrics (metrics.jsonl; the trackers every ``train.log_every`` steps, on eval steps
        and at the end) and, on the checkpoint steps, a checkpoint (main process only)."""
        if not self.runtime.is_main:
            return
        self.metrics.append(record)
        step, opt = record["step"], self.cfg.train
        if step % opt.log_every == 0 or record["eval_loss"] is not None or step == self.schedule.total_steps:
            self.trackers.log(tracked_values(record, peak_memory(self.runtime.device)), step)
        if step and (step % opt.checkpoint_every == 0 or step == self.schedule.total_steps):
            save_checkpoint(
                self.run_path,
                self.runtime.accelerator.unwrap_model(self.trainee.adapter),
                self.trainee.optimizer,
                self.trainee.scheduler,
                step,
                opt.keep_checkpoints,
                training_record(self.cfg),
                dict(zip(("epoch", "batch_group"), divmod(step, self.schedule.steps_per_epoch))),
                lora=None if self.trainee.lora is None else (self.model, self.trainee.lora),
            )


def tracked_values(record: dict, peaks: dict) -> dict:
    """A metrics.jsonl record (and the peak memory so far) as the trackers' scalars."""
    names = {"loss": "train/loss", "lr": "train/lr", "pages_per_s": "train/pages_per_s"}
    names |= {"tokens_per_s": "train/tokens_per_s", "epoch": "train/epoch", "eval_loss": "eval/loss"}
    values = {tracked: record.get(name) for name, tracked in names.items()}
    return values | {f"memory/peak_{name}": value for name, value in peaks.items()}


def training_record(cfg: TrainAdapterConfig) -> dict:
    """What an adapter's sidecar says about its training."""
    return {"objective": cfg.train.objective, "config": cfg.model_dump(mode="json")}


def finish_training(loop: Loop, reader: VisionLanguageReader, step: int) -> tuple[nn.Module, dict]:
    """The trained adapter written (with its LoRA and the loss plot), then the reading check on held-out
    pages (training pages when none are held out). Returns the adapter and the check's figures."""
    runtime, cfg = loop.runtime, loop.cfg
    final = runtime.accelerator.unwrap_model(loop.trainee.adapter)
    training_mode(final, loop.model, False, loop.llm_train_mode)
    if runtime.is_main:
        lora = None if loop.trainee.lora is None else (loop.model, loop.trainee.lora)
        save_trained(loop.run_path, final, {**training_record(cfg), "steps": step}, lora)
        plot_run_losses(loop.run_path)
    reading: dict = {}
    if cfg.train.read_pages and (runtime.is_main or loop.sharded):  # a sharded model reads in every process at once
        pages = loop.data.held_out if len(loop.data.held_out) else loop.data.train
        loop.emit({"event": "reading", "pages": min(cfg.train.read_pages, len(loop.data.held_out))})
        reading = reading_check(reader, final, pages, cfg.train.read_pages, cfg.train.read_max_new_tokens)
        if runtime.is_main:
            write_reading_records(loop.run_path, reading["records"])
    figures = {k: v for k, v in reading.items() if k != "records"}
    loop.trackers.log({f"reading/{name}": value for name, value in figures.items()}, step)
    return final, figures


def train_adapter(
    cfg: TrainAdapterConfig,
    run_path: Path,
    runtime: TrainingRuntime,
    reader: VisionLanguageReader,
    *,
    documents: list[str] | None = None,
    resume: Checkpoint | None = None,
    progress: TrainingEvents | None = None,
    encoder: PageEncoder | None = None,
) -> TrainResult:
    """Train the adapter per ``cfg`` into ``run_path`` (adapter, metrics.jsonl, checkpoints, loss.png,
    reading.jsonl, the trackers' files). ``runtime`` (``training_runtime``) and ``reader``
    (``load_reader``) are built once by the caller; ``documents`` (``training_corpus(cfg)``) and
    ``resume`` (``open_checkpoint``) let it check the corpus and the checkpoint before ``run_path`` exists."""
    memory = PeakMemory(runtime.device)
    documents = documents if documents is not None else training_corpus(cfg)
    encoder = encoder or DeepEncoderPages(cfg.deepencoder, cfg.runtime, runtime.device, cfg.data.encode_batch_size)
    loop = build_loop(cfg, run_path, runtime, reader, documents, resume, progress or _silent, encoder)
    try:
        step = loop.run(loop.first_step)
        final, reading = finish_training(loop, reader, step)
    except BaseException:
        loop.trackers.finish(failed=True)
        raise
    loop.trackers.finish()
    parameters = {**loop.parameters, "adapter": parameter_count(final)}
    return _result(loop, step, step - loop.first_step, parameters, _peaks(memory, runtime), reading)


def build_loop(
    cfg: TrainAdapterConfig,
    run_path: Path,
    runtime: TrainingRuntime,
    reader: VisionLanguageReader,
    documents: list[str],
    resume: Checkpoint | None,
    progress: TrainingEvents,
    encoder: PageEncoder,
) -> Loop:
    """Set-up in order: the feature cache, adapter, LoRA, optimizer and schedule, the start (or the
    checkpoint's), the trackers, the distributed layout, gradient checkpointing."""
    emit = progress if runtime.is_main else _silent
    data = prepare_data(cfg, runtime, reader, documents, encoder, emit)
    schedule = make_schedule(cfg.train, len(data.train), runtime.world)
    trainee = make_trainee(cfg, runtime, reader, encoder.out_dim, schedule.total_steps)
    step = start_or_resume(trainee, resume, cfg, runtime, reader, run_path / METRICS_FILE)
    lora = sum(p.numel() for p in trainee.lora_params)
    parameters = {
        "deepencoder": encoder.parameter_count(),
        "language_model": parameter_count(reader.model) - lora,  # before sharding unties a tied head
        "lora": lora,
    }
    sharded = distribute(trainee, runtime, reader.model)
    if cfg.train.gradient_checkpointing:
        enable_gradient_checkpointing(reader.model)
    trackers = Trackers()
    if runtime.is_main:  # under accelerate launch only the main process logs
        settings, resumed_at = cfg.model_dump(mode="json"), None if resume is None else step
        trackers = open_trackers(cfg.train.log_with, run_path, "train-adapter", settings, resumed_at)
    emit(
        {"event": "start", "total": schedule.total_steps, "step": step, "cache_hit": data.cache_hit}
        | {"train_pages": len(data.train), "eval_pages": len(data.held_out)}
    )
    return Loop(
        cfg, runtime, reader.model, data, trainee, schedule, sharded, run_path, emit, trackers, step, parameters
    )


def _peaks(memory: PeakMemory, runtime: TrainingRuntime) -> dict:
    """The run's peak memory; under a launch the busiest process's."""
    peaks = memory.run_peak()
    return busiest(gather_object([peaks])) if runtime.world > 1 else peaks


def _result(loop: Loop, step: int, steps_here: int, parameters: dict, peaks: dict, reading: dict) -> TrainResult:
    """``step``: the run's last step; ``steps_here``: the steps this attempt ran (a resume ran fewer)."""
    data = loop.data
    return TrainResult(
        steps=step,
        train_pages=len(data.train),
        eval_pages=len(data.held_out),
        vision_tokens=data.vision_tokens,
        final_loss=loop.last_loss,
        final_eval_loss=loop.last_eval,
        first_loss=loop.first_loss,
        pages_per_s=loop.pages_seen / loop.train_s if loop.train_s > 0 else 0.0,
        step_s=loop.train_s / steps_here if steps_here else None,
        cache_hit=data.cache_hit,
        encode_s=data.encode_s,
        parameters=parameters,
        peak_memory_gib=peaks,
        training_pages=page_statistics(data.train, data.train_examples, loop.cfg.data.max_text_tokens),
        reading=reading,
        layout="fsdp" if loop.sharded else ("ddp" if loop.runtime.world > 1 else "single"),
        language_model_local_parameters=local_parameter_count(loop.model),
        models=training_models(loop.cfg.vlm.source, loop.cfg.vlm.tokenizer, loop.cfg.deepencoder.weights),
    )
