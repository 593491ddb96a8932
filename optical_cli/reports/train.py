"""`train-adapter`'s report: the run's summary as one table of dotted keys."""

from __future__ import annotations

from .console import print_table

TRAIN_RANDOM_WEIGHTS = (
    "Qwen3-VL or DeepEncoder is random (vlm.source / deepencoder.weights = random). The losses and the reading "
    "check below test the pipeline; they are not results."
)


def print_training(summary: dict) -> None:
    print_table("train-adapter", flat_rows(summary))


def flat_rows(block: dict, prefix: str = "") -> list[tuple[str, object]]:
    """A nested summary as (dotted key, value) rows."""
    rows: list[tuple[str, object]] = []
    for key, value in block.items():
        rows += flat_rows(value, f"{prefix}{key}.") if isinstance(value, dict) else [(f"{prefix}{key}", value)]
    return rows
