"""A library: documents indexed page by page, asked with ``optical ask --library LIB QUESTION``.

``optical index add-documents LIB DOC...`` (PDFs, text, markdown, folders of them) lays each
document out with ``library.render`` (the index config's), draws every page once into
``LIB/pages/`` and indexes its text as passages (``library.passage_chars``) in the energy index
``LIB/index/``, through the index's own store (files, or Milvus with ``store.backend: milvus``)
and its add and delete: no rebuild. The first call builds the index's energy model on the first
documents' passages; every later one adds to it (``index add``'s code path, one commit per call).

Each passage is one index item: id ``DOCUMENT:PAGE#N``, its text, and as labels where it comes
from: ``document=``, ``page=`` (1-based), ``image=`` (the page image, relative to LIB),
``image_key=`` (the page's key in the page-feature cache, encode/page_cache.py: its DeepEncoder
features are cached under that key for whichever encoder reads them) and, for a PDF drawn from its
text layer, ``pdf_pages=`` (the PDF pages the page holds). ``LIB/library.json`` records how pages
are drawn and each document's digest, pages and passages: adding a document again replaces its
pages when it changed and skips it when it did not; ``index remove-documents`` deletes them.

``ask --library`` embeds the question with the index's model, searches with the index config's
``search:`` settings, keeps the best page of each hit until the reader's page slots are full and
reads those pages in library order, citing ``DOCUMENT:PAGE`` for each.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from PIL import Image

from ..artifacts import atomic_write_bytes, atomic_write_json
from ..config.sections import RenderSection
from ..devices import resolve_device
from ..documents import collect_inputs
from ..encode.page_cache import image_key
from ..errors import InputError
from ..index import milvus
from ..index.config import IndexConfig
from ..index.create import check_store, create_index
from ..index.embed import embed_corpus
from ..index.manifest import backend_of, read_manifest
from ..index.pipeline import Corpus
from ..index.query import Queries, search_index
from ..index.store import load_index
from ..index.update import add_corpus, delete_items, live_ids
from ..progress import Progress
from ..render.pages import png_bytes
from .paged import PagedDocument, paginate, read_ask_document
from .select import PageRead, split_passages

FORMAT = "optical-library/1"
SETTINGS, INDEX, PAGES, LOCK = "library.json", "index", "pages", ".library.lock"
HITS_PER_SLOT = 20  # passages searched per page slot: the best pages of a long ranking, many passages each


@dataclass
class LibraryReport:
    library: str
    added: list[str] = field(default_factory=list)  # documents indexed now (new or changed)
    unchanged: list[str] = field(default_factory=list)  # given again, same content: skipped
    removed: list[str] = field(default_factory=list)
    pages: int = 0  # pages indexed now
    passages: int = 0
    documents: int = 0  # documents in the library after the change
    library_pages: int = 0
    notes: list[str] = field(default_factory=list)
    index: dict = field(default_factory=dict)  # the index's change (add/delete report, or its build)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class PageItems:
    """The passages of one document's pages, ready to embed and index."""

    ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    labels: list[list[str]] = field(default_factory=list)
    pages: int = 0
    silent: int = 0  # pages without text: drawn, not retrievable


def read_library_settings(library: str | Path) -> dict:
    path = Path(library) / SETTINGS
    if not path.is_file():
        raise InputError(
            f"{library} is not a library (no {SETTINGS}); make one with `optical index add-documents {library} DOC...`"
        )
    settings = json.loads(path.read_text(encoding="utf-8"))
    if settings.get("format") != FORMAT:
        raise InputError(f"{path}: not an optical library ({settings.get('format')!r}, expected {FORMAT})")
    return settings


@contextlib.contextmanager
def library_lock(library: Path) -> Iterator[None]:
    """One writer at a time; asking never waits for it."""
    library.mkdir(parents=True, exist_ok=True)
    with open(library / LOCK, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"{library}: another `optical index add-documents` is writing it; wait for it") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def document_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def document_id(document: str) -> str:
    """A library item's document part: what ``DOCUMENT:PAGE#N`` ids and citations name."""
    return document


def item_document(item_id: str) -> str:
    return item_id.rsplit("#", 1)[0].rsplit(":", 1)[0]


def labels_of(labels: Optional[list[str]]) -> dict[str, str]:
    return dict(label.split("=", 1) for label in labels or [] if "=" in label)


def page_items(library: Path, paged: PagedDocument, folder: str, passage_chars: int, progress=None) -> PageItems:
    """Draw each page into ``LIB/pages/FOLDER/`` (one at a time: bounded memory) and cut its text into passages."""
    out = PageItems(pages=paged.count)
    (library / PAGES / folder).mkdir(parents=True, exist_ok=True)
    for number in range(paged.count):
        (image,) = paged.draw([number])
        relative = f"{PAGES}/{folder}/{number + 1:05d}.png"
        atomic_write_bytes(library / relative, png_bytes(image))
        passages, _ = split_passages([paged.texts[number]], passage_chars)
        if not passages:
            out.silent += 1
        labels = [
            f"document={paged.source}",
            f"page={number + 1}",
            f"image={relative}",
            f"image_key={image_key(image)}",
        ]
        if paged.pdf_pages is not None:
            labels.append("pdf_pages={}-{}".format(*paged.pdf_pages[number]))
        for k, passage in enumerate(passages, start=1):
            out.ids.append(f"{document_id(paged.source)}:{number + 1}#{k}")
            out.texts.append(passage)
            out.labels.append(labels)
        if progress:
            progress(1)
    return out


