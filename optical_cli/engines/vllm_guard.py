"""The loop guard inside vLLM: a logits processor (the package's ``vllm.logits_processors`` entry
point, which vLLM loads into every engine it builds).

It acts only on the optical model (a config with the ``optical`` block) and on requests that
have a guard: their own (``vllm_xargs``: ``loop_guard_ngram``, ``loop_guard_window``; the offline
engine sets them on every request), else the server's default (``OPTICAL_LOOP_GUARD``, set by
``optical serve`` from ``serve.loop_guard``). For such a request, at each step, if the most likely
next token would repeat an n-gram of the answer's window (:mod:`optical_cli.models.loop_guard`, the rule our own
generate loop applies), every other token is masked and the answer ends with
:data:`~optical_cli.models.loop_guard.LOOP_STOP_TOKEN`, a stop token of the model directory; a request that
ignores stop tokens (``ignore_eos``) or has not reached its ``min_tokens`` is left alone.
"""

from __future__ import annotations

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from ..models import loop_guard
from .vllm_metrics import loop_cut


class LoopGuardLogitsProcessor(LogitsProcessor):
    @classmethod
    def validate_params(cls, sampling_params: SamplingParams):
        try:
            loop_guard.from_request(sampling_params.extra_args, loop_guard.OFF)
        except ValueError as exc:
            raise ValueError(str(exc)) from None

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        model_config = getattr(vllm_config, "model_config", None)
        hf_config = getattr(model_config, "hf_config", None)
        self.enabled = hasattr(hf_config, "optical")
        self.default = loop_guard.from_env()
        self.rows: dict[int, tuple[loop_guard.NoRepeatNGram, list[int], int]] = {}

    def is_argmax_invariant(self) -> bool:
        return False  # it changes the greedy choice: that is the point

    def _row(self, params: SamplingParams, prompt_ids, output_ids: list[int]):
        if not self.enabled or params.ignore_eos:
            return None
        guard = loop_guard.from_request(params.extra_args, self.default)
        if not guard.active:
            return None
        return guard, output_ids, params.min_tokens

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.rows, batch_update, self._row)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        candidates = {}
        for index, (guard, ids, min_tokens) in self.rows.items():
            if len(ids) >= max(min_tokens, guard.ngram):
                repeats = guard.repeats(ids)
                if repeats:
                    candidates[index] = repeats
        if not candidates:
            return logits
        rows = sorted(candidates)
        top = logits[rows].argmax(dim=-1).tolist()
        for index, token in zip(rows, top):
            if token in candidates[index]:
                logits[index] = float("-inf")
                logits[index, loop_guard.LOOP_STOP_TOKEN_ID] = 0.0
                loop_cut()
        return logits
