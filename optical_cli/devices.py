"""Which device and dtype a run uses, and waiting for a device's queued work.

Kept apart from the weight loader (models/loading.py) so that commands that load no model
(``index search``, ``sweep``) can resolve ``runtime.device`` without importing it.
"""

from __future__ import annotations

import torch

from .errors import ConfigError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` picks the first CUDA device when there is one, else the CPU."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"runtime.device={spec!r} but no CUDA device is available; use 'cpu' or 'auto'")
        device = torch.device(spec)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"runtime.device={spec!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
        return device
    raise ConfigError(f"runtime.device={spec!r} is not valid; use auto, cpu, cuda or cuda:N")


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """``auto`` is bfloat16 on a GPU that supports it and float32 elsewhere."""
    if spec == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if spec not in _DTYPES:
        raise ConfigError(f"runtime.dtype={spec!r} is not valid; use auto, float32, bfloat16 or float16")
    return _DTYPES[spec]


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so a wall-clock timing covers it (no-op off CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
