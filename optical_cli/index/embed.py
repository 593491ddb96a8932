"""Texts -> unit-norm sentence embeddings, with an on-disk cache.

The cache key is the model name plus a hash of the exact texts in their order, so a repeat
build (or every cell of a sweep) on the same corpus skips the encoder entirely; editing the
file, changing the subset or the model gives a new key.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..artifacts import atomic_path
from ..models.sentence import load_sentence_embedder, sentence_model_name
from ..progress import Progress


def texts_key(model: str, texts: Sequence[str]) -> str:
    digest = hashlib.sha256(sentence_model_name(model).encode("utf-8"))
    for text in texts:
        digest.update(b"\x00")
        digest.update(text.encode("utf-8"))
    return digest.hexdigest()[:32]


def encode_texts(
    texts: Sequence[str],
    model: str = "default",
    device: str = "auto",
    batch_size: int = 64,
    progress: Optional[Progress] = None,
    embedder=None,
) -> np.ndarray:
    """Encode ``texts`` in batches; rows are L2-normalised float32. ``progress(n)`` after each batch."""
    embedder = embedder or load_sentence_embedder(model, device)
    dimension = getattr(embedder, "get_embedding_dimension", None) or embedder.get_sentence_embedding_dimension
    dim = dimension()
    out = np.zeros((len(texts), dim), np.float32)
    # Batches of similar length waste no work on padding: encode in length order, put rows back.
    order = np.argsort([len(text) for text in texts], kind="stable")
    for start in range(0, len(texts), batch_size):
        rows = order[start : start + batch_size]
        out[rows] = embedder.encode(
            [texts[i] for i in rows],
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        if progress:
            progress(len(rows), total=len(texts))
    return out


def embed_corpus(
    texts: Sequence[str],
    model: str = "default",
    device: str = "auto",
    batch_size: int = 64,
    cache_dir: str | Path | None = None,
    progress: Optional[Progress] = None,
) -> tuple[np.ndarray, bool]:
    """Embeddings of ``texts`` (cached under ``cache_dir`` when given); returns (vectors, cache_hit)."""
    cache_file = Path(cache_dir) / f"{texts_key(model, texts)}.npy" if cache_dir else None
    if cache_file is not None and cache_file.is_file():
        try:
            vectors = np.load(cache_file, allow_pickle=False)
            if vectors.shape[0] == len(texts):
                if progress:
                    progress(len(texts), total=len(texts))
                return vectors, True
        except (OSError, ValueError):
            pass  # a damaged cache entry is simply recomputed and overwritten
    vectors = encode_texts(texts, model, device, batch_size, progress)
    if cache_file is not None:
        with atomic_path(cache_file) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, vectors, allow_pickle=False)
    return vectors, False
