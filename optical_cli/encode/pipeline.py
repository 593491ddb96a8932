"""`optical encode`: page images (or text rendered on the fly) -> DeepEncoder features + metrics.

Inputs are checked up front (readable image, side between 16 px and the configured limit)
so bad input fails before any model is loaded. Pages are loaded, rendered and preprocessed
on a producer thread while the encoder runs batches on the main thread; batches that run
out of accelerator memory are retried at half the size.

Memory stays bounded whatever the number of pages: features go to disk one shard
(``encode.shard_pages`` pages) at a time (:mod:`optical_cli.features`), each shard carrying the
metric records of its pages, and the metric files are assembled from the shards at the end.
A shard is the unit of resuming (``--resume`` encodes only the shards not on disk) and of
data parallelism: under ``accelerate launch`` process i encodes shards i, i + N, ..., and the
main process names the shards and writes the index and metrics once all are done. A batch
never spans two shards, so every process count computes the same batches and the same features.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from PIL import Image, UnidentifiedImageError

from ..artifacts import atomic_path, atomic_write_json, to_json_line
from ..distributed import Processes
from ..documents import read_document
from ..errors import ConfigError, InputError
from ..models.deepencoder import auto_choices, widens
from ..models.deepencoder.preprocess import PreparedPage, prepare, resolve_pixels
from ..models.deepencoder.runner import EncoderRunner
from ..modes import PATCH_SIZE
from ..progress import Progress
from ..render.pages import PageRenderer, read_layout
from ..textstats import count_text_tokens, count_words, entropy_of_counts
from .config import EncodeConfig
from .features import FeatureFiles, ShardedFeatures, read_header

MIN_IMAGE_SIDE = 16
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass
class PageSource:
    """One page to encode: where it comes from and the text it shows, when known."""

    source: str  # document it belongs to (image path, or the rendered text's source)
    image_path: Path | None = None  # None for pages rendered on the fly
    text: str | None = None
    counts: dict | None = None  # text_counts(text), filled on the producer thread


@dataclass
class EncodePlan:
    pages: list[PageSource] = field(default_factory=list)
    text_file: Path | None = None  # --text: this file's laid-out pages, drawn when encoded
    page_lines: list[list[str]] | None = None
    renderer: Any = None  # render.PageRenderer at the encoder mode's page size

    def __len__(self) -> int:
        return len(self.page_lines) if self.page_lines is not None else len(self.pages)

    def page_text(self, number: int) -> str | None:
        return "\n".join(self.page_lines[number]) if self.page_lines is not None else self.pages[number].text

    def page_source(self, number: int) -> str:
        return str(self.text_file) if self.page_lines is not None else self.pages[number].source

    def digest(self, numbers: range) -> str:
        """What pages ``numbers`` are made of (source, and text or image path): a resumed run
        checks that each shard on disk came from these pages."""
        digest = hashlib.sha256()
        for n in numbers:
            shown = self.page_text(n) if self.page_lines is not None else str(self.pages[n].image_path)
            digest.update(f"{self.page_source(n)}\0{shown}\0".encode("utf-8", "surrogatepass"))
        return digest.hexdigest()[:32]


# ---------------------------------------------------------------------------------------
# Inputs


def check_image(path: Path, max_side: int) -> None:
    """Fail with one clear line unless ``path`` is a readable image of a usable size."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            image.verify()
    except Image.DecompressionBombError as exc:
        raise InputError(f"{path}: image too large to decode safely ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(
            f"{path}: not a readable image ({type(exc).__name__}: {exc}); pass PNG, JPEG or another image PIL reads"
        ) from None
    if min(width, height) < MIN_IMAGE_SIDE:
        raise InputError(f"{path}: image is {width}x{height} px; both sides must be at least {MIN_IMAGE_SIDE} px")
    if max(width, height) > max_side:
        raise InputError(
            f"{path}: image is {width}x{height} px, over the limit of {max_side} px per side; "
            "shrink it or raise encode.max_image_side"
        )


def _pages_of_run_dir(run_dir: Path) -> list[PageSource]:
    pages = []
    for number, record in enumerate(read_layout(run_dir), start=1):
        try:
            pages.append(PageSource(str(record["source"]), run_dir / record["image"], "\n".join(record["lines"])))
        except (KeyError, TypeError):
            raise InputError(
                f"{run_dir / 'layout.jsonl'}: record {number} lacks source/image/lines; re-run `optical render`"
            ) from None
    return pages