def add_documents(
    library: str | Path, inputs: list[str], cfg: IndexConfig, progress: Progress | None = None
) -> LibraryReport:
    """Index every page of every document in ``inputs`` into ``library`` (made on first use)."""
    started = time.perf_counter()
    library = Path(library)
    if "-" in inputs:
        raise InputError("add-documents reads files and folders, not stdin (-): save the document to a file first")
    documents = collect_inputs(inputs)
    check_store(cfg)
    with library_lock(library):
        settings = _settings(library, cfg)
        render = RenderSection.model_validate(settings["render"])
        report = LibraryReport(str(library))
        items, stale = PageItems(), []
        for document in documents:
            digest = document_digest(document)
            known = settings["documents"].get(document)
            if known and known["digest"] == digest:
                report.unchanged.append(document)
                continue
            paged = paginate(read_ask_document(document, render), render)
            folder = f"{hashlib.sha256(document.encode()).hexdigest()[:12]}-{digest[:12]}"
            found = page_items(library, paged, folder, settings["passage_chars"], progress)
            if found.silent:
                report.notes.append(f"{document}: {found.silent} of {found.pages} pages have no text: not retrievable")
            items.ids += found.ids
            items.texts += found.texts
            items.labels += found.labels
            settings["documents"][document] = {
                "digest": digest,
                "pages": found.pages,
                "passages": len(found.ids),
                "folder": folder,
            }
            stale += [known["folder"]] if known and known.get("folder") != folder else []
            report.added.append(document)
            report.pages += found.pages
        report.passages = len(items.ids)
        if items.ids:
            if progress:  # the same bar goes on with the passages
                progress(0, total=report.pages + len(items.ids), description="embedding passages")
            report.index = _index_items(library, cfg, items, set(report.added), progress)
        _commit_settings(library, settings, report, started)
        for folder in stale:
            shutil.rmtree(library / PAGES / folder, ignore_errors=True)
    return report


def _settings(library: Path, cfg: IndexConfig) -> dict:
    """The library's settings, made from ``cfg`` for a new library."""
    if (library / SETTINGS).is_file():
        return read_library_settings(library)
    if any(p.name not in (LOCK,) for p in library.iterdir()):
        raise InputError(
            f"{library} holds files but no {SETTINGS}: not a library; give a new or empty directory to make one"
        )
    return {
        "format": FORMAT,
        "render": cfg.library.render.model_dump(),
        "passage_chars": cfg.library.passage_chars,
        "documents": {},
    }


def _index_items(library: Path, cfg: IndexConfig, items: PageItems, replaced: set, progress=None) -> dict:
    """Embed the passages and add them to ``LIB/index`` (built from them the first time)."""
    index_dir = library / INDEX
    exists = (index_dir / "manifest.json").is_file()
    model = read_manifest(index_dir).get("embedding_model") if exists else cfg.embed.model
    vectors, _ = embed_corpus(
        items.texts, model, cfg.runtime.device, cfg.embed.batch_size, cfg.embed.cache_dir, _counted(progress)
    )
    corpus = Corpus(items.ids, vectors, items.texts, None, model, str(library), {}, items.labels)
    if not exists:
        if len(items.ids) < 2:
            raise InputError(
                f"{library}: a new library needs at least two passages of text to build its index; add more documents"
            )
        index_dir.mkdir(parents=True, exist_ok=True)
        _, fields, seconds = create_index(cfg, corpus, index_dir, resolve_device(cfg.runtime.device))
        atomic_write_json(index_dir / "manifest.json", fields)
        return {"operation": "build", "items": len(items.ids), **{k: round(v, 4) for k, v in seconds.items()}}
    return add_corpus(
        index_dir, cfg, corpus, upsert=True, replaces=lambda item: item_document(item) in replaced, where=str(library)
    ).as_dict()


def _counted(progress):
    """``progress`` taking counts only: the bar's total was set for pages and passages together."""
    if progress is None:
        return None

    def advance(n: int, total=None) -> None:
        progress(n)

    return advance


def _commit_settings(library: Path, settings: dict, report: LibraryReport, started: float) -> None:
    report.documents = len(settings["documents"])
    report.library_pages = sum(doc["pages"] for doc in settings["documents"].values())
    report.seconds = round(time.perf_counter() - started, 3)
    atomic_write_json(library / SETTINGS, settings)


