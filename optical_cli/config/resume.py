"""What a ``--resume`` may change: the settings of the run being resumed against this one's."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from ..errors import ConfigError

# Settings that change how a run runs, never what it writes: a resume of a FINISHED run may change these
# alone (any other change would rewrite some of its files and leave others saying what they said).
RUN_ONLY_KEYS = frozenset(
    {
        "runtime.workers",
        "encode.batch_size",
        "encode.queue_pages",
        "embed.batch_size",
        "embed.cache_dir",
        "data.cache_dir",
        "data.encode_batch_size",
        "sweep.ocr_threads",
        "sweep.ocr_batch",
    }
)


def check_same_settings(previous: BaseModel, current: BaseModel, allowed: set[str], finished: bool = False) -> None:
    """For --resume: the run's config (``previous``) and this one may differ only in ``allowed`` keys,
    and for a ``finished`` run only in those of them that change no file (RUN_ONLY_KEYS)."""

    def flat(data: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(data, dict):
            out: dict[str, Any] = {}
            for key, value in data.items():
                out.update(flat(value, f"{prefix}{key}."))
            return out
        return {prefix.rstrip("."): data}

    before, after = flat(previous.model_dump(mode="json")), flat(current.model_dump(mode="json"))
    allowed = set(allowed) & RUN_ONLY_KEYS if finished else set(allowed)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k) and k not in allowed)
    if changed and finished:
        shown = ", ".join(f"{k} ({before.get(k)!r} -> {after.get(k)!r})" for k in changed[:4])
        raise ConfigError(
            f"--resume: that run is finished, and a resume never rewrites a finished run under other settings "
            f"({shown}); run the new settings in a new --output-dir"
        )
    if changed:
        shown = ", ".join(f"{k} ({before.get(k)!r} -> {after.get(k)!r})" for k in changed[:4])
        raise ConfigError(
            f"--resume: the config differs from the run being resumed in {shown}; "
            "rerun with the same settings or choose a new --output-dir"
        )
