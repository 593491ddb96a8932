"""The loop guard: an answer that starts repeating itself is cut, on every engine alike.

DeepSeek-OCR's users report generation loops (one issue counts 9.2% catastrophic repetitions on
600 newspaper pages), and the published DeepSeek-OCR vLLM scripts guard against them with a
no-repeat n-gram rule over the answer's own tokens: n-gram 30 in a window of the last 90 tokens.
The rule, as they state it: take the answer's last ``ngram - 1`` tokens; every n-gram that starts
within the last ``window`` tokens and whose first ``ngram - 1`` tokens equal them names a
continuation that would repeat that n-gram (:meth:`NoRepeatNGram.repeats`).

The published scripts forbid those continuations and let the model go on. Here the answer ends
instead, when the model's most likely next token is one of them (:meth:`NoRepeatNGram.cuts`):
a loop is cut where it would repeat, and the caller learns it (``finish_reason: repetition``) rather
than receiving a longer answer that wanders around the forbidden tokens. Both engines apply this
one rule to the same logits: our generate loop (``models/vlm.py``) in Python, vLLM through the
model plugin's logits processor (``engines/vllm_guard.py``), which ends the answer with
:data:`LOOP_STOP_TOKEN` (a stop token of the model directory that Qwen3-VL never writes); the
server's middleware reports that stop as ``finish_reason: repetition``.

Settings: ``ngram`` (0 = off) and ``window`` in ``serve.loop_guard``, ``ask.loop_guard`` and
``bench.loop_guard`` (off by default in bench: its rows report the model as it is). A request to the
server may set its own with ``vllm_xargs: {"loop_guard_ngram": N, "loop_guard_window": W}``.
Imports nothing heavy: the hf loop, the vLLM processor and the server's middleware all use it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

LOOP_STOP_TOKEN = "<|vision_pad|>"  # Qwen3-VL's unused vision padding token: the guard's stop
LOOP_STOP_TOKEN_ID = 151654  # its id in every Qwen3-VL tokenizer (checked against ours in the tests)
REPETITION = "repetition"  # the finish reason of a cut answer (vLLM's own name for a repetition stop)
LOOP_GUARD_ENV = "OPTICAL_LOOP_GUARD"  # "NGRAM,WINDOW": the server's default for requests that set none
NGRAM_ARG, WINDOW_ARG = "loop_guard_ngram", "loop_guard_window"  # per-request vllm_xargs


@dataclass(frozen=True)
class NoRepeatNGram:
    ngram: int = 30
    window: int = 90

    def __post_init__(self) -> None:
        if self.ngram == 1 or self.ngram < 0 or self.window < 0:
            raise ValueError(
                f"the loop guard's ngram must be 0 (off) or at least 2 and its window >= 0, "
                f"got ngram {self.ngram} and window {self.window}"
            )
        if self.ngram and self.window < self.ngram:
            raise ValueError(f"the loop guard's window ({self.window}) must hold its n-gram ({self.ngram} tokens)")

    @property
    def active(self) -> bool:
        return self.ngram > 0

    def repeats(self, ids: Sequence[int]) -> set[int]:
        """The next tokens that would repeat an n-gram of the last ``window`` tokens of ``ids``."""
        n, length = self.ngram, len(ids)
        if not self.active or length < n:
            return set()
        tail = list(ids[length - n + 1 :])
        found = set()
        for start in range(max(0, length - self.window), length - n + 1):
            if ids[start + n - 2] == tail[-1] and list(ids[start : start + n - 1]) == tail:
                found.add(int(ids[start + n - 1]))
        return found

    def cuts(self, ids: Sequence[int], top: int) -> bool:
        """Whether the answer ``ids`` ends here: its most likely next token ``top`` repeats an n-gram."""
        return self.active and int(top) in self.repeats(ids)

    def as_env(self) -> str:
        return f"{self.ngram},{self.window}"

    def as_xargs(self) -> dict[str, int]:
        return {NGRAM_ARG: self.ngram, WINDOW_ARG: self.window}


OFF = NoRepeatNGram(0, 0)


def from_env(value: str | None = None) -> NoRepeatNGram:
    """The server's default (:data:`LOOP_GUARD_ENV`); off when unset or unreadable."""
    value = os.environ.get(LOOP_GUARD_ENV, "") if value is None else value
    try:
        ngram, window = (int(part) for part in value.split(","))
        return NoRepeatNGram(ngram, window)
    except ValueError:
        return OFF


def from_request(extra: dict | None, default: NoRepeatNGram) -> NoRepeatNGram:
    """A request's own settings (``vllm_xargs``), else ``default``; a bad value raises ValueError."""
    if not extra or (NGRAM_ARG not in extra and WINDOW_ARG not in extra):
        return default
    try:
        ngram = int(extra.get(NGRAM_ARG, default.ngram))
        window = int(extra.get(WINDOW_ARG, default.window or 3 * ngram))
    except (TypeError, ValueError):
        raise ValueError(f"vllm_xargs {NGRAM_ARG} and {WINDOW_ARG} must be integers") from None
    return NoRepeatNGram(ngram, window)