def remove_documents(library: str | Path, documents: list[str], cfg: IndexConfig) -> LibraryReport:
    """Delete every page of ``documents`` from ``library`` (named as they were added)."""
    started = time.perf_counter()
    library = Path(library)
    with library_lock(library):
        settings = read_library_settings(library)
        unknown = [doc for doc in documents if doc not in settings["documents"]]
        if unknown:
            raise InputError(
                f"{library}: not in the library: {', '.join(unknown)}; its documents are "
                f"{', '.join(sorted(settings['documents'])[:5]) or 'none'}"
            )
        index_dir = library / INDEX
        manifest = read_manifest(index_dir)
        ids, _ = live_ids(index_dir, manifest, cfg)
        doomed = [item for item in ids if item_document(item) in set(documents)]
        report = LibraryReport(str(library), removed=list(documents))
        if doomed:
            report.index = delete_items(index_dir, cfg, doomed).as_dict()
        folders = [settings["documents"].pop(doc).get("folder") for doc in documents]
        _commit_settings(library, settings, report, started)
        for folder in folders:
            if folder:
                shutil.rmtree(library / PAGES / folder, ignore_errors=True)
    return report


def rebuild_library(library: str | Path, cfg: IndexConfig, report: LibraryReport | None = None) -> LibraryReport:
    """Build the library's energy model again on every passage it holds now (their stored vectors: nothing
    is drawn or embedded again), in the same store, then put it in place of the old index."""
    started = time.perf_counter()
    library = Path(library)
    report = report or LibraryReport(str(library))
    with library_lock(library):
        settings = read_library_settings(library)
        index_dir, fresh = library / INDEX, library / f"{INDEX}.rebuild"
        manifest = read_manifest(index_dir)
        index = load_index(index_dir, "cpu", cfg.store.open_timeout)
        vectors = index.vectors.cpu().numpy()
        corpus = Corpus(index.ids, vectors, index.texts, None, index.model, str(library), {}, index.labels)
        store = manifest["store"]
        same = {"backend": backend_of(manifest)} | ({"uri": store.get("uri")} if "uri" in store else {})
        cfg = cfg.model_copy(update={"store": cfg.store.model_copy(update=same)})
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir(parents=True)
        _, fields, seconds = create_index(cfg, corpus, fresh, resolve_device(cfg.runtime.device))
        atomic_write_json(fresh / "manifest.json", fields)
        old = library / f"{INDEX}.old"
        shutil.rmtree(old, ignore_errors=True)
        index_dir.rename(old)
        fresh.rename(index_dir)
        if same["backend"] == "milvus" and not milvus.is_lite(milvus.resolve_uri(old, store.get("uri"))):
            with milvus.Connection.open(store, old, cfg.store.open_timeout) as db:
                db.client.drop_collection(db.collection)
        shutil.rmtree(old, ignore_errors=True)
        report.index = {
            "operation": "rebuild",
            "items": len(corpus.ids),
            **{k: round(v, 4) for k, v in seconds.items()},
        }
        _commit_settings(library, settings, report, started)
    return report


@dataclass
class LibraryPages:
    """The pages ``ask --library`` reads: what and why, their images' files, the library's size."""

    reads: list[PageRead]
    images: list[Path]
    library_pages: int
    documents: int
    render: dict
    search: str


def search_library(library: str | Path, question: str, cfg: IndexConfig, slots: int) -> LibraryPages:
    """The best ``slots`` pages of the library for ``question``, in library order (document, page)."""
    library = Path(library)
    settings = read_library_settings(library)
    index_dir = library / INDEX
    count = int(read_manifest(index_dir)["count"])
    k = min(count, max(cfg.search.k, HITS_PER_SLOT * slots))
    cfg = cfg.model_copy(update={"search": cfg.search.model_copy(update={"k": k})})
    outcome = search_index(index_dir, Queries(["question"], [question], None), cfg)
    found: dict[tuple[str, int], tuple[PageRead, Path]] = {}
    for hit in outcome.results[0]:
        meta = labels_of(hit.labels)
        key = (meta.get("document", item_document(hit.id)), int(meta.get("page", 0)))
        if key in found:
            continue
        span = tuple(int(p) for p in meta["pdf_pages"].split("-")) if "pdf_pages" in meta else None
        read = PageRead(key[0], key[1], len(found) + 1, float(hit.score), (hit.text or "")[:120], pdf_pages=span)
        found[key] = (read, library / meta["image"])
        if len(found) == slots:
            break
    order = {doc: n for n, doc in enumerate(settings["documents"])}
    chosen = sorted(found.values(), key=lambda entry: (order.get(entry[0].document, len(order)), entry[0].page))
    return LibraryPages(
        [read for read, _ in chosen],
        [path for _, path in chosen],
        sum(doc["pages"] for doc in settings["documents"].values()),
        len(settings["documents"]),
        settings["render"],
        outcome.params.mode,
    )


def open_pages(paths: list[Path]) -> list[Image.Image]:
    images = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.load()
                images.append(image)
        except OSError as exc:
            raise InputError(
                f"{path}: a library page image is missing or damaged ({exc}); add its document again"
            ) from None
    return images
