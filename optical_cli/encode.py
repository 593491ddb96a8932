"""`optical encode`: page images (or text rendered on the fly) -> DeepEncoder features + metrics.

Inputs are checked up front (readable image, side between 16 px and the configured limit)
so bad input fails before any model is loaded. Pages are loaded, rendered and preprocessed
on a producer thread while the encoder runs batches on the main thread; batches that run
out of accelerator memory are retried at half the size.
"""

from __future__ import annotations

import json
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from PIL import Image, UnidentifiedImageError

from .artifacts import atomic_path, atomic_write_json
from .config import EncodeConfig
from .errors import ConfigError, InputError, RunFailed
from .modes import PATCH_SIZE
from .models.deepencoder import DeepEncoder, DeepEncoderConfig
from .models.deepencoder.preprocess import PreparedPage, prepare
from .models.loading import load_deepencoder, resolve_device, resolve_dtype
from .textstats import count_text_tokens, count_words, entropy_bits_per_char

MIN_IMAGE_SIDE = 16
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
Progress = Callable[..., None]


@dataclass
class PageSource:
    """One page to encode: where it comes from and the text it shows, when known."""

    source: str                     # document it belongs to (image path, or the rendered text's source)
    image_path: Path | None = None  # None for pages rendered on the fly
    text: str | None = None
    counts: dict | None = None      # text_counts(text), filled on the producer thread


@dataclass
class EncodePlan:
    pages: list[PageSource] = field(default_factory=list)
    text_file: Path | None = None   # render this text, then encode its pages
    text: str = ""                  # its decoded content


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
        raise InputError(f"{path}: not a readable image ({type(exc).__name__}: {exc}); pass PNG, JPEG or another image PIL reads") from None
    if min(width, height) < MIN_IMAGE_SIDE:
        raise InputError(f"{path}: image is {width}x{height} px; both sides must be at least {MIN_IMAGE_SIDE} px")
    if max(width, height) > max_side:
        raise InputError(
            f"{path}: image is {width}x{height} px, over the limit of {max_side} px per side; "
            "shrink it or raise encode.max_image_side"
        )


def _pages_of_run_dir(run_dir: Path) -> list[PageSource]:
    from .render import read_layout

    pages = []
    for number, record in enumerate(read_layout(run_dir), start=1):
        try:
            pages.append(PageSource(str(record["source"]), run_dir / record["image"], "\n".join(record["lines"])))
        except (KeyError, TypeError):
            raise InputError(f"{run_dir / 'layout.jsonl'}: record {number} lacks source/image/lines; re-run `optical render`") from None
    return pages


def plan_inputs(inputs: list[Path], text_file: Path | None, cfg: EncodeConfig) -> EncodePlan:
    if not inputs and text_file is None:
        raise InputError("nothing to encode: pass --input IMAGE|DIR|RENDER_RUN_DIR (repeatable) or --text FILE")
    if inputs and text_file is not None:
        raise InputError("pass either --input or --text, not both")
    if text_file is not None:
        if not text_file.is_file():
            raise InputError(f"--text {text_file}: no such file")
        text = _read_text(text_file, cfg)
        if not text.strip():
            raise InputError(f"--text {text_file}: the file holds no text to render")
        return EncodePlan(text_file=text_file, text=text)
    plan = EncodePlan()
    for path in inputs:
        if path.is_dir() and (path / "layout.jsonl").is_file():
            plan.pages.extend(_pages_of_run_dir(path))
        elif path.is_dir():
            images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise InputError(f"{path}: directory holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}) and no layout.jsonl")
            plan.pages.extend(PageSource(str(p), p) for p in images)
        elif path.is_file():
            plan.pages.append(PageSource(str(path), path))
        else:
            raise InputError(f"--input {path}: no such file or directory")
    for page in plan.pages:
        if page.image_path is not None:
            check_image(page.image_path, cfg.encode.max_image_side)
    return plan


def _load_image(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image


def _read_text(path: Path, cfg: EncodeConfig) -> str:
    from .render import decode

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"--text {path}: cannot read: {exc.strerror}") from None
    return decode(data, str(path), cfg.render)


