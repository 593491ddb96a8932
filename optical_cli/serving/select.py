"""Which pages to read when a document does not fit the reader: the middle cut, or retrieval.

``optical ask`` reads at most ``slots`` pages: ``serve.max_pages``, and with ``--budget TOKENS``
no more pages than the budget's vision tokens hold. A document that fits is read whole. One that
does not is cut by ``ask.select``:

- ``middle``: the first and the last half of the slots (``prompts.middle_truncate``), as
  ``bench longbench``'s optical condition reads;
- ``retrieve``: every page's text is cut into passages at line ends (``library.passage_chars``,
  the index config's: the bundled MiniLM reads about 256 tokens), the passages are embedded with
  the index's embedder (cached like any corpus) and ranked against the question with the index's
  search (``search.mode``: an energy model built on the document's own passages, cosine or
  hybrid); a page scores as its best passage, the best ``slots`` pages are read in reading order,
  and each carries its rank, score and the passage that won it (``--json``: why each was read).
  A document without a text layer cannot be ranked: it is cut in the middle, and says so.

The adapter has a page embedding per position up to its ``max_pages``; pages read out of a longer
document keep their place as far as those positions allow (:func:`page_positions`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from ..devices import resolve_device
from ..errors import ConfigError, InputError
from ..index.build import build
from ..index.config import IndexConfig
from ..index.embed import embed_corpus, encode_texts
from ..index.search import Searcher, SearchParams
from ..models.sentence import load_sentence_embedder
from ..prompts import middle_truncate

SELECTS = ("middle", "retrieve")
PASSAGE_SHOWN = 120  # characters of the winning passage shown in --json


@dataclass
class PageRead:
    """One page read, and why: its document, page number (1-based), retrieval rank and score."""

    document: str
    page: int
    rank: Optional[int] = None  # 1 = the best page for the question (retrieve)
    score: Optional[float] = None  # the search's score of its best passage (lower is better)
    passage: Optional[str] = None  # the opening of that passage
    position: Optional[int] = None  # the adapter's page position it was read at
    pdf_pages: Optional[tuple[int, int]] = None  # a PDF drawn densely: the PDF pages this page holds

    @property
    def citation(self) -> str:
        return f"{self.document}:{self.page}"

    def as_dict(self) -> dict:
        return {"citation": self.citation, **{k: v for k, v in asdict(self).items() if v is not None}}


@dataclass
class Ranked:
    page: int  # 0-based
    score: float
    passage: str


@dataclass
class PageSelection:
    method: str  # all | middle | retrieve
    numbers: list[int]  # pages read, 0-based, in reading order
    ranks: dict[int, tuple[int, Ranked]] = field(default_factory=dict)  # page -> (rank, ranking entry)
    notes: list[str] = field(default_factory=list)
    search: Optional[str] = None  # how passages were ranked: energy | cosine | hybrid


def page_slots(max_pages: int, budget: int | None, tokens_per_page: int) -> int:
    """Pages one read may hold: ``max_pages``, and no more than ``budget`` vision tokens."""
    if budget is None:
        return max_pages
    if budget < tokens_per_page:
        raise InputError(
            f"--budget {budget} vision tokens holds no page ({tokens_per_page} tokens a page in this mode); "
            f"give at least {tokens_per_page}"
        )
    return min(max_pages, budget // tokens_per_page)


def select_pages(
    texts: Sequence[str],
    question: str,
    method: str,
    slots: int,
    index_cfg: IndexConfig,
    source: str = "the document",
    progress: Callable[..., None] | None = None,
) -> PageSelection:
    """The pages (0-based) of a document of ``len(texts)`` pages to read, at most ``slots`` of them."""
    count = len(texts)
    if count <= slots:
        return PageSelection("all", list(range(count)))
    if method not in SELECTS:
        raise ConfigError(f"ask.select={method!r}; use {' or '.join(SELECTS)}")
    middle = PageSelection("middle", middle_truncate(range(count), slots)[0])
    if method == "middle":
        return middle
    if not any(text.strip() for text in texts):
        middle.notes.append(
            f"{source} has no text layer: retrieval cannot rank scanned pages, so its first and last pages are "
            "read (select middle)"
        )
        return middle
    ranking, search, notes = rank_pages(texts, question, index_cfg, progress)
    chosen = ranking[:slots]
    ranks = {entry.page: (rank, entry) for rank, entry in enumerate(chosen, start=1)}
    return PageSelection("retrieve", sorted(ranks), ranks, notes, search)


def split_passages(texts: Sequence[str], max_chars: int) -> tuple[list[str], list[int]]:
    """Each page's text cut at line ends into passages of at most ``max_chars`` characters (a
    longer line is cut inside); returns (passages, the page of each)."""
    passages, owners = [], []
    for page, text in enumerate(texts):
        current: list[str] = []
        length = 0
        for line in text.splitlines():
            for start in range(0, max(len(line), 1), max_chars):
                piece = line[start : start + max_chars]
                if current and length + len(piece) > max_chars:  # "\n".join(current + [piece]) too long
                    passages.append("\n".join(current))
                    owners.append(page)
                    current, length = [], 0
                current.append(piece)
                length += len(piece) + 1
        if "".join(current).strip():
            passages.append("\n".join(current))
            owners.append(page)
    return passages, owners


def rank_pages(
    texts: Sequence[str], question: str, cfg: IndexConfig, progress: Callable[..., None] | None = None
) -> tuple[list[Ranked], str, list[str]]:
    """Every page with text, best first: (ranking, how passages were ranked, notes)."""
    passages, owners = split_passages(texts, cfg.library.passage_chars)
    embedder = load_sentence_embedder(cfg.embed.model, cfg.runtime.device)
    query = encode_texts([question], batch_size=1, embedder=embedder)
    vectors, _ = embed_corpus(
        passages, cfg.embed.model, cfg.runtime.device, cfg.embed.batch_size, cfg.embed.cache_dir, progress, embedder
    )
    scores, search, notes = passage_scores(vectors, query, cfg)
    best: dict[int, Ranked] = {}
    for passage, page, score in zip(passages, owners, scores.tolist()):
        if page not in best or score < best[page].score:
            best[page] = Ranked(page, float(score), passage[:PASSAGE_SHOWN])
    return sorted(best.values(), key=lambda entry: (entry.score, entry.page)), search, notes


def passage_scores(vectors: np.ndarray, query: np.ndarray, cfg: IndexConfig) -> tuple[np.ndarray, str, list[str]]:
    """Lower-is-better scores of every passage: the configured search over an energy model built on
    these passages (``build:``), or cosine distance where the mode is cosine or no model can be built."""
    mode, notes = cfg.search.mode, []
    if mode != "cosine" and len(vectors) >= 2:
        try:
            index = build(vectors, cfg.build, seed=cfg.runtime.seed, device=resolve_device(cfg.runtime.device))
            params = SearchParams.from_section(cfg.search.model_copy(update={"k": len(vectors), "candidates": "exact"}))
            scores = np.full(len(vectors), np.inf)
            for hit in Searcher(index).search(query, params)[0]:
                scores[hit.index] = hit.score
            return scores, mode, notes
        except (InputError, ConfigError, ValueError, RuntimeError) as exc:
            notes.append(f"no energy model could be built on this document's passages ({exc}): ranked by cosine")
    return (1.0 - vectors @ query[0]) / 2.0, "cosine", notes


def page_positions(numbers: Sequence[int], document_pages: int, limit: int) -> list[int]:
    """The adapter's page position for each page read (``numbers``: 0-based, increasing, at most
    ``limit`` of them): the page's own number when every one is below ``limit`` (the adapter's
    positions), else its place scaled into them (page n of N at n * limit // N), kept increasing."""
    numbers = list(numbers)
    if not numbers or numbers[-1] < limit:
        return numbers
    positions, previous = [], -1
    for i, number in enumerate(numbers):
        room = limit - (len(numbers) - i)  # the highest position that leaves one for each page after it
        position = min(max(number * limit // max(document_pages, 1), previous + 1), room)
        positions.append(position)
        previous = position
    return positions
