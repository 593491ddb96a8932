"""Encoded page features on disk: written shard by shard in bounded memory, read by one reader.

Layout (Hugging Face's sharded-checkpoint convention, applied to features):

- ``features.safetensors`` when one shard holds every page;
- otherwise ``features-00001-of-0000N.safetensors`` ... plus ``features.index.json``.

Every file holds ``features`` [pages, tokens, D] in page order (zero-padded to its longest page
when pages differ, as gundam's do) and ``tokens`` [pages], each page's real length. Its
metadata carries the first page's number, each page's source, and whatever the writer adds
(mode, dtype, weights; per-page metric records for ``optical encode``), so a shard on disk is
complete by itself: resuming and merging need nothing else.

While a run is going, shard k is ``features-0000k.safetensors`` (the count N is known only at
the end); :meth:`ShardedFeatures.finish` gives the shards their ``-of-N`` names and writes the
index last, so an index means a complete set. The stem follows the target file name, so
``--output enc/pages.safetensors`` gives ``pages-00001-of-00003.safetensors`` and
``pages.index.json``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..artifacts import atomic_path, atomic_write_json
from ..errors import InputError

FEATURES_INDEX_FORMAT = "optical-features"
INDEX_VERSION = 1


# ---------------------------------------------------------------------------------------
# Writing


class ShardedFeatures:
    """The shards of one features target (``DIR/STEM.safetensors``), ``pages_per_shard`` pages each."""

    def __init__(self, target: str | Path, pages_per_shard: int):
        self.target = Path(target)
        self.folder, self.stem = self.target.parent, self.target.name.removesuffix(".safetensors")
        self.pages_per_shard = pages_per_shard

    # -- names ---------------------------------------------------------------------------
    def shard_count(self, pages: int) -> int:
        return max(1, math.ceil(pages / self.pages_per_shard))

    def shard_pages(self, k: int, pages: int) -> range:
        """Page numbers (0-based) of shard ``k`` (0-based) in a set of ``pages`` pages."""
        return range(k * self.pages_per_shard, min(pages, (k + 1) * self.pages_per_shard))

    def pending(self, k: int) -> Path:
        return self.folder / f"{self.stem}-{k + 1:05d}.safetensors"

    def final(self, k: int, shards: int) -> Path:
        return self.target if shards == 1 else self.folder / f"{self.stem}-{k + 1:05d}-of-{shards:05d}.safetensors"

    @property
    def index(self) -> Path:
        return self.folder / f"{self.stem}.index.json"

    def existing(self, k: int, shards: int) -> Path | None:
        """Shard ``k`` on disk under either name (a run stopped while naming its shards has both kinds)."""
        for path in (self.pending(k), self.final(k, shards)):
            if path.is_file():
                return path
        return None

    def clear(self) -> None:
        """Remove every output of this stem, so a fresh run never mixes with an older, longer one."""
        pattern = re.compile(
            rf"{re.escape(self.stem)}(-\d{{5}}(-of-\d{{5}})?)?\.safetensors|{re.escape(self.index.name)}"
        )
        if self.folder.is_dir():
            for path in self.folder.iterdir():
                if pattern.fullmatch(path.name):
                    path.unlink()

    # -- writing -------------------------------------------------------------------------
    def write(
        self,
        k: int,
        first_page: int,
        sequences: Sequence[torch.Tensor],
        sources: Sequence[str],
        dtype: torch.dtype,
        metadata: dict[str, Any] | None = None,
    ) -> Path:
        """Write shard ``k`` atomically: ``features`` [pages, longest, D] in ``dtype``, ``tokens`` [pages]."""
        longest = max(s.shape[0] for s in sequences)
        features = torch.zeros(len(sequences), longest, sequences[0].shape[1], dtype=dtype)
        for i, seq in enumerate(sequences):
            features[i, : seq.shape[0]] = seq
        tokens = torch.tensor([s.shape[0] for s in sequences], dtype=torch.int64)
        header = {
            key: value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            for key, value in (metadata or {}).items()
        }
        header.update(
            first_page=str(first_page),
            tokens_per_page=json.dumps(tokens.tolist()),
            sources=json.dumps(list(sources), ensure_ascii=False),
        )
        path = self.pending(k)
        with atomic_path(path) as tmp:
            save_file({"features": features, "tokens": tokens}, str(tmp), metadata=header)
        return path

    def finish(self, pages: int, metadata: dict[str, Any] | None = None) -> Path:
        """Name the shards of a complete set of ``pages`` pages; returns the file to read
        (the single file, or the index). Fails if a shard is missing."""
        shards = self.shard_count(pages)
        found = [self.existing(k, shards) for k in range(shards)]
        missing = [str(k + 1) for k, path in enumerate(found) if path is None]
        if missing:
            raise InputError(
                f"{self.folder}: shard(s) {', '.join(missing[:5])} of {shards} missing; rerun with --resume"
            )
        entries, runs = [], []
        for k, path in enumerate(found):
            final = self.final(k, shards)
            if path != final:
                path.replace(final)
            header = read_header(final)
            sources = json.loads(header["sources"])
            entries.append({"file": final.name, "first_page": int(header["first_page"]), "pages": len(sources)})
            runs = source_runs(sources, runs)
        if shards == 1:
            return self.target
        atomic_write_json(
            self.index,
            {
                "format": FEATURES_INDEX_FORMAT,
                "version": INDEX_VERSION,
                "pages": pages,
                "shards": entries,
                "metadata": metadata or {},
                "sources": runs,
            },
        )
        return self.index


def source_runs(sources: Sequence[str], runs: list[list] | None = None) -> list[list]:
    """[[source, pages], ...]: consecutive pages of one document as one entry (extends ``runs``)."""
    runs = runs if runs is not None else []
    for source in sources:
        if runs and runs[-1][0] == source:
            runs[-1][1] += 1
        else:
            runs.append([source, 1])
    return runs


# ---------------------------------------------------------------------------------------
# Reading


def read_header(path: Path) -> dict[str, str]:
    """The metadata of a safetensors file, read without its tensors."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as exc:  # noqa: BLE001 - header parse errors of a damaged file
        raise InputError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from None