def plan_inputs(inputs: list[Path], text_file: Path | None, cfg: EncodeConfig) -> EncodePlan:
    if not inputs and text_file is None:
        raise InputError("nothing to encode: pass --input IMAGE|DIR|RENDER_RUN_DIR (repeatable) or --text FILE")
    if inputs and text_file is not None:
        raise InputError("pass either --input or --text, not both")
    if cfg.deepencoder.mode == "gundam" and resolve_pixels(cfg.deepencoder.pixels) == "published":
        raise ConfigError(
            "deepencoder.pixels=published reads one square view per page but gundam tiles pages; "
            "use mode tiny, small, base or large, or pixels official"
        )
    if text_file is not None:
        return _plan_text(text_file, cfg)
    plan = EncodePlan()
    for path in inputs:
        if path.is_dir() and (path / "layout.jsonl").is_file():
            plan.pages.extend(_pages_of_run_dir(path))
        elif path.is_dir():
            images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise InputError(
                    f"{path}: directory holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}) and no layout.jsonl"
                )
            plan.pages.extend(PageSource(str(p), p) for p in images)
        elif path.is_file():
            plan.pages.append(PageSource(str(path), path))
        else:
            raise InputError(f"--input {path}: no such file or directory")
    if not plan.pages:
        raise InputError(
            f"no pages to encode in {', '.join(map(str, inputs))} (a render run directory with an empty layout?)"
        )
    for page in plan.pages:
        if page.image_path is not None:
            check_image(page.image_path, cfg.encode.max_image_side)
    return plan


def _plan_text(text_file: Path, cfg: EncodeConfig) -> EncodePlan:
    """Lay the text out into pages now (cheap: no drawing) so the page count, and with it the
    shards and each process's share, is known before encoding starts."""
    if not text_file.is_file():
        raise InputError(f"--text {text_file}: no such file")
    text = _read_text(text_file, cfg)
    if not text.strip():
        raise InputError(f"--text {text_file}: no text to render (empty or whitespace only); give a file with text")
    mode = cfg.deepencoder.mode  # pages are rendered at the size the encoder's mode reads (gundam: base pages)
    renderer = PageRenderer(cfg.render.model_copy(update={"mode": "base" if mode == "gundam" else mode}))
    page_lines, _, _ = renderer.layout(text)
    if not page_lines:
        raise InputError(f"--text {text_file}: no page to encode (the text rendered to zero pages)")
    return EncodePlan(text_file=text_file, page_lines=page_lines, renderer=renderer)