def produce_pages(plan: EncodePlan, cfg: EncodeConfig) -> Iterator[tuple[PageSource, PreparedPage]]:
    """Pages in order, each loaded (or rendered), preprocessed for the encoder's mode and its
    text measured, so that all of this overlaps with encoding when run through prefetch()."""
    mode = cfg.deepencoder.mode
    if plan.text_file is not None:
        from .render import iter_pages

        # pages are rendered at the size the encoder's mode reads (gundam: base pages)
        section = cfg.render.model_copy(update={"mode": "base" if mode == "gundam" else mode})
        for page in iter_pages(plan.text, section, str(plan.text_file)):
            yield PageSource(page.source, None, page.text, text_counts(page.text)), prepare(page.image, mode)
        return
    for page in plan.pages:
        page.counts = text_counts(page.text)
        yield page, prepare(_load_image(page.image_path), mode)


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
# Model and batched forward


def build_encoder(cfg: EncodeConfig) -> tuple[DeepEncoder, torch.device, torch.dtype]:
    device = resolve_device(cfg.runtime.device)
    dtype = resolve_dtype(cfg.runtime.dtype, device)
    section = cfg.deepencoder
    weights = None if section.weights == "random" else section.weights
    architecture = DeepEncoderConfig.named(section.architecture) if weights is None else None
    model = load_deepencoder(weights, device, dtype, config=architecture, seed=cfg.runtime.seed)
    model.set_attention(section.attention)
    if section.layout_tokens and not model.layout_vectors_loaded:
        raise ConfigError(
            f"deepencoder.layout_tokens=true but {section.weights} carries no image_newline/view_seperator "
            "(community layout); use the official file or set deepencoder.layout_tokens=false"
        )
    return model, device, dtype


class BatchRunner:
    """Forward views in chunks of ``batch_size``; on out-of-memory halve it and retry."""

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], batch_size: int, device: torch.device, dtype: torch.dtype):
        self.model, self.batch_size, self.device, self.dtype = model, batch_size, device, dtype

    @torch.inference_mode()
    def __call__(self, views: torch.Tensor) -> torch.Tensor:
        outputs, start = [], 0
        while start < len(views):
            chunk = views[start : start + self.batch_size].to(self.device, self.dtype, non_blocking=True)
            try:
                outputs.append(self.model(chunk))
            except torch.cuda.OutOfMemoryError:
                del chunk
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                if self.batch_size == 1:
                    raise RunFailed("out of memory with a batch of one view; use a smaller mode or another device") from None
                self.batch_size //= 2
                continue
            start += len(chunk)
        return torch.cat(outputs)


@torch.no_grad()  # plain tensors out (not inference tensors): callers may train on them
def encode_group(runner: BatchRunner, model: DeepEncoder, group: list[PreparedPage], layout_tokens: bool) -> list[torch.Tensor]:
    """Token sequences of a group of pages; views of equal size share forward passes."""
    by_size: dict[int, list[tuple[int, int]]] = {}
    for p, page in enumerate(group):
        for v, view in enumerate(page.views):
            by_size.setdefault(view.shape[-1], []).append((p, v))
    features: dict[tuple[int, int], torch.Tensor] = {}
    for size, keys in by_size.items():
        stacked = torch.stack([group[p].views[v] for p, v in keys])
        for key, out in zip(keys, runner(stacked)):
            features[key] = out
    sequences = []
    for p, page in enumerate(group):
        views = [features[(p, v)] for v in range(len(page.views))]
        tiles = torch.stack(views[:-1]) if len(views) > 1 else None
        sequences.append(model.arrange(tiles, page.grid, views[-1], layout_tokens).float().cpu())
    return sequences


# ---------------------------------------------------------------------------------------
# Metrics


def text_counts(text: str | None) -> dict | None:
    """Characters, words, Qwen tokens and entropy of a page's text (None when unknown)."""
    if text is None:
        return None
    return {
        "characters": len(text),
        "words": count_words(text),
        "text_tokens": count_text_tokens(text),
        "entropy_bits_per_char": entropy_bits_per_char(text),
    }


