"""What a finished run leaves beside its metrics: the adapter (+ LoRA), the loss plot and the reading
check's records. Written by the main process only."""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib.figure import Figure

from ..artifacts import atomic_path, atomic_write_text
from ..models.adapter import ADAPTER_FILE, PUBLISHED_FILE, save_adapter, save_published
from ..models.lora import LORA_DIR, save_lora
from ..records import read_records

METRICS_FILE = "metrics.jsonl"
LOSS_PLOT = "loss.png"
READING_FILE = "reading.jsonl"


def save_trained(run_path: Path, adapter, training: dict, lora=None) -> Path | None:
    """The adapter (+ its JSON sidecar), ``adapter.pth`` in the published layout when that layout holds
    it exactly (returned; None when not), and, when LoRA trained (``lora``: (model, LoraConfig)), ``lora/``."""
    save_adapter(adapter, run_path / ADAPTER_FILE, training)
    published = save_published(adapter, run_path / PUBLISHED_FILE)
    if published is None:
        (run_path / PUBLISHED_FILE).unlink(missing_ok=True)  # an earlier attempt's must not pass for this adapter
    if lora is not None:
        save_lora(*lora, run_path / LORA_DIR)
    return published


def plot_losses(metrics: list[dict], path: Path) -> None:
    """Train and eval loss against the optimizer step, as a PNG (a Figure of its own: no pyplot state, no window)."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
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


def plot_run_losses(run_path: Path) -> None:
    plot_losses(read_records(run_path / METRICS_FILE), run_path / LOSS_PLOT)


def write_reading_records(run_path: Path, records: list[dict]) -> None:
    atomic_write_text(run_path / READING_FILE, "".join(json.dumps(r) + "\n" for r in records))
