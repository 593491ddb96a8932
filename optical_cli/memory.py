"""Peak memory of a run or of one stage: the CPU resident set and, on a GPU, CUDA's max allocated; and
what counts as running out of it (:func:`is_out_of_memory`).

The CPU figure is the kernel's high-water mark of the resident set (``VmHWM``), which Linux
lets a process reset (``/proc/self/clear_refs``), so a stage's own peak can be read; where
that is not possible (another OS), the figure is the process's peak so far (``ru_maxrss``).
"""

from __future__ import annotations

import contextlib
import resource
import sys
from pathlib import Path
from typing import Iterator

import torch
from accelerate.utils.memory import should_reduce_batch_size

GIB = 2**30
# torch's own out-of-memory error (CUDA, XPU, MPS); before torch 2.5 only CUDA's had a class
_TORCH_OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def is_out_of_memory(exc: BaseException) -> bool:
    """An allocation that failed, on any device: torch's out-of-memory error, Python's MemoryError, or an error
    accelerate recognises as one (the CPU allocator's, HPU's, cuDNN's unsupported-size): the one test every
    caller that halves a batch or records an item as ``oom`` uses."""
    return isinstance(exc, (_TORCH_OOM, MemoryError)) or should_reduce_batch_size(exc)


def reset_peak(device: torch.device | None = None) -> None:
    """Start a new peak: from now on ``peak_memory`` reports the highest use after this call."""
    try:
        _CLEAR_REFS.write_text("5")  # 5 = reset the peak resident set size
    except OSError:
        pass  # not Linux, or not allowed: the CPU peak stays the process's peak so far
    if device is not None and device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _status_bytes(field: str) -> int | None:
    """A size field of /proc/self/status (``VmHWM``: peak resident set, ``VmRSS``: current), in bytes."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cpu_peak_bytes() -> int:
    peak = _status_bytes("VmHWM")
    if peak is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def resident_gib() -> float | None:
    """The current resident set in GiB (None where /proc is not available)."""
    current = _status_bytes("VmRSS")
    return None if current is None else current / GIB


def in_use_gib(device: torch.device | None = None) -> float:
    """Memory held right now by what bounds the run: CUDA allocated on a GPU, else the resident set
    (so a stage's peak minus this is what the stage itself added)."""
    if device is not None and device.type == "cuda":
        return torch.cuda.memory_allocated(device) / GIB
    return resident_gib() or 0.0


def peak_memory(device: torch.device | None = None) -> dict[str, float]:
    """``{"cpu_rss_gib": ..., "cuda_max_allocated_gib": ...}`` (the CUDA key only on a GPU)."""
    peaks = {"cpu_rss_gib": round(_cpu_peak_bytes() / GIB, 3)}
    if device is not None and device.type == "cuda":
        peaks["cuda_max_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / GIB, 3)
    return peaks


class PeakMemory:
    """The peaks of successive stages (each measured on its own) and of the whole run (their maximum,
    with everything before the first stage, such as loading the models, included)."""

    def __init__(self, device: torch.device | None = None):
        self.device = device
        self._run: dict[str, float] = {}

    def _fold(self, peaks: dict[str, float]) -> None:
        self._run = busiest([self._run, peaks])

    @contextlib.contextmanager
    def stage(self) -> Iterator[dict[str, float]]:
        """Yields a dict that holds this stage's peaks once the block ends."""
        self._fold(peak_memory(self.device))
        reset_peak(self.device)
        peaks: dict[str, float] = {}
        try:
            yield peaks
        finally:
            peaks.update(peak_memory(self.device))
            self._fold(peaks)

    def run_peak(self) -> dict[str, float]:
        self._fold(peak_memory(self.device))
        return dict(self._run)


def busiest(peaks: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's largest over several sets of peaks (stages of a run, or a run's processes)."""
    keys = dict.fromkeys(key for p in peaks for key in p)  # every key, in first-seen order
    return {key: max(p.get(key, 0.0) for p in peaks) for key in keys}


def headline_gib(peaks: dict[str, float]) -> float:
    """The figure that bounds the run: CUDA max allocated on a GPU, else the CPU resident set."""
    return peaks.get("cuda_max_allocated_gib", peaks["cpu_rss_gib"])
