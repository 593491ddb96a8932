"""Schedule, checkpoints: the learning-rate schedule, RNG state, and save / find / open / restore a checkpoint."""

from __future__ import annotations

import math
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..artifacts import atomic_path
from ..errors import InputError
from ..models.adapter import ADAPTER_FILE, OpticalAdapter, save_adapter
from ..models.lora import LORA_DIR, save_lora
from ..records import RecordLog

CHECKPOINT_DIR = "checkpoints"


def lr_lambda(warmup: int, total: int, min_ratio: float) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    folder: Path,
    adapter: OpticalAdapter,
    optimizer,
    scheduler,
    step: int,
    keep: int,
    training: dict,
    data_position: dict,
    lora=None,
) -> Path:
    """``lora``: (model, LoraConfig) when LoRA trains; its PEFT directory goes in the checkpoint too."""
    target = folder / CHECKPOINT_DIR / f"step-{step:07d}"
    target.mkdir(parents=True, exist_ok=True)
    save_adapter(adapter, target / ADAPTER_FILE, training)
    if lora is not None:
        save_lora(*lora, target / LORA_DIR)
    state = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "data_position": data_position,
        "rng": _rng_state(),
    }
    with atomic_path(target / "trainer_state.pth") as tmp:
        torch.save(state, tmp)
    existing = sorted((folder / CHECKPOINT_DIR).glob("step-*"))
    for old in existing[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def latest_checkpoint(path: Path) -> Path:
    """``path`` itself when it is a checkpoint, else the newest complete one under ``path/checkpoints``."""
    if (path / "trainer_state.pth").is_file():
        return path
    found = sorted(p for p in (path / CHECKPOINT_DIR).glob("step-*") if (p / "trainer_state.pth").is_file())
    if not found:
        raise InputError(f"no checkpoint to resume from in {path}; pass a run directory with {CHECKPOINT_DIR}/step-*")
    return found[-1]


TRAINER_STATE_KEYS = ("optimizer", "scheduler", "step", "rng")  # what save_checkpoint writes and resume reads


@dataclass
class Checkpoint:
    """A checkpoint to resume from, opened and checked: its directory and its trainer state."""

    path: Path
    state: dict

    @property
    def step(self) -> int:
        return int(self.state["step"])


def open_checkpoint(path: Path) -> Checkpoint:
    """The newest complete checkpoint of a run directory (or ``path`` itself), read and checked,
    so a corrupt one fails before any model is loaded."""
    checkpoint = latest_checkpoint(path)
    return Checkpoint(checkpoint, load_trainer_state(checkpoint))


def load_trainer_state(checkpoint: Path) -> dict:
    try:
        state = torch.load(checkpoint / "trainer_state.pth", map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load fails in many types on a damaged file
        raise InputError(
            f"checkpoint {checkpoint} is corrupt ({type(exc).__name__}: {exc}); resume from an earlier one"
        ) from None
    missing = [key for key in TRAINER_STATE_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise InputError(
            f"checkpoint {checkpoint} is corrupt (trainer_state.pth lacks {', '.join(missing)}); resume from an "
            "earlier one"
        )
    return state


def restore_trainer_state(state: dict, optimizer, scheduler, metrics_path: Path) -> int:
    """Optimizer, scheduler and RNG as they were at the checkpoint; metrics cut back to its step."""
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    step = int(state["step"])
    _set_rng_state(state["rng"])
    log = RecordLog(metrics_path)
    log.rewrite([m for m in log.read() if m["step"] <= step])
    return step
