"""Encode once: one on-disk cache of page features, keyed by the page image and the encoder.

A page's DeepEncoder features depend on two things only: its pixels and the encoder that read
them (weights, mode, pixel convention, layout tokens, attention path, dtype, device kind). The
cache key is exactly that pair: ``sha256`` of the image (mode, size, bytes) under a fingerprint of
the encoder's settings and weights (:func:`encoder_fingerprint`). So a second question about a
document, a second document sharing pages, a benchmark item read again and a training corpus
cached before all find their pages here, whichever command encoded them (``optical ask``,
``bench longbench`` and ``train-adapter`` share it: its default folder is
``$OPTICAL_CACHE/page-features`` for all three, whatever the working directory).

Layout: ``ROOT/pages/<fingerprint>/<key[:2]>/<key>.safetensors``, one file per page (the
features in the dtype they were computed in, read back as float32). Writes are atomic
(temporary file + rename), so a killed writer leaves no half entry and concurrent readers see a
page or a miss. The cache is bounded (``max_bytes``): after each write that takes it past the
bound, the least recently used entries go first (a hit refreshes an entry's time), until it is
back under 90% of the bound.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..artifacts import atomic_path
from ..config.sections import DeepEncoderSection, RuntimeConfig
from ..devices import resolve_dtype
from ..memory import GIB
from ..models.loading import cache_dir

PAGES = "pages"
SUFFIX = ".safetensors"
PRUNE_TO = 0.9  # after an eviction the cache holds at most this share of its bound


def default_cache_dir() -> Path:
    """Where page features are cached unless a config names a folder: ``$OPTICAL_CACHE/page-features``
    (``~/.cache/optical/page-features`` without it), one place for every command and working directory."""
    return cache_dir() / "page-features"


def image_key(image) -> str:
    """The page image's identity: sha256 of its PIL mode, size and pixel bytes (not of a file:
    the same pixels drawn twice, or saved as PNG and read back, are the same page)."""
    digest = hashlib.sha256(f"{image.mode}\0{image.size[0]}x{image.size[1]}\0".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def weights_identity(weights: str) -> str:
    """What identifies the weights: a local file or folder by its resolved path, size and change
    time (a retrained file at the same path is another encoder); a hub id or ``random`` as named
    (random weights are fixed by the seed, which the fingerprint holds)."""
    path = Path(weights).expanduser()
    if not path.exists():
        return weights
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    stats = [(str(p.relative_to(path)) if p != path else "", p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return json.dumps([str(path.resolve()), stats])


def encoder_fingerprint(section: DeepEncoderSection, runtime: RuntimeConfig, device: torch.device, mode: str) -> str:
    """Everything that changes a page's features besides its pixels, hashed: the ``deepencoder``
    settings (with ``mode`` for the mode actually read), the weights' identity, the resolved
    dtype, the device kind and the seed (random weights)."""
    settings = section.model_dump() | {"mode": mode, "weights": weights_identity(section.weights)}
    identity = {
        "deepencoder": settings,
        "dtype": str(resolve_dtype(runtime.dtype, device)).removeprefix("torch."),
        "device": device.type,
        "seed": runtime.seed if section.weights == "random" else None,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


def fingerprint_of(encoder, mode: str | None = None) -> str:
    """The fingerprint of a page encoder: ``DeepEncoderPages`` (settings, weights, device), or any
    other ``PageEncoder`` by its ``identity`` (everything that changes its output)."""
    if hasattr(encoder, "section") and hasattr(encoder, "runtime"):
        return encoder_fingerprint(encoder.section, encoder.runtime, encoder.device, mode or encoder.mode)
    return hashlib.sha256(json.dumps(encoder.identity, sort_keys=True, default=str).encode()).hexdigest()[:24]


def compute_dtype(encoder) -> torch.dtype | None:
    """The dtype a ``DeepEncoderPages`` computes in (its features are stored in it: no bits lost), else None."""
    if hasattr(encoder, "runtime") and hasattr(encoder, "device"):
        return resolve_dtype(encoder.runtime.dtype, encoder.device)
    return None


@dataclass
class CacheStats:
    """What one ``encode`` call did: pages encoded now and pages read from the cache."""

    encoded: int = 0
    cached: int = 0

    def as_dict(self) -> dict:
        return {"pages_encoded": self.encoded, "pages_cached": self.cached}


@dataclass
class PageFeatureCache:
    """The cache folder and its bound (bytes; 0 keeps nothing)."""

    root: Path
    max_bytes: int
    _size: int | None = field(default=None, repr=False)  # bytes on disk as last counted plus what was written since

    @classmethod
    def at(cls, root: str | Path | None, max_gb: float) -> "PageFeatureCache":
        """The cache in ``root`` (None: the default folder, :func:`default_cache_dir`)."""
        return cls(Path(root) if root else default_cache_dir(), int(max_gb * GIB))

    def path(self, fingerprint: str, key: str) -> Path:
        return self.root / PAGES / fingerprint / key[:2] / f"{key}{SUFFIX}"

    def get(self, fingerprint: str, key: str) -> torch.Tensor | None:
        """The page's features [tokens, D] as float32, or None (absent, evicted or unreadable)."""
        path = self.path(fingerprint, key)
        try:
            tensor = load_file(str(path))["features"]
            os.utime(path)  # recently used: evicted last
        except (OSError, KeyError, SafetensorError):
            return None
        return tensor.float()

    def put(self, fingerprint: str, key: str, features: torch.Tensor, dtype: torch.dtype | None = None) -> None:
        """Store one page's features (in ``dtype``: the dtype they were computed in), then evict
        what the bound requires."""
        if self.max_bytes <= 0:
            return
        path = self.path(fingerprint, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensor = features.detach().to("cpu", dtype or features.dtype).contiguous()
        with atomic_path(path, durable=False) as tmp:
            save_file({"features": tensor}, str(tmp))
        if self._size is None:
            self._size = self.size()
        else:
            self._size += path.stat().st_size
        if self._size > self.max_bytes:
            self.prune()

    def entries(self) -> list[tuple[float, int, Path]]:
        """(last use, bytes, path) of every entry, any encoder."""
        found = []
        for folder, _, names in os.walk(self.root / PAGES):
            for name in names:
                if name.endswith(SUFFIX):
                    path = Path(folder) / name
                    try:
                        stat = path.stat()
                    except OSError:
                        continue  # removed meanwhile by another process
                    found.append((stat.st_mtime, stat.st_size, path))
        return found

    def size(self) -> int:
        return sum(size for _, size, _ in self.entries())

    def prune(self) -> int:
        """Remove the least recently used entries until the cache holds at most PRUNE_TO of its
        bound; returns how many went."""
        entries = sorted(self.entries())
        total = sum(size for _, size, _ in entries)
        target, removed = int(self.max_bytes * PRUNE_TO), 0
        for _, size, path in entries:
            if total <= target:
                break
            try:
                path.unlink()
            except OSError:
                continue
            total -= size
            removed += 1
        self._size = total
        return removed


class CachedPages:
    """A page encoder (``DeepEncoderPages``) behind the cache: ``encode(images, mode=None)`` reads
    each page from the cache and encodes only the others, in one batch, storing them. The
    ``stats`` of the last call say how many were encoded and how many were read."""

    def __init__(self, encoder, cache: PageFeatureCache):
        self.encoder, self.cache = encoder, cache
        self.stats = CacheStats()
        self._dtype: torch.dtype | None = None

    def __getattr__(self, name: str):  # out_dim, identity, parameter_count, mode, load ...: the encoder's
        if name in ("encoder", "cache"):
            raise AttributeError(name)
        return getattr(self.encoder, name)

    def encode(self, images: Sequence, mode: str | None = None) -> torch.Tensor:
        fingerprint = fingerprint_of(self.encoder, mode)
        keys = [image_key(image) for image in images]
        found = [self.cache.get(fingerprint, key) for key in keys]
        missing = [i for i, tensor in enumerate(found) if tensor is None]
        if missing:
            fresh = self.encoder.encode([images[i] for i in missing], mode=mode)
            for i, tensor in zip(missing, fresh):
                self.cache.put(fingerprint, keys[i], tensor, compute_dtype(self.encoder))
                found[i] = tensor
        self.stats = CacheStats(encoded=len(missing), cached=len(images) - len(missing))
        return torch.stack(found) if found else torch.empty(0)


def with_page_cache(encoder, section):
    """``encoder`` behind the cache a ``page_cache:`` section (PageCacheSection) names; as it is
    when there is none or its bound is 0."""
    if section is None or section.max_gb <= 0:
        return encoder
    return CachedPages(encoder, PageFeatureCache.at(section.dir, section.max_gb))
