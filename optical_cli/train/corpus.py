"""Documents: the training corpus read from .txt / .jsonl files, a directory of them or hf:owner/name."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from datasets import load_dataset

from ..artifacts import iter_jsonl_objects
from ..documents import read_document
from ..errors import InputError
from .config import TrainAdapterConfig


def _texts_from_jsonl(path: Path, field_name: str) -> Iterator[str]:
    for _, record in iter_jsonl_objects(path):
        value = record.get(field_name)
        if isinstance(value, str):
            yield value


def _texts_from_hub(name: str, split: str, field_name: str, limit: int | None) -> Iterator[str]:
    try:
        dataset = load_dataset(name, split=split, streaming=True)
        for index, record in enumerate(dataset):
            if limit is not None and index >= limit * 4:  # skips short texts; bounded so a bad field fails fast
                return
            value = record.get(field_name)
            if isinstance(value, str):
                yield value
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - datasets raises many types when offline or misnamed
        raise InputError(
            f"cannot read hub dataset {name!r} (split {split!r}): {type(exc).__name__}: {exc}; "
            "check the name and the network (HF_DATASETS_OFFLINE=1 blocks it), or pass a local file"
        ) from None


def _document_text(path: Path) -> str:
    document = read_document(path, "utf-8", "replace")
    if document.is_pdf and not document.has_text:
        raise InputError(
            f"training data {path}: the PDF has no text layer (a scan?), so it has no reconstruction "
            "target; remove it from data.source or give a PDF with text"
        )
    return document.text


def read_corpus(
    source: str,
    field_name: str = "description",
    split: str = "train",
    max_documents: int | None = None,
    min_chars: int = 1,
) -> list[str]:
    """Documents of at least ``min_chars`` non-blank characters, in corpus order."""
    if source.startswith("hf:"):
        texts: Iterator[str] = _texts_from_hub(source[3:], split, field_name, max_documents)
    else:
        path = Path(source)
        if path.is_dir():
            files = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in (".txt", ".md", ".pdf", ".jsonl")
            )
        elif path.is_file():
            files = [path]
        else:
            raise InputError(
                f"training data not found: {source}; pass a .txt/.md/.pdf/.jsonl file, a directory of them, or "
                "hf:owner/name"
            )
        texts = (
            t
            for f in files
            for t in (_texts_from_jsonl(f, field_name) if f.suffix.lower() == ".jsonl" else [_document_text(f)])
        )
    documents = []
    for text in texts:
        if len(text.strip()) >= min_chars:
            documents.append(text.strip())
            if max_documents is not None and len(documents) >= max_documents:
                break
    if not documents:
        raise InputError(
            f"{source}: no usable text (no document with at least {min_chars} characters"
            + ("" if source.startswith("hf:") or not source.endswith(".jsonl") else f" in field '{field_name}'")
            + "); check data.source, data.text_field and data.min_chars"
        )
    return documents


def training_corpus(cfg: TrainAdapterConfig) -> list[str]:
    """The training corpus per ``cfg.data`` (an unusable one raises InputError)."""
    return read_corpus(cfg.data.source, cfg.data.text_field, cfg.data.split, cfg.data.max_documents, cfg.data.min_chars)
