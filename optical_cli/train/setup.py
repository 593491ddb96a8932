"""Set-up of a training run: the runtime (processes, device, dtype and the one Accelerator), the frozen
reader, the adapter, LoRA, AdamW and its schedule, and the start (fresh or from a checkpoint).

Everything here runs once, before the first step; the loop (``loop.py``) takes what it returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn

from ..config.sections import RuntimeConfig
from ..devices import resolve_device, resolve_dtype
from ..distributed import Processes, join
from ..errors import ConfigError, InputError
from ..models.adapter import AdapterConfig, OpticalAdapter, PublishedAdapter, load_adapter
from ..models.lora import LORA_DIR, add_lora, load_lora, lora_config
from ..models.vlm import VisionLanguageReader
from .checkpoints import Checkpoint, lr_lambda, restore_trainer_state
from .config import TrainAdapterConfig, TrainOptimSection
from .sharding import fsdp_requested, shard_language_model


@dataclass(frozen=True)
class TrainingRuntime:
    """Where a run trains, decided once and passed down: its processes (several under ``accelerate
    launch``), the one Accelerator over them, this process's device and dtype."""

    processes: Processes
    accelerator: Accelerator
    device: torch.device
    dtype: torch.dtype

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def autocast(self) -> bool:
        """bf16 autocast: on a GPU at bfloat16 (the CPU runs the configured dtype as it is)."""
        return self.device.type == "cuda" and self.dtype == torch.bfloat16


def training_runtime(section: RuntimeConfig, processes: Processes | None = None) -> TrainingRuntime:
    """The run's runtime per ``runtime:``. ``processes``: the run's processes as the command joined
    them (``distributed.join``, joined here when not given); the Accelerator is built on that group,
    and a process of a multi-GPU launch trains on its own GPU."""
    device = resolve_device(section.device)
    processes = processes if processes is not None else join(device)
    device = processes.place(device)
    accelerator = Accelerator(cpu=device.type == "cpu")
    return TrainingRuntime(processes, accelerator, device, resolve_dtype(section.dtype, device))


def load_reader(cfg: TrainAdapterConfig, runtime: TrainingRuntime) -> VisionLanguageReader:
    """The frozen language model and tokenizer of ``cfg.vlm`` on the run's device (the slow part of start-up)."""
    return VisionLanguageReader.from_config(cfg.vlm, runtime.device, runtime.dtype, seed=cfg.runtime.seed)


LAYOUTS = {OpticalAdapter.layout: OpticalAdapter, PublishedAdapter.layout: PublishedAdapter}


def initial_adapter(cfg: TrainAdapterConfig, reader: VisionLanguageReader, vision_dim: int | None = None):
    """``adapter.init`` loaded and checked against the models (in ``adapter.layout``), or None for a fresh start."""
    if not cfg.adapter.init:
        return None
    adapter = load_adapter(cfg.adapter.init, llm_dim=reader.hidden_size, vision_dim=vision_dim)
    if adapter.layout != cfg.adapter.layout:
        raise ConfigError(
            f"adapter.init={cfg.adapter.init} is in the {adapter.layout} layout but adapter.layout="
            f"{cfg.adapter.layout}; set adapter.layout={adapter.layout} to continue it, or start from scratch"
        )
    return adapter


def make_adapter(cfg: TrainAdapterConfig, vision_dim: int, reader: VisionLanguageReader):
    """``adapter.init`` when set, else a fresh adapter in ``adapter.layout`` seeded by ``runtime.seed``
    (page embeddings at zero, in either layout) whose output starts at the scale of the LLM's own
    token embeddings."""
    adapter = initial_adapter(cfg, reader, vision_dim)
    if adapter is not None:
        return adapter
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.runtime.seed)
        adapter = LAYOUTS[cfg.adapter.layout](
            AdapterConfig(vision_dim, cfg.adapter.hidden_dim, reader.hidden_size, cfg.adapter.max_pages)
        )
    if isinstance(adapter, PublishedAdapter):
        torch.nn.init.zeros_(adapter.page_embeddings.weight)  # the published code left them random
    rms = reader.embed_tokens.weight.detach().float().pow(2).mean().sqrt().item()
    adapter.set_output_scale(rms)
    return adapter


@dataclass(frozen=True)
class Schedule:
    """How many optimizer steps: per epoch (every process's micro-batches together) and in all."""

    steps_per_epoch: int
    total_steps: int
    micro_per_step: int  # micro-batches of one optimizer step, all processes together


