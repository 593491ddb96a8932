"""The feature cache step: whole documents held out, every page rendered and encoded once (the cache),
then the chat examples the objectives read."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..models.deepencoder.runner import PageEncoder
from ..models.vlm import VisionLanguageReader
from .config import TrainAdapterConfig
from .objectives import Example, make_examples
from .pages import PageSet, TrainingEvents, build_page_set, split_documents
from .setup import TrainingRuntime


@dataclass
class TrainingData:
    """Training and held-out pages (features cached on disk), their examples and the padding id."""

    train: PageSet
    held_out: PageSet
    train_examples: list[Example]
    held_out_examples: list[Example]
    pad_id: int
    cache_hit: bool  # the training pages' features were read from the cache
    encode_s: float  # rendering, encoding and caching (or reading the cache), seconds

    @property
    def vision_tokens(self) -> int:
        return int(self.train.features.shape[1])


def prepare_data(
    cfg: TrainAdapterConfig,
    runtime: TrainingRuntime,
    reader: VisionLanguageReader,
    documents: list[str],
    encoder: PageEncoder,
    emit: TrainingEvents,
) -> TrainingData:
    """Under ``accelerate launch`` the main process builds the cache first and the others read it."""
    started = time.perf_counter()
    train_documents, held_out_documents = split_documents(documents, cfg.data.eval_fraction, cfg.runtime.seed)
    cache = Path(cfg.data.cache_dir)
    with runtime.accelerator.main_process_first():
        train, cache_hit = build_page_set(train_documents, cfg, encoder, cache, emit)
        held_out = (
            build_page_set(held_out_documents, cfg, encoder, cache, emit)[0] if held_out_documents else PageSet.empty()
        )
    encode_s = time.perf_counter() - started
    if not len(train):
        raise InputError(
            "no training pages after holding out eval documents; lower data.eval_fraction or add documents"
        )
    return TrainingData(
        train,
        held_out,
        make_examples(reader, train, cfg.data.max_text_tokens),
        make_examples(reader, held_out, cfg.data.max_text_tokens),
        reader.tokenizer.token_id("<|endoftext|>"),
        cache_hit,
        encode_s,
    )
