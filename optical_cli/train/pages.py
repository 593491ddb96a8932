"""Pages -> features for training: the held-out split, rendered (or packed) pages and the feature
cache (PageSet, build_page_set). The encoder plugs in as a ``PageEncoder`` (models/deepencoder/runner.py)."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..artifacts import atomic_write_json
from ..config.sections import RenderSection
from ..encode.page_cache import PageFeatureCache, compute_dtype, fingerprint_of, image_key
from ..errors import InputError
from ..models.deepencoder.runner import PageEncoder
from ..render.pages import iter_pages, render_document
from .config import TrainAdapterConfig

TrainingEvents = Callable[[dict], None]  # the run's events ({"event": "step", ...}) for the CLI


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
    cache_dir: Path | None,
    progress: TrainingEvents | None = None,
) -> tuple[PageSet, bool]:
    """Render and encode every document once; later calls read the cache. Returns (pages, cache hit).

    The features live in the page-feature cache (encode/page_cache.py, ``cache_dir``: null for its
    default folder), one entry per page keyed by the page image and the encoder, the cache ask and
    bench read too; a page already there (another corpus, an earlier question) is not encoded again.
    Beside them, ``corpora/KEY.json`` lists this corpus's pages (text, document, page index, key),
    written last: a corpus whose pages are all still cached is read without rendering anything.
    """
    section = page_render_section(cfg)
    cache = PageFeatureCache.at(cache_dir, cfg.data.cache_max_gb)
    fingerprint = fingerprint_of(encoder)
    key = _cache_key(documents, section.model_dump_json(), encoder.identity, cfg.adapter.max_pages, cfg.data.pack)
    listing = cache.root / CORPORA / f"{key}.json"
    if listing.is_file():
        meta = json.loads(listing.read_text(encoding="utf-8"))
        found = [cache.get(fingerprint, page_key) for page_key in meta["keys"]]
        if found and all(tensor is not None for tensor in found):
            return PageSet(torch.stack(found), meta["texts"], meta["document"], meta["page_index"]), True
    pages = PageList()
    for doc_id, index, page in _rendered_pages(documents, section, cfg.data.pack, cfg.adapter.max_pages):
        if page.text.strip():
            pages.add(doc_id, index, page, image_key(page.image), cache.get(fingerprint, image_key(page.image)))
            if len(pages.pending) >= cfg.data.encode_batch_size:
                pages.encode(encoder, cache, fingerprint, progress)
    pages.encode(encoder, cache, fingerprint, progress)
    if not pages.texts:
        raise InputError("the corpus rendered to no page with visible text; check data.source and render settings")
    listing.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        listing,
        {"texts": pages.texts, "document": pages.document, "page_index": pages.page_index, "keys": pages.keys},
    )
    return PageSet(torch.stack(pages.features), pages.texts, pages.document, pages.page_index), False


CORPORA = "corpora"  # the page lists of training corpora, beside the cached pages


@dataclass
class PageList:
    """A corpus's pages as they are rendered: text, place, cache key and features (None until encoded)."""

    texts: list[str] = field(default_factory=list)
    document: list[int] = field(default_factory=list)
    page_index: list[int] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    features: list = field(default_factory=list)
    pending: list[tuple[int, object]] = field(default_factory=list)  # (position, image) to encode

    def add(self, doc_id: int, index: int, page, key: str, cached) -> None:
        if cached is None:
            self.pending.append((len(self.texts), page.image))
        self.texts.append(page.text)
        self.document.append(doc_id)
        self.page_index.append(index)
        self.keys.append(key)
        self.features.append(cached)

    def encode(self, encoder: PageEncoder, cache: PageFeatureCache, fingerprint: str, progress) -> None:
        if not self.pending:
            return
        encoded = encoder.encode([image for _, image in self.pending])
        for (position, _), tensor in zip(self.pending, encoded):
            cache.put(fingerprint, self.keys[position], tensor, compute_dtype(encoder))
            self.features[position] = tensor
        if progress:
            progress({"event": "encode", "pages": len(self.pending)})
        self.pending.clear()


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