def make_schedule(opt: TrainOptimSection, train_pages: int, world: int) -> Schedule:
    micro_per_step = opt.grad_accum * world
    steps_per_epoch = max(1, math.ceil(train_pages / opt.batch_size) // micro_per_step)
    return Schedule(steps_per_epoch, opt.max_steps or opt.epochs * steps_per_epoch, micro_per_step)


@dataclass
class Trainee:
    """What trains: the adapter, LoRA on the frozen LLM (``train.lora.rank`` > 0), AdamW over both and
    its warmup + cosine schedule. ``adapter`` and ``optimizer`` are accelerate's wrappers once
    :func:`distribute` has run."""

    adapter: nn.Module
    lora: object | None  # peft's LoraConfig when LoRA trains
    lora_params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR

    @property
    def trained(self) -> list[nn.Parameter]:
        return list(self.adapter.parameters()) + self.lora_params


def make_trainee(
    cfg: TrainAdapterConfig, runtime: TrainingRuntime, reader: VisionLanguageReader, vision_dim: int, total_steps: int
) -> Trainee:
    opt = cfg.train
    adapter = make_adapter(cfg, vision_dim, reader).to(runtime.device)
    lora, lora_params = None, []
    if opt.lora.rank:  # low-rank updates of the frozen LLM, trained with the adapter
        lora = lora_config(opt.lora.rank, opt.lora.alpha, opt.lora.dropout, opt.lora.target_modules)
        lora_params = add_lora(reader.model, lora, seed=cfg.runtime.seed)
    optimizer = torch.optim.AdamW(list(adapter.parameters()) + lora_params, lr=opt.lr, weight_decay=opt.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(opt.warmup_steps, total_steps, opt.min_lr_ratio))
    return Trainee(adapter, lora, lora_params, optimizer, scheduler)


def start_or_resume(
    trainee: Trainee,
    checkpoint: Checkpoint | None,
    cfg: TrainAdapterConfig,
    runtime: TrainingRuntime,
    reader: VisionLanguageReader,
    metrics_path: Path,
) -> int:
    """The step the run starts from: 0 (RNG seeded per process, so LoRA dropout draws repeat run to
    run; earlier metrics cleared), or the checkpoint's, with adapter, LoRA, optimizer, schedule and
    RNG as they were there and the metrics cut back to it."""
    if checkpoint is None:
        torch.manual_seed(cfg.runtime.seed + runtime.rank)
        if metrics_path.exists() and runtime.is_main:
            metrics_path.unlink()
        return 0
    saved = load_adapter(checkpoint.path, reader.hidden_size, trainee.adapter.config.vision_dim)
    trainee.adapter.load_state_dict(saved.state_dict())
    if trainee.lora is not None:
        if not (checkpoint.path / LORA_DIR).is_dir():
            raise InputError(
                f"{checkpoint.path} has no {LORA_DIR}/ directory but train.lora.rank={cfg.train.lora.rank}; "
                "resume with the LoRA settings the run was started with"
            )
        load_lora(reader.model, checkpoint.path / LORA_DIR, resume=True)
    return restore_trainer_state(checkpoint.state, trainee.optimizer, trainee.scheduler, metrics_path)


def distribute(trainee: Trainee, runtime: TrainingRuntime, model: nn.Module) -> bool:
    """Spread the run over its processes: FSDP shards the frozen LLM (``accelerate launch`` with an
    FSDP config; the trained weights stay whole, the loop averages their gradients), otherwise DDP
    wraps the adapter and its optimizer. True when sharded."""
    sharded = runtime.world > 1 and fsdp_requested()
    if sharded:
        shard_language_model(model, keep_whole=trainee.lora_params)
    else:
        trainee.adapter, trainee.optimizer = runtime.accelerator.prepare(trainee.adapter, trainee.optimizer)
    return sharded


def enable_gradient_checkpointing(model) -> None:
    """Recompute the frozen LLM's layer activations in backward instead of keeping them (non-reentrant:
    the adapted embeddings are the only input that needs a gradient)."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers 5 (the older name warns there)
        model.activation_checkpointing_enable()
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def training_mode(adapter, model, on: bool, llm_train_mode: bool) -> None:
    """The adapter trains; the frozen LLM is put in train mode only for gradient checkpointing
    (which transformers applies to layers in train mode) and for LoRA (its dropout); Qwen3-VL
    itself has no dropout, so its numbers are the same in either mode."""
    adapter.train(on)
    model.train(on and llm_train_mode)
