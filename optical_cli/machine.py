"""What the machine is doing while something is timed: the load average, recorded beside every timing
(a figure taken while other work shares the cores is not a figure). Used by the benchmark scripts."""

from __future__ import annotations

import os
from pathlib import Path

_LOADAVG = Path("/proc/loadavg")


def load_averages() -> tuple[float, float, float] | None:
    """The 1-, 5- and 15-minute load averages (None where the kernel does not say: not Linux)."""
    try:
        one, five, fifteen = (float(value) for value in _LOADAVG.read_text().split()[:3])
    except (OSError, ValueError):
        return None
    return one, five, fifteen


def load_average() -> float | None:
    """The 1-minute load average."""
    averages = load_averages()
    return None if averages is None else averages[0]


def load_text() -> str:
    """``"1.37 0.92 0.40 on 2 cores"``, or ``"unknown"``: for a log line or a CSV cell."""
    averages = load_averages()
    if averages is None:
        return "unknown"
    return f"{averages[0]:.2f} {averages[1]:.2f} {averages[2]:.2f} on {os.cpu_count()} cores"
