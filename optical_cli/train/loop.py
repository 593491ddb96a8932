"""Training: runtime, reader and adapter set-up, the loss of a batch, evaluation, gradient checkpointing,
the loss plot and the loop itself (train_adapter)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..artifacts import append_jsonl, atomic_path, atomic_write_text, read_jsonl
from ..config import TrainAdapterConfig
from ..devices import resolve_device, resolve_dtype
from ..errors import ConfigError, InputError
from ..memory import PeakMemory, busiest
from ..models.adapter import AdapterConfig, OpticalAdapter, load_adapter, parameter_count, save_adapter
from ..models.lora import load_lora
from ..models.vlm import VisionLanguageReader
from .checkpoints import Checkpoint, lr_lambda, restore_trainer_state, save_checkpoint
from .corpus import read_documents
from .objectives import Example, collate, make_examples, mse_loss, page_statistics, reconstruction_loss
from .pages import DeepEncoderPages, PageEncoder, PageSet, Progress, build_page_set, split_documents
from .reading import reading_check
from .sharding import fsdp_requested, local_parameter_count, shard_language_model


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


def resolve_runtime(cfg: TrainAdapterConfig):
    """(accelerator, device, dtype) of a run: the configured device, or each process's own under
    ``accelerate launch``."""
    from accelerate import Accelerator

    device = resolve_device(cfg.runtime.device)
    accelerator = Accelerator(cpu=device.type == "cpu")
    if accelerator.num_processes > 1 and accelerator.device.type == "cuda":
        device = accelerator.device  # this process's own GPU (on CPUs accelerate says cpu:0, which is the CPU)
    return accelerator, device, resolve_dtype(cfg.runtime.dtype, device)


def load_reader(cfg: TrainAdapterConfig) -> VisionLanguageReader:
    """The frozen language model and tokenizer of ``cfg.vlm`` on the run's device (the slow part of start-up)."""
    _, device, dtype = resolve_runtime(cfg)
    return VisionLanguageReader.from_config(cfg.vlm, device, dtype, seed=cfg.runtime.seed)


def make_adapter(cfg: TrainAdapterConfig, vision_dim: int, reader: VisionLanguageReader) -> OpticalAdapter:
    if cfg.adapter.init:
        adapter = load_adapter(cfg.adapter.init, llm_dim=reader.hidden_size, vision_dim=vision_dim)
        if not isinstance(adapter, OpticalAdapter):
            raise ConfigError(
                f"adapter.init={cfg.adapter.init} is in the {adapter.layout} layout, which bench longbench "
                "reads but train-adapter does not continue; start from an adapter of ours or from scratch"
            )
        return adapter
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.runtime.seed)
        adapter = OpticalAdapter(
            AdapterConfig(vision_dim, cfg.adapter.hidden_dim, reader.hidden_size, cfg.adapter.max_pages)
        )
    rms = reader.embed_tokens.weight.detach().float().pow(2).mean().sqrt().item()
    adapter.set_output_scale(rms)  # start at the scale of the LLM's own token embeddings
    return adapter


def _batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def _loss(
    objective: str,
    model,
    adapter,
    pages: PageSet,
    examples: list[Example],
    index: list[int],
    pad_id: int,
    device: torch.device,
    autocast: bool,
) -> torch.Tensor:
    features = pages.features[index].to(device)
    page_index = torch.tensor([pages.page_index[i] for i in index], device=device)
    chosen = [examples[i] for i in index]
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        adapted = adapter(features, page_index)
        if objective == "mse":
            return mse_loss(model, adapted, chosen)
        batch = {k: v.to(device) for k, v in collate(chosen, pad_id).items()}
        return reconstruction_loss(model, adapted, batch)


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


@torch.no_grad()
def evaluate(
    objective: str,
    model,
    adapter,
    pages: PageSet,
    examples: list[Example],
    batch_size: int,
    pad_id: int,
    device: torch.device,
    autocast: bool,
) -> float | None:
    """Mean held-out loss, computed in eval mode (the caller's mode is restored)."""
    if not len(pages):
        return None
    modes = adapter.training, model.training
    adapter.eval()
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(pages), batch_size):
        index = list(range(start, min(len(pages), start + batch_size)))
        total += float(_loss(objective, model, adapter, pages, examples, index, pad_id, device, autocast)) * len(index)
        count += len(index)
    adapter.train(modes[0])
    model.train(modes[1])
    return total / count


