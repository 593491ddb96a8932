"""Pages -> features for training: the held-out split, rendered (or packed) pages and the feature
cache (PageSet, build_page_set). The encoder plugs in as a ``PageEncoder`` (models/deepencoder/runner.py)."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..artifacts import atomic_write_json
from ..config.sections import RenderSection
from ..encode.features import FeatureFiles, ShardedFeatures
from ..errors import InputError
from ..models.deepencoder.runner import PageEncoder
from ..render.pages import iter_pages, render_document
from .config import TrainAdapterConfig

TrainingEvents = Callable[[dict], None]  # the run's events ({"event": "step", ...}) for the CLI
CACHE_SHARD_PAGES = 256  # pages per feature-cache shard, as `optical encode` shards by default


@dataclass
class PageSet:
    """Cached pages: features [P, T, D] (CPU), the text drawn on each page, its document and page index."""

    features: torch.Tensor
    texts: list[str]
    document: list[int]
    page_index: list[int]

    def __len__(self) -> int:
        return len(self.texts)

    def multi_page(self, i: int) -> bool:
        """Whether page ``i``'s document has more than one page here (the published adapter adds its
        page embedding only then; whole documents are held out, so the count is the document's)."""
        return self.document.count(self.document[i]) > 1

    @classmethod
    def empty(cls) -> "PageSet":
        return cls(torch.empty(0, 0, 0), [], [], [])


def _cache_key(documents: list[str], render_json: str, encoder_identity: dict, max_pages: int, pack: bool) -> str:
    digest = hashlib.sha256()
    for text in documents:
        digest.update(hashlib.sha256(text.encode("utf-8")).digest())
    digest.update(
        json.dumps([render_json, encoder_identity, max_pages] + ([True] if pack else []), sort_keys=True).encode()
    )
    return digest.hexdigest()[:24]


PACK_SEPARATOR = "\n\n"  # packed documents are paragraphs of one text stream


def _rendered_pages(
    documents: list[str], section: RenderSection, pack: bool, max_pages: int
) -> Iterator[tuple[int, int, object]]:
    """(document, page index, page) in reading order, at most ``max_pages`` pages per document.

    Packed, as language-model pretraining packs sequences: the documents are one stream of
    paragraphs, so every page but the last is full; the stream's pages are numbered in runs of
    ``max_pages`` (the adapter's page embeddings), each run counting as one document.
    """
    if pack:
        for number, page in enumerate(iter_pages(PACK_SEPARATOR.join(documents), section, "packed documents")):
            yield (*divmod(number, max_pages), page)
        return
    for doc_id, text in enumerate(documents):
        for index, page in enumerate(render_document(text, section, f"document {doc_id}")[:max_pages]):
            yield doc_id, index, page


def build_page_set(
    documents: list[str],
    cfg: TrainAdapterConfig,
    encoder: PageEncoder,
    cache_dir: Path,
    progress: TrainingEvents | None = None,
) -> tuple[PageSet, bool]:
    """Render and encode every document once; later calls read the cache. Returns (pages, cache hit).

    The cache is written as `optical encode` writes features (shards of ``CACHE_SHARD_PAGES``
    pages, one reader for both), so caching holds one shard in memory, not the corpus twice;
    ``pages.json`` is written last and marks a complete cache.
    """
    section = page_render_section(cfg)
    key = _cache_key(documents, section.model_dump_json(), encoder.identity, cfg.adapter.max_pages, cfg.data.pack)
    folder = cache_dir / key
    pages_file = folder / "pages.json"
    if pages_file.is_file():
        meta = json.loads(pages_file.read_text(encoding="utf-8"))
        return PageSet(FeatureFiles.open(folder).load()[0], meta["texts"], meta["document"], meta["page_index"]), True
    shards = ShardedFeatures(folder / "features.safetensors", CACHE_SHARD_PAGES)
    shards.clear()
    texts, document, page_index, pending, encoded = [], [], [], [], []
    written = 0

    def flush(final: bool = False) -> None:
        nonlocal written
        if pending:
            encoded.extend(encoder.encode(pending))
            if progress:
                progress({"event": "encode", "pages": len(pending)})
            pending.clear()
        while encoded and (len(encoded) >= shards.pages_per_shard or final):
            chunk = encoded[: shards.pages_per_shard]
            shards.write(
                written // shards.pages_per_shard,
                written,
                chunk,
                [f"document {d}" for d in document[written : written + len(chunk)]],
                chunk[0].dtype,
            )
            written += len(chunk)
            del encoded[: len(chunk)]

    for doc_id, index, page in _rendered_pages(documents, section, cfg.data.pack, cfg.adapter.max_pages):
        if not page.text.strip():
            continue
        texts.append(page.text)
        document.append(doc_id)
        page_index.append(index)
        pending.append(page.image)
        if len(pending) >= cfg.data.encode_batch_size:
            flush()
    flush(final=True)
    if not texts:
        raise InputError("the corpus rendered to no page with visible text; check data.source and render settings")
    shards.finish(len(texts))
    atomic_write_json(pages_file, {"texts": texts, "document": document, "page_index": page_index})
    return PageSet(FeatureFiles.open(folder).load()[0], texts, document, page_index), False


def split_documents(documents: list[str], eval_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, held-out) documents, each in corpus order: whole documents are held out, before any
    packing, so no held-out text is ever on a training page."""
    order = list(range(len(documents)))
    random.Random(seed).shuffle(order)
    n_eval = int(round(len(documents) * eval_fraction))
    if eval_fraction > 0 and len(documents) >= 2:
        n_eval = max(1, min(n_eval, len(documents) - 1))
    held = set(order[:n_eval])
    return ([d for i, d in enumerate(documents) if i not in held], [d for i, d in enumerate(documents) if i in held])


def page_render_section(cfg: TrainAdapterConfig):
    """The render settings with the page size the encoder's mode reads."""
    return cfg.render.model_copy(update={"mode": cfg.deepencoder.mode})