def _load_image(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image


def _read_text(path: Path, cfg: EncodeConfig) -> str:
    """The text of --text FILE: text or markdown decoded per render.encoding, or a PDF's text layer."""
    document = read_document(path, cfg.render.encoding, cfg.render.errors)
    if document.is_pdf and not document.has_text:
        raise InputError(
            f"--text {path}: the PDF has no text layer (a scan?), so there is no text to render; draw its "
            "own pages with `optical render FILE --set render.source=pdf-pages` and encode that run directory"
        )
    return document.text


def produce_pages(
    plan: EncodePlan, cfg: EncodeConfig, wanted: Callable[[int], bool]
) -> Iterator[tuple[int, PageSource, PreparedPage]]:
    """The ``wanted`` pages in order as (page number, source, preprocessed views), each loaded or
    drawn and its text measured, so that all of this overlaps with encoding under prefetch()."""
    mode, pixels = cfg.deepencoder.mode, resolve_pixels(cfg.deepencoder.pixels)
    for number in range(len(plan)):
        if not wanted(number):
            continue
        if plan.page_lines is not None:
            lines = plan.page_lines[number]
            text = "\n".join(lines)
            yield (
                number,
                PageSource(str(plan.text_file), None, text, text_counts(text)),
                prepare(plan.renderer.draw(lines), mode, pixels),
            )
        else:
            page = plan.pages[number]
            yield (
                number,
                replace(page, counts=text_counts(page.text)),
                prepare(_load_image(page.image_path), mode, pixels),
            )


def prefetch(items: Iterator, depth: int) -> Iterator:
    """Run a generator on a background thread, ``depth`` items ahead; its errors re-raise here."""
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def worker() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                buffer.put(item)
            buffer.put(done)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            buffer.put(exc)

    thread = threading.Thread(target=worker, name="encode-producer", daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                buffer.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


# ---------------------------------------------------------------------------------------
# Model


def build_runner(cfg: EncodeConfig, device: torch.device | None = None) -> EncoderRunner:
    """The configured DeepEncoder on ``device`` (default: ``runtime.device``), batched as ``encode:`` says."""
    return EncoderRunner.build(cfg.deepencoder, cfg.runtime, cfg.encode.batch_size, device, cfg.encode.compile)


# ---------------------------------------------------------------------------------------
# Metrics


TEXT_FIELDS = (
    "characters",
    "words",
    "text_tokens",
    "words_per_vision_token",
    "text_tokens_per_vision_token",
    "entropy_bits_per_char",
)


def text_counts(text: str | None) -> dict | None:
    """Characters, words, Qwen tokens and the character histogram of a page's text (None when unknown)."""
    if text is None:
        return None
    return {
        "characters": len(text),
        "words": count_words(text),
        "text_tokens": count_text_tokens(text),
        "char_counts": Counter(text),
    }


def text_metrics(counts: dict | None, vision_tokens: int) -> dict:
    if counts is None:
        return dict.fromkeys(TEXT_FIELDS)
    return {
        "characters": counts["characters"],
        "words": counts["words"],
        "text_tokens": counts["text_tokens"],
        "words_per_vision_token": counts["words"] / vision_tokens,
        "text_tokens_per_vision_token": counts["text_tokens"] / vision_tokens,
        "entropy_bits_per_char": entropy_of_counts(counts["char_counts"]),
    }


def page_record(index: int, page: PageSource, prepared: PreparedPage, tokens: int) -> dict:
    patches = sum((view.shape[-1] // PATCH_SIZE) ** 2 for view in prepared.views)
    return {
        "page": index,
        "source": page.source,
        "image": str(page.image_path) if page.image_path else None,
        "views": len(prepared.views),
        "vision_tokens": tokens,
        "patches": patches,
        "spatial_compression": patches / tokens,
        **text_metrics(page.counts, tokens),
    }


class DocumentTally:
    """Sums over consecutive pages of one document. A shard stores the tallies of the documents it
    touches; the tallies of a document split across shards merge in page order. A document's text
    is its pages' texts joined by newlines; its text tokens are the sum of its pages' (each page
    tokenized as a reader reads it)."""

    SUMS = ("pages", "vision_tokens", "patches", "characters", "words", "text_tokens")

    def __init__(self, source: str, **fields: Any):
        self.source = source
        self.sums = {key: fields.get(key, 0) for key in self.SUMS}
        self.char_counts = Counter(fields.get("char_counts") or {})
        self.has_text = fields.get("has_text", True)

    def add_page(self, record: dict, counts: dict | None) -> None:
        self.merge(
            DocumentTally(
                record["source"],
                pages=1,
                vision_tokens=record["vision_tokens"],
                patches=record["patches"],
                has_text=counts is not None,
                **(counts or {}),
            )
        )

    def merge(self, later: "DocumentTally") -> None:
        if self.sums["pages"] and later.sums["pages"]:
            self.char_counts["\n"] += 1  # the newline that joins the two runs of pages
            self.sums["characters"] += 1
        for key in self.SUMS:
            self.sums[key] += later.sums[key]
        self.char_counts.update(later.char_counts)
        self.has_text = self.has_text and later.has_text

    def state(self) -> dict:
        """JSON-able form, stored in a shard's header."""
        return {"source": self.source, **self.sums, "has_text": self.has_text, "char_counts": dict(self.char_counts)}

    def record(self) -> dict:
        counts = {**self.sums, "char_counts": self.char_counts} if self.has_text else None
        return {
            "source": self.source,
            **{k: self.sums[k] for k in ("pages", "vision_tokens", "patches")},
            "spatial_compression": self.sums["patches"] / self.sums["vision_tokens"],
            **text_metrics(counts, self.sums["vision_tokens"]),
        }


def tally_documents(records: list[dict], counts: list[dict | None]) -> list[DocumentTally]:
    """Tallies of the runs of consecutive pages with the same source."""
    tallies: list[DocumentTally] = []
    for record, page_counts in zip(records, counts):
        if not tallies or tallies[-1].source != record["source"]:
            tallies.append(DocumentTally(record["source"]))
        tallies[-1].add_page(record, page_counts)
    return tallies


# ---------------------------------------------------------------------------------------
# Shards: encode this process's share


def feature_identity(cfg: EncodeConfig, dtype: torch.dtype) -> dict[str, str]:
    """Settings that change the features: written into every shard, checked on --resume."""
    section = cfg.deepencoder
    return {
        "mode": section.mode,
        "layout_tokens": str(section.layout_tokens).lower(),
        "pixels": resolve_pixels(section.pixels),
        "dtype": str(dtype).removeprefix("torch."),
        "weights": section.weights,
    }


def check_shards_on_disk(
    cfg: EncodeConfig, plan: EncodePlan, dtype: torch.dtype, features_path: Path
) -> tuple[int, int, list[dict]]:
    """Before resuming: every shard on disk must hold these pages under these settings.
    Returns (shards on disk, shards in all, the attention paths ``auto`` chose for them)."""
    shards, identity = ShardedFeatures(features_path, cfg.encode.shard_pages), feature_identity(cfg, dtype)
    count = shards.shard_count(len(plan))
    found, choices = 0, []
    for k in range(count):
        path = shards.existing(k, count)
        if path is None:
            continue
        found += 1
        header = read_header(path)
        choices += _header_json(header, "attention_auto") if "attention_auto" in header else []
        numbers = shards.shard_pages(k, len(plan))
        differs = [key for key, value in identity.items() if header.get(key) != value]
        if header.get("inputs") != plan.digest(numbers) or header.get("first_page") != str(numbers.start):
            differs.append("pages")
        if differs:
            raise InputError(
                f"--resume: {path} was encoded from other {' and '.join(differs)} than this run; "
                "rerun with the same inputs and settings or choose a new --output-dir"
            )
    return found, count, choices


def attention_choices(cfg: EncodeConfig) -> list[dict]:
    """The paths ``deepencoder.attention: auto`` chose so far in this process (none when pinned)."""
    return auto_choices() if cfg.deepencoder.attention == "auto" else []


@dataclass
class _Shard:
    """The pages of one shard as they are encoded, until it is written."""

    number: int
    pages: range
    sequences: list[torch.Tensor] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)
    counts: list[dict | None] = field(default_factory=list)


def _write_shard(shards: ShardedFeatures, shard: _Shard, dtype: torch.dtype, header: dict, cfg: EncodeConfig) -> None:
    """One finished shard on disk, its header saying what made it (settings, inputs, pages, documents)."""
    header = {
        **header,
        "pages": shard.records,
        "attention_auto": attention_choices(cfg),
        "documents": [t.state() for t in tally_documents(shard.records, shard.counts)],
    }
    sources = [r["source"] for r in shard.records]
    shards.write(shard.number, shard.pages.start, shard.sequences, sources, dtype, header)


def encode_shards(
    cfg: EncodeConfig,
    plan: EncodePlan,
    runner: EncoderRunner,
    shards: ShardedFeatures,
    procs: Processes,
    progress: Progress | None = None,
) -> dict:
    """Encode this process's shards that are not on disk yet; returns what it did (for the manifest)."""
    dtype = runner.dtype
    identity = feature_identity(cfg, dtype)
    total, count = len(plan), shards.shard_count(len(plan))
    mine = [k for k in range(procs.index, count, procs.count)]
    todo = {k for k in mine if shards.existing(k, count) is None}
    if progress:
        progress(0, total=sum(len(shards.shard_pages(k, total)) for k in todo))
    started, current, group = time.perf_counter(), None, []

    def flush() -> None:
        encoded = runner.encode([prepared for _, _, prepared in group])
        for (number, page, prepared), seq in zip(group, encoded):
            current.sequences.append(seq.to(dtype))
            current.records.append(page_record(number, page, prepared, seq.shape[0]))
            current.counts.append(page.counts)
        if progress:
            progress(len(group))
        group.clear()
        return_freed_memory()

    stream = produce_pages(plan, cfg, lambda number: number // shards.pages_per_shard in todo)
    for number, page, prepared in prefetch(stream, cfg.encode.queue_pages):
        if current is None:
            k = number // shards.pages_per_shard
            current = _Shard(k, shards.shard_pages(k, total))
        group.append((number, page, prepared))
        last_of_shard = number == current.pages[-1]
        if last_of_shard or sum(len(p.views) for _, _, p in group) >= cfg.encode.batch_size:
            flush()
        if last_of_shard:  # a batch never spans two shards: every process count batches alike
            _write_shard(shards, current, dtype, {**identity, "inputs": plan.digest(current.pages)}, cfg)
            current = None
    return {
        "process": procs.index,
        "shards": sorted(k + 1 for k in todo),
        "pages": sum(len(shards.shard_pages(k, total)) for k in todo),
        "resumed_shards": len(mine) - len(todo),
        "seconds": round(time.perf_counter() - started, 3),
        "batch_size_used": runner.batch_size,
        "attention_auto": attention_choices(cfg),
    }


TRIM_INTERVAL_S = 2.0


def return_freed_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc's malloc_trim), at most once every
    TRIM_INTERVAL_S seconds; elsewhere than glibc, nothing.

    Each page becomes 3-12 MB tensors, made on the producer thread and freed on this one. Once
    such blocks are freed, glibc raises its mmap threshold above their size and serves them
    from the heap, whose free gaps it keeps: resident memory creeps up with the page count
    (measured: +170 MB over 1,400 tiny pages of preprocessing alone, none when trimmed).
    Memory handed back is taken again through page faults, so trimming after every batch costs
    throughput (11.7 and 12.6 s against 9.3 and 10.2 s untrimmed on 400 tiny pages); at most
    one trim every two seconds bounds the creep to what two seconds of pages leave.
    """
    global _libc, _last_trim
    if _libc is None:
        try:
            _libc = ctypes.CDLL("libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _libc = False
    now = time.monotonic()
    if _libc and now - _last_trim >= TRIM_INTERVAL_S:
        _libc.malloc_trim(0)
        _last_trim = now


_libc: Any = None
_last_trim = float("-inf")


# ---------------------------------------------------------------------------------------
# The whole run: shards of every process -> named shards, index and metrics


def run_encode(
    cfg: EncodeConfig,
    plan: EncodePlan,
    runner: EncoderRunner,
    features_path: Path,
    metrics_dir: Path,
    procs: Processes | None = None,
    resume: bool = False,
    progress: Progress | None = None,
) -> tuple[dict | None, list[dict]]:
    """Encode ``plan`` into ``features_path`` (one file, or shards + index) and the metric files in
    ``metrics_dir``. Every process calls this; the main one returns (summary, each process's report),
    the others (None, reports). With ``resume`` the shards on disk are kept (check them first with
    :func:`check_shards_on_disk`); without, older outputs of the same name are removed."""
    procs = procs or Processes()
    device, dtype = runner.device, runner.dtype
    shards = ShardedFeatures(features_path, cfg.encode.shard_pages)
    if not resume and procs.is_main:
        shards.clear()
    procs.wait()  # stale outputs are gone before any process writes
    report = encode_shards(cfg, plan, runner, shards, procs, progress)
    reports = procs.gather(report)  # also the barrier: every shard is on disk past this line
    if not procs.is_main:
        return None, reports
    choices = attention_choices(cfg)
    features = shards.finish(len(plan), {**feature_identity(cfg, dtype), "attention_auto": choices})
    summary = {
        "mode": cfg.deepencoder.mode,
        **write_metrics(FeatureFiles.open(features), metrics_dir),
        "features": str(features),
        "shards": shards.shard_count(len(plan)),
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "widened_products": widens(dtype, device),  # reduced-precision products run as float32 ones (products.py)
        "batch_size_used": min(r["batch_size_used"] for r in reports),
        "processes": procs.count,
    }
    atomic_write_json(metrics_dir / "metrics.json", {"summary": summary, "attention_auto": choices})
    return summary, reports


METRIC_FILES = ("metrics.json", "pages.jsonl", "documents.jsonl")


def write_metrics(features: FeatureFiles, folder: Path) -> dict:
    """``pages.jsonl`` and ``documents.jsonl`` from the shard headers, streamed (nothing per page is
    held); returns the totals."""
    pages = vision_tokens = text_tokens = words = 0
    text_known = True
    with (
        atomic_path(folder / "pages.jsonl") as pages_tmp,
        atomic_path(folder / "documents.jsonl") as docs_tmp,
        open(pages_tmp, "w", encoding="utf-8") as page_lines,
        open(docs_tmp, "w", encoding="utf-8") as doc_lines,
    ):
        document: DocumentTally | None = None

        def close(tally: DocumentTally) -> None:
            nonlocal text_tokens, words, text_known
            record = tally.record()
            doc_lines.write(to_json_line(record) + "\n")
            text_known = text_known and record["text_tokens"] is not None
            text_tokens += record["text_tokens"] or 0
            words += record["words"] or 0

        for header in features.headers():
            for record in _header_json(header, "pages"):
                page_lines.write(to_json_line(record) + "\n")
                pages += 1
                vision_tokens += record["vision_tokens"]
            for state in _header_json(header, "documents"):
                tally = DocumentTally(**state)
                if document is not None and document.source == tally.source:
                    document.merge(tally)
                    continue
                if document is not None:
                    close(document)
                document = tally
        if document is not None:
            close(document)
    summary: dict[str, Any] = {"pages": pages, "vision_tokens": vision_tokens}
    if text_known and vision_tokens:
        summary["text_tokens_per_vision_token"] = text_tokens / vision_tokens
        summary["words_per_vision_token"] = words / vision_tokens
    return summary


def _header_json(header: dict[str, str], key: str) -> list:
    return json.loads(header.get(key, "[]"))