@dataclass
class FeatureFiles:
    """Features of ``optical encode`` (or the training cache) as one sequence of pages, whether
    they sit in one file or in shards. Reads one shard at a time."""

    files: list[Path]

    @classmethod
    def open(cls, path: str | Path, entries: list[dict] | None = None) -> "FeatureFiles":
        """``path``: a features .safetensors file, a ``*.index.json``, or a directory holding either
        (an encode run directory)."""
        path = Path(path)
        if path.is_dir():
            return cls.open(_features_in(path))
        if path.name.endswith(".index.json"):
            entries = entries or _index_entries(path)
            path = path.with_name(path.name.removesuffix(".index.json") + ".safetensors")
        if entries is not None:
            files = [path.parent / entry["file"] for entry in entries]
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise InputError(
                    f"{missing[0]}: shard listed in {path.parent} is missing; rerun the encode run with --resume"
                )
            return cls(files)
        if not path.is_file():
            raise InputError(f"features not found: {path}")
        return cls([path])

    def headers(self) -> Iterator[dict[str, str]]:
        for path in self.files:
            yield read_header(path)

    def shards(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(features [pages, tokens, D], tokens [pages]) per file, in page order."""
        for path in self.files:
            try:
                with safe_open(str(path), framework="pt") as handle:
                    names = set(handle.keys())
                    if "features" not in names:
                        raise InputError(f"{path}: no tensor named 'features'; is it an `optical encode` output?")
                    features = handle.get_tensor("features")
                    tokens = handle.get_tensor("tokens") if "tokens" in names else None
            except InputError:
                raise
            except Exception as exc:  # noqa: BLE001 - truncated or damaged data
                raise InputError(f"{path}: cannot read features ({type(exc).__name__}: {exc})") from None
            if features.ndim != 3:
                raise InputError(f"{path}: 'features' has shape {tuple(features.shape)}; expected [pages, tokens, dim]")
            if tokens is None:
                tokens = torch.full((features.shape[0],), features.shape[1], dtype=torch.int64)
            if tokens.numel() != features.shape[0] or int(tokens.min()) < 1 or int(tokens.max()) > features.shape[1]:
                raise InputError(f"{path}: 'tokens' does not give a length between 1 and {features.shape[1]} per page")
            yield features, tokens

    def sources(self) -> list[str | None]:
        """Each page's source (None where a file does not say)."""
        out: list[str | None] = []
        for path, header in zip(self.files, self.headers()):
            try:
                sources = json.loads(header.get("sources", "null"))
            except json.JSONDecodeError:
                sources = None
            pages = _page_count(path)
            out.extend(sources if isinstance(sources, list) and len(sources) == pages else [None] * pages)
        return out

    def __len__(self) -> int:
        return sum(_page_count(path) for path in self.files)

    def load(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every page in memory: features [pages, longest, D] (zero-padded) and tokens [pages]."""
        shapes = [_features_shape(path) for path in self.files]
        longest = max(shape[1] for shape in shapes)
        features = tokens = None
        start = 0
        for shard, lengths in self.shards():
            if features is None:
                features = torch.zeros(sum(s[0] for s in shapes), longest, shard.shape[2], dtype=shard.dtype)
                tokens = torch.empty(features.shape[0], dtype=torch.int64)
            features[start : start + len(shard), : shard.shape[1]] = shard
            tokens[start : start + len(shard)] = lengths
            start += len(shard)
        return features, tokens

    def pooled(self) -> np.ndarray:
        """One vector per page [pages, D] (float32): the mean of its real tokens, shard by shard."""
        parts = []
        for shard, lengths in self.shards():
            mask = (torch.arange(shard.shape[1])[None, :] < lengths[:, None]).float()
            parts.append(((shard.float() * mask[:, :, None]).sum(1) / mask.sum(1, keepdim=True)).numpy())
        return np.concatenate(parts)


def _features_in(folder: Path) -> Path:
    for name in ("features.index.json", "features.safetensors"):
        if (folder / name).is_file():
            return folder / name
    if any(re.fullmatch(r"features-\d{5}\.safetensors", p.name) for p in folder.iterdir()):
        raise InputError(
            f"{folder}: the encode run did not finish (shards without features.index.json); "
            f"rerun it with --resume --output-dir {folder}"
        )
    raise InputError(
        f"{folder}: no features.safetensors or features.index.json; pass an `optical encode` run directory"
    )


def _index_entries(path: Path) -> list[dict]:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        entries = index["shards"]
        if index.get("format") != FEATURES_INDEX_FORMAT or not all("file" in e for e in entries):
            raise KeyError("format")
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InputError(
            f"{path}: not a features index written by `optical encode` ({type(exc).__name__}: {exc})"
        ) from None
    return entries


def _features_shape(path: Path) -> list[int]:
    with safe_open(str(path), framework="pt") as handle:
        return handle.get_slice("features").get_shape()


def _page_count(path: Path) -> int:
    return _features_shape(path)[0]
