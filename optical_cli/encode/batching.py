"""``encode.batch_size: auto``: the batch chosen per device from a measurement, not one default for all.

The best batch differs by device: a GPU wants 16-64 views a forward, and a CPU may be slowest at
large batches (measured on an idle 2-core machine, base pages in float32: 50.7 and 56.7 s for 4 pages
at batch 1, 67.2 and 76.6 s at batch 4). So the first batches of a run are the measurement: one
warm-up batch (kernel choices, ``deepencoder.attention: auto``'s timing), then one batch of each
candidate size (CPU 1, 2, 4; GPU 8, 16, 32, 64), timed to the end of the device's work; the fastest
per view is kept for the rest of the run and stored in ``$OPTICAL_CACHE/encode-batch.json`` under the
device's name, dtype, mode and encoder, so the next run on that device starts with it. Every batch
measured is real work: its features are kept.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field

import torch

from ..artifacts import atomic_write_json
from ..models.loading import cache_dir

AUTO_BATCH = "auto"
BATCH_CANDIDATES = {"cpu": (1, 2, 4), "cuda": (8, 16, 32, 64)}
STORE = "encode-batch.json"


def device_name(device: torch.device) -> str:
    """The device as a measurement is valid for: the GPU's model, or the CPU's model and core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model} x{os.cpu_count()}"


def store_path():
    return cache_dir() / STORE


def read_store() -> dict:
    try:
        return json.loads(store_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


@dataclass
class BatchChooser:
    """The batch (in views) for each forward of a run: the configured one, the one stored for this
    device, or the candidates measured in turn until the fastest is known."""

    size: int
    source: str  # config | stored | measured | measuring
    key: str = ""
    plan: list[int] = field(default_factory=list)  # batches still to measure, the warm-up first
    warm_up: bool = False
    seconds_per_view: dict[int, float] = field(default_factory=dict)

    @classmethod
    def for_run(cls, setting: int | str, device: torch.device, dtype: torch.dtype, encoder: str) -> "BatchChooser":
        """``setting``: a number, or ``auto``; ``encoder``: what else makes the timing (mode, weights, attention)."""
        if setting != AUTO_BATCH:
            return cls(int(setting), "config")
        key = f"{device_name(device)} | {str(dtype).removeprefix('torch.')} | {encoder}"
        stored = read_store().get(key)
        if stored:
            return cls(int(stored["batch_size"]), "stored", key)
        candidates = list(BATCH_CANDIDATES.get(device.type, BATCH_CANDIDATES["cuda"]))
        return cls(candidates[0], "measuring", key, candidates, warm_up=True)

    def record(self, views: int, seconds: float) -> None:
        """One forward of ``views`` views took ``seconds``; a batch cut short (a shard's end) measures nothing."""
        if self.source != "measuring" or views != self.size:
            return
        if self.warm_up:
            self.warm_up = False
            return
        self.seconds_per_view[self.size] = seconds / views
        self.plan.pop(0)
        if self.plan:
            self.size = self.plan[0]
            return
        self.size = min(self.seconds_per_view, key=self.seconds_per_view.get)
        self.source = "measured"
        store = read_store()
        store[self.key] = {
            "batch_size": self.size,
            "seconds_per_view": {str(k): round(v, 6) for k, v in self.seconds_per_view.items()},
            "measured": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        store_path().parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(store_path(), store)

    def summary(self) -> dict:
        """For the run's summary: the batch kept, how it was chosen, what was measured (s a view)."""
        best = min(self.seconds_per_view, key=self.seconds_per_view.get) if self.seconds_per_view else self.size
        return {
            "batch_size_chosen": self.size if self.source != "measuring" else best,
            "batch_choice": self.source,
            **(
                {"batch_seconds_per_view": {str(k): round(v, 4) for k, v in self.seconds_per_view.items()}}
                if self.seconds_per_view
                else {}
            ),
        }
