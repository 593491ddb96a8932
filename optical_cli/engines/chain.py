"""What every engine reads with: the optical chain's settings and the pieces built from them once.

A :class:`ChainSpec` gathers, from any config that reads documents (``bench longbench``'s, or
``serve``/``ask``'s), the models (``vlm:``, ``deepencoder:``, the adapter and its LoRA), how pages
are drawn (``render:``), where and at what precision (``runtime:``), the engine and its settings
(``vllm:``). Both engines and the vLLM model directory take their adapter, pixels and tokenizer
from here, so the hf engine, the vLLM engine and a server built from the same config read with the
same weights (random ones from the same seed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..config.sections import (
    DeepEncoderSection,
    PageCacheSection,
    RenderSection,
    RuntimeConfig,
    VLLMSection,
    VLMSection,
)
from ..errors import ConfigError, InputError
from ..models import loading
from ..models.adapter import OPTICAL_LAYOUT, AdapterConfig, OpticalAdapter, load_adapter
from ..models.deepencoder import DeepEncoderConfig
from ..models.deepencoder.preprocess import resolve_pixels
from ..models.loop_guard import OFF, NoRepeatNGram
from ..models.lora import lora_beside
from ..models.tokenizers import QWEN_TIKTOKEN
from ..prompts import middle_truncate

RANDOM = "random"


@dataclass(frozen=True)
class ChainSpec:
    vlm: VLMSection
    deepencoder: DeepEncoderSection
    render: RenderSection
    runtime: RuntimeConfig
    vllm: VLLMSection
    engine: str  # hf | vllm
    adapter: str | None  # adapter.pth, hf://owner/name/file, random, or None (no optical reading)
    max_pages: int  # pages one read takes (middle truncation beyond)
    encode_batch_size: int  # page views per DeepEncoder forward

    section: str = "bench"  # the config section the four fields above come from, for messages
    page_cache: PageCacheSection | None = None  # encode once: where page features are cached (None: nowhere)
    loop_guard: NoRepeatNGram = OFF  # applied to every answer the engine reads (not part of the model)

    @classmethod
    def from_config(cls, cfg, section: str, engine: str | None = None, loop_guard=None) -> "ChainSpec":
        """From a config with ``vlm``, ``deepencoder``, ``render``, ``runtime`` and ``vllm`` sections
        and the section named ``section`` holding ``adapter``, ``max_pages``, ``encode_batch_size``,
        ``engine`` and ``loop_guard`` (``bench`` of bench longbench; ``serve`` of serve and ask, whose
        engine is given: ``ask.engine``, or vllm for the server; ask gives its own ``loop_guard``)."""
        values = getattr(cfg, section)
        guard = loop_guard if loop_guard is not None else getattr(values, "loop_guard", None)
        return cls(
            vlm=cfg.vlm,
            deepencoder=cfg.deepencoder,
            render=cfg.render,
            runtime=cfg.runtime,
            vllm=cfg.vllm,
            engine=engine if engine is not None else values.engine,
            adapter=values.adapter,
            max_pages=values.max_pages,
            encode_batch_size=values.encode_batch_size,
            section=section,
            page_cache=getattr(cfg, "page_cache", None),
            loop_guard=OFF if guard is None else NoRepeatNGram(guard.ngram, guard.window),
        )

    @property
    def random_language_model(self) -> bool:
        return self.vlm.source == loading.RANDOM_SOURCE

    @property
    def trained_adapter(self) -> bool:
        return self.adapter not in (None, RANDOM)

    @property
    def random_weights(self) -> bool:
        """Any random model in the chain: its answers test plumbing, they are not results."""
        return self.random_language_model or self.deepencoder.weights == RANDOM or self.adapter == RANDOM

    def tokenizer_source(self) -> str:
        source = self.vlm.tokenizer
        if source == "auto":
            return QWEN_TIKTOKEN if self.random_language_model else self.vlm.source
        return source

    def require_adapter(self) -> None:
        if self.adapter is None:
            raise ConfigError(
                f"{self.section}.adapter is not set: reading pages needs an adapter; train one with "
                f"`optical train-adapter` and pass --set {self.section}.adapter=PATH/adapter.pth"
                + (", or leave optical out of --conditions" if self.section == "bench" else "")
            )

    def load_trained_adapter(self):
        """The trained adapter (checked before any big model loads), or None for random / none."""
        return load_adapter(self.adapter) if self.trained_adapter else None

    def lora_dir(self) -> Path | None:
        """The LoRA trained beside a local adapter (``lora/`` next to ``adapter.pth``), if any."""
        if not self.trained_adapter or str(self.adapter).startswith(loading.HUB_FILE_SCHEME):
            return None
        return lora_beside(self.adapter)

    def pixels(self, adapter_layout: str | None) -> str:
        """``deepencoder.pixels`` resolved for the adapter that reads the features."""
        return resolve_pixels(self.deepencoder.pixels, adapter_layout)

    def encoder_architecture(self) -> DeepEncoderConfig | None:
        """The DeepEncoder's sizes when they are known without reading weights (random weights)."""
        return DeepEncoderConfig.named(self.deepencoder.architecture) if self.deepencoder.weights == RANDOM else None


def fit_adapter(spec: ChainSpec, adapter, vision_dim: int, llm_dim: int):
    """The trained adapter checked against the models it joins, or a seeded random one
    (``adapter: random``) of the published shape at these widths: the same weights wherever it is built."""
    if adapter is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.runtime.seed)
            adapter = OpticalAdapter(AdapterConfig(vision_dim=vision_dim, llm_dim=llm_dim, max_pages=spec.max_pages))
    for what, wanted, found in (
        ("language model's hidden size", llm_dim, adapter.config.llm_dim),
        ("encoder's vision-token width", vision_dim, adapter.config.vision_dim),
    ):
        if wanted != found:
            raise InputError(
                f"adapter {spec.adapter} has width {found} where the {what} is {wanted}; "
                "use an adapter trained for these models"
            )
    if adapter.config.max_pages < spec.max_pages:
        raise ConfigError(
            f"{spec.section}.max_pages={spec.max_pages} but the adapter has page embeddings for "
            f"{adapter.config.max_pages} pages; set {spec.section}.max_pages to at most {adapter.config.max_pages}"
        )
    return adapter


def adapter_layout(adapter) -> str:
    return OPTICAL_LAYOUT if adapter is None else adapter.layout


def draw_pages(renderer, text: str, max_pages: int) -> tuple[list, int]:
    """The document as page images in reading order, at most ``max_pages`` of them (middle
    truncation, as the text conditions truncate tokens), and the page count before cutting.
    Every page is laid out (cheap), only the kept ones are drawn: a 2M-word document is thousands of pages."""
    page_lines, _, _ = renderer.layout(text)
    kept, _ = middle_truncate(page_lines, max_pages)
    return [renderer.draw(lines) for lines in kept], len(page_lines)
