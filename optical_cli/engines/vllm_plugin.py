"""The package's vLLM plugin: registers the optical reader's architecture with vLLM.

vLLM calls :func:`register` in every one of its processes (the ``vllm.general_plugins`` entry
point in pyproject.toml), so ``vllm serve DIR`` on a directory that ``optical export-model`` wrote
loads :class:`~optical_cli.engines.vllm_model.OpticalQwen3VLForConditionalGeneration` with no code
from the user. The class is named by a string: vLLM imports it only when a model needs it. Only
vLLM imports this module.

Under ``optical serve`` (the variable of ``optical_cli/lifeline.py`` set) it also makes the process
die with its parent, and every process it forks: no engine outlives a killed server. The loop guard
is a second entry point (``vllm.logits_processors``: ``engines/vllm_guard.py``).
"""

from __future__ import annotations

from vllm import ModelRegistry

from .. import lifeline
from . import ARCHITECTURE

MODEL_CLASS = "optical_cli.engines.vllm_model:OpticalQwen3VLForConditionalGeneration"


def register() -> None:
    lifeline.arm()
    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)