def text_metrics(counts: dict | None, vision_tokens: int) -> dict:
    if counts is None:
        return {k: None for k in ("characters", "words", "text_tokens", "words_per_vision_token",
                                  "text_tokens_per_vision_token", "entropy_bits_per_char")}
    return {
        "characters": counts["characters"],
        "words": counts["words"],
        "text_tokens": counts["text_tokens"],
        "words_per_vision_token": counts["words"] / vision_tokens,
        "text_tokens_per_vision_token": counts["text_tokens"] / vision_tokens,
        "entropy_bits_per_char": counts["entropy_bits_per_char"],
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


def document_records(pages: list[dict], texts: list[str | None]) -> list[dict]:
    documents: dict[str, dict] = {}
    for record, text in zip(pages, texts):
        doc = documents.setdefault(record["source"], {"source": record["source"], "pages": 0, "vision_tokens": 0, "patches": 0, "texts": []})
        doc["pages"] += 1
        doc["vision_tokens"] += record["vision_tokens"]
        doc["patches"] += record["patches"]
        doc["texts"].append(text)
    out = []
    for doc in documents.values():
        texts_ = doc.pop("texts")
        text = None if any(t is None for t in texts_) else "\n".join(texts_)
        doc["spatial_compression"] = doc["patches"] / doc["vision_tokens"]
        out.append({**doc, **text_metrics(text_counts(text), doc["vision_tokens"])})
    return out


# ---------------------------------------------------------------------------------------
# The command's domain function


def run_encode(cfg: EncodeConfig, plan: EncodePlan, encoder: tuple[DeepEncoder, torch.device, torch.dtype],
               features_path: Path, metrics_path: Path, progress: Progress | None = None) -> dict:
    """Encode the planned pages with ``encoder`` (from build_encoder); write features and metrics."""
    model, device, dtype = encoder
    forward = torch.compile(model) if cfg.encode.compile else model
    runner = BatchRunner(forward, cfg.encode.batch_size, device, dtype)
    layout = cfg.deepencoder.layout_tokens
    pages, texts, sequences, group = [], [], [], []

    def flush() -> None:
        encoded = encode_group(runner, model, [prepared for _, prepared in group], layout)
        for (page, prepared), seq in zip(group, encoded):
            pages.append(page_record(len(pages), page, prepared, seq.shape[0]))
            texts.append(page.text)
            sequences.append(seq)
        if progress:
            progress(len(group))
        group.clear()

    for page, prepared in prefetch(produce_pages(plan, cfg), cfg.encode.queue_pages):
        group.append((page, prepared))
        if sum(len(p.views) for _, p in group) >= cfg.encode.batch_size:
            flush()
    if group:
        flush()
    if not sequences:
        raise InputError("no pages to encode (the text rendered to zero pages)")
    write_features(features_path, sequences, pages, cfg, dtype)
    summary = {
        "mode": cfg.deepencoder.mode,
        "pages": len(pages),
        "vision_tokens": sum(p["vision_tokens"] for p in pages),
        "features": str(features_path),
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "batch_size_used": runner.batch_size,
    }
    documents = document_records(pages, texts)
    if all(doc["text_tokens"] is not None for doc in documents):
        summary["text_tokens_per_vision_token"] = sum(d["text_tokens"] for d in documents) / summary["vision_tokens"]
        summary["words_per_vision_token"] = sum(d["words"] for d in documents) / summary["vision_tokens"]
    atomic_write_json(metrics_path, {"summary": summary, "documents": documents, "pages": pages})
    return summary


def write_features(path: Path, sequences: list[torch.Tensor], pages: list[dict], cfg: EncodeConfig, dtype: torch.dtype) -> None:
    """``features`` [pages, max tokens, D] (zero-padded when pages differ, e.g. gundam) and
    ``tokens`` [pages] (each page's real length); mode, tokens and sources as metadata."""
    from safetensors.torch import save_file

    longest = max(s.shape[0] for s in sequences)
    features = torch.zeros(len(sequences), longest, sequences[0].shape[1], dtype=dtype)
    for i, seq in enumerate(sequences):
        features[i, : seq.shape[0]] = seq.to(dtype)
    tokens = torch.tensor([s.shape[0] for s in sequences], dtype=torch.int64)
    metadata = {
        "mode": cfg.deepencoder.mode,
        "layout_tokens": json.dumps(cfg.deepencoder.layout_tokens),
        "dtype": str(dtype).removeprefix("torch."),
        "weights": cfg.deepencoder.weights,
        "tokens_per_page": json.dumps(tokens.tolist()),
        "sources": json.dumps([p["source"] for p in pages], ensure_ascii=False),
    }
    with atomic_path(path) as tmp:
        save_file({"features": features, "tokens": tokens}, str(tmp), metadata=metadata)