def plot_losses(metrics: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    train = [(m["step"], m["loss"]) for m in metrics if m.get("loss") is not None]
    evals = [(m["step"], m["eval_loss"]) for m in metrics if m.get("eval_loss") is not None]
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def train_adapter(
    cfg: TrainAdapterConfig,
    run_path: Path,
    resume: Checkpoint | None = None,
    progress: Progress | None = None,
    encoder: PageEncoder | None = None,
    reader: VisionLanguageReader | None = None,
    documents: list[str] | None = None,
) -> TrainResult:
    """Train the adapter per ``cfg``; artifacts go to ``run_path`` (adapter.pth, metrics.jsonl, loss.png, ...).

    ``documents`` (``read_documents(cfg)``), ``resume`` (``open_checkpoint``) and ``reader``
    (``load_reader(cfg)``) let a caller check the corpus and the checkpoint and load the model
    before creating ``run_path``.
    """
    accelerator, device, dtype = resolve_runtime(cfg)
    memory = PeakMemory(device)
    autocast = device.type == "cuda" and dtype == torch.bfloat16
    emit = progress if (progress and accelerator.is_main_process) else (lambda event: None)
    opt = cfg.train

    documents = documents if documents is not None else read_documents(cfg)
    reader = reader or load_reader(cfg)
    encoder = encoder or DeepEncoderPages(cfg.deepencoder, cfg.runtime, device, cfg.data.encode_batch_size)
    started = time.perf_counter()
    train_documents, eval_documents = split_documents(documents, cfg.data.eval_fraction, cfg.runtime.seed)
    with accelerator.main_process_first():
        train_pages, cache_hit = build_page_set(train_documents, cfg, encoder, Path(cfg.data.cache_dir), emit)
        eval_pages = (
            build_page_set(eval_documents, cfg, encoder, Path(cfg.data.cache_dir), emit)[0]
            if eval_documents
            else PageSet.empty()
        )
    encode_s = time.perf_counter() - started
    if not len(train_pages):
        raise InputError(
            "no training pages after holding out eval documents; lower data.eval_fraction or add documents"
        )
    train_examples = make_examples(reader, train_pages, cfg.data.max_text_tokens)
    eval_examples = make_examples(reader, eval_pages, cfg.data.max_text_tokens)
    pad_id = reader.tokenizer.token_id("<|endoftext|>")

    adapter = make_adapter(cfg, encoder.out_dim, reader).to(device)
    reader.adapter = adapter
    lora, lora_params = None, []
    if opt.lora.rank:  # low-rank updates of the frozen LLM, trained with the adapter
        from ..models.lora import add_lora, lora_config

        lora = (reader.model, lora_config(opt.lora.rank, opt.lora.alpha, opt.lora.dropout, opt.lora.target_modules))
        lora_params = add_lora(reader.model, lora[1], seed=cfg.runtime.seed)
    optimizer = torch.optim.AdamW(list(adapter.parameters()) + lora_params, lr=opt.lr, weight_decay=opt.weight_decay)
    world = accelerator.num_processes
    batches_per_epoch = math.ceil(len(train_pages) / opt.batch_size)
    steps_per_epoch = max(1, batches_per_epoch // (opt.grad_accum * world))
    total_steps = opt.max_steps or opt.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(opt.warmup_steps, total_steps, opt.min_lr_ratio))
    step = 0
    metrics_path = run_path / "metrics.jsonl"
    if resume is not None:
        adapter.load_state_dict(
            load_adapter(resume.path / "adapter.pth", reader.hidden_size, encoder.out_dim).state_dict()
        )
        if lora is not None:
            from ..models.lora import LORA_DIR

            if not (resume.path / LORA_DIR).is_dir():
                raise InputError(
                    f"{resume.path} has no {LORA_DIR}/ directory but train.lora.rank={opt.lora.rank}; "
                    "resume with the LoRA settings the run was started with"
                )
            load_lora(reader.model, resume.path / LORA_DIR, resume=True)
        step = restore_trainer_state(resume.state, optimizer, scheduler, metrics_path)
    else:
        torch.manual_seed(cfg.runtime.seed + accelerator.process_index)  # LoRA dropout: the same draws every run
        if metrics_path.exists() and accelerator.is_main_process:
            metrics_path.unlink()
    lm_parameters = parameter_count(reader.model) - sum(p.numel() for p in lora_params)  # before sharding unties a head
    sharded = world > 1 and fsdp_requested()
    if sharded:  # the frozen LLM split across processes; the trained weights stay whole, gradients averaged below
        shard_language_model(reader.model, keep_whole=lora_params)
    else:
        adapter, optimizer = accelerator.prepare(adapter, optimizer)
    model = reader.model
    if opt.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    training_info = {"objective": opt.objective, "config": cfg.model_dump(mode="json")}
    emit(
        {
            "event": "start",
            "total": total_steps,
            "step": step,
            "train_pages": len(train_pages),
            "eval_pages": len(eval_pages),
            "cache_hit": cache_hit,
        }
    )

    micro_per_step = opt.grad_accum * world
    first_loss = last_loss = last_eval = None
    if step == 0:  # the starting point of the eval curve
        last_eval = evaluate(
            opt.objective, model, adapter, eval_pages, eval_examples, opt.batch_size, pad_id, device, autocast
        )
        if accelerator.is_main_process:
            append_jsonl(
                metrics_path,
                {"step": 0, "epoch": 0, "loss": None, "eval_loss": last_eval, "lr": 0.0, "pages_per_s": None},
            )
    window_pages, window_start = 0, time.perf_counter()
    train_s, pages_seen, first_step = 0.0, 0, step
    training_mode(adapter, model, True, opt.gradient_checkpointing or lora is not None)
    trained = list(adapter.parameters()) + lora_params
    while step < total_steps:
        epoch, offset = divmod(step, steps_per_epoch)
        batches = _batches(len(train_pages), opt.batch_size, cfg.runtime.seed, epoch)
        group = batches[offset * micro_per_step : (offset + 1) * micro_per_step]
        mine = group[accelerator.process_index :: world]
        step_loss = torch.zeros((), device=device)
        for index in mine:
            loss = _loss(opt.objective, model, adapter, train_pages, train_examples, index, pad_id, device, autocast)
            accelerator.backward(loss / len(mine))
            step_loss += loss.detach() / len(mine)
            window_pages += len(index) * world
        if world > 1:  # DDP averages the adapter's gradients (not under FSDP); LoRA's live outside it
            for param in trained if sharded else lora_params:
                if param.grad is not None:
                    param.grad = accelerator.reduce(param.grad, reduction="mean")
        if opt.grad_clip > 0:
            if sharded:
                torch.nn.utils.clip_grad_norm_(trained, opt.grad_clip)
            else:
                accelerator.clip_grad_norm_(trained, opt.grad_clip)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        last_loss = float(accelerator.reduce(step_loss, reduction="mean"))
        first_loss = last_loss if first_loss is None else first_loss
        elapsed = time.perf_counter() - window_start  # training only: eval below is not counted
        record = {
            "step": step,
            "epoch": epoch,
            "loss": last_loss,
            "eval_loss": None,
            "lr": lr,
            "pages_per_s": window_pages / elapsed if elapsed > 0 else None,
        }
        pages_seen += window_pages
        train_s += elapsed
        if step % opt.eval_every == 0 or step == total_steps:
            last_eval = evaluate(
                opt.objective, model, adapter, eval_pages, eval_examples, opt.batch_size, pad_id, device, autocast
            )
            record["eval_loss"] = last_eval
        if accelerator.is_main_process:
            append_jsonl(metrics_path, record)
            if step % opt.checkpoint_every == 0 or step == total_steps:
                position = dict(zip(("epoch", "batch_group"), divmod(step, steps_per_epoch)))
                save_checkpoint(
                    run_path,
                    accelerator.unwrap_model(adapter),
                    optimizer,
                    scheduler,
                    step,
                    opt.keep_checkpoints,
                    training_info,
                    position,
                    lora=lora,
                )
        emit({"event": "step", **record, "total": total_steps})
        window_pages, window_start = 0, time.perf_counter()
    accelerator.wait_for_everyone()
    final = accelerator.unwrap_model(adapter)
    training_mode(final, model, False, opt.gradient_checkpointing or lora is not None)
    reading: dict = {}
    if accelerator.is_main_process:
        save_adapter(final, run_path / "adapter.pth", {**training_info, "steps": step})
        if lora is not None:
            from ..models.lora import LORA_DIR, save_lora

            save_lora(*lora, run_path / LORA_DIR)
        plot_losses(read_jsonl(metrics_path), run_path / "loss.png")
    if opt.read_pages and (accelerator.is_main_process or sharded):  # a sharded model reads in every process at once
        emit({"event": "reading", "pages": min(opt.read_pages, len(eval_pages))})
        reader.adapter = final
        reading = reading_check(
            reader, eval_pages if len(eval_pages) else train_pages, opt.read_pages, opt.read_max_new_tokens
        )
        if accelerator.is_main_process:
            atomic_write_text(run_path / "reading.jsonl", "".join(json.dumps(r) + "\n" for r in reading["records"]))
    peaks = memory.run_peak()
    if world > 1:  # every process's peaks; the report keeps the busiest
        from accelerate.utils import gather_object

        peaks = busiest(gather_object([peaks]))
    return TrainResult(
        steps=step,
        train_pages=len(train_pages),
        eval_pages=len(eval_pages),
        vision_tokens=int(train_pages.features.shape[1]),
        final_loss=last_loss,
        final_eval_loss=last_eval,
        first_loss=first_loss,
        pages_per_s=pages_seen / train_s if train_s > 0 else 0.0,
        step_s=train_s / (step - first_step) if step > first_step else None,
        cache_hit=cache_hit,
        encode_s=encode_s,
        parameters={
            "deepencoder": encoder.parameter_count(),
            "adapter": parameter_count(final),
            "language_model": lm_parameters,
            "lora": sum(p.numel() for p in lora_params),
        },
        peak_memory_gib=peaks,
        training_pages=page_statistics(train_pages, train_examples, cfg.data.max_text_tokens),
        reading={k: v for k, v in reading.items() if k != "records"},
        layout="fsdp" if sharded else ("ddp" if world > 1 else "single"),
        language_model_local_parameters=local_parameter_count(reader.model),
    )
