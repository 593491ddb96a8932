"""The hf engine: Qwen3-VL on transformers with our own generate loop (``models/vlm.py``).

- text conditions: ``VisionLanguageReader.generate(document_text=...)`` with our chat layout;
- pages: the document is laid out into pages (all of them, cheap), the pages kept by the middle
  truncation are drawn, encoded by DeepEncoder in batches (one forward per batch of views, as
  ``optical encode``), adapted and spliced between vision markers inside the same user turn.

Everything is built by :func:`optical_cli.engines.factory.build_reader`; weights come through
``models/loading.py``.
"""

from __future__ import annotations

import contextlib
import copy
import time
from typing import Any, Callable, Sequence

import torch

from ..devices import synchronize
from ..models.adapter import parameter_count
from ..models.loop_guard import OFF, NoRepeatNGram
from ..models.lora import has_lora, lora_disabled
from ..models.vlm import READ_INSTRUCTION, VisionLanguageReader
from ..prompts import PromptParts
from ..render.pages import PageRenderer
from .chain import draw_pages
from .reader import ContextExceeded, Generation, TextStream
from .tower import page_tokens

# <|im_start|>user\n ... <|im_end|>\n<|im_start|>assistant\n around the user content, plus the
# newline between document and question: counted exactly by the chat layout, bounded here.
CHAT_OVERHEAD_TOKENS = 16


class HFReader:
    """The Reader protocol over our generate loop: Qwen3-VL, DeepEncoder and the adapter in this process;
    a ``PlacingReader`` too: ``read_pages`` takes ``positions`` (each page's place for the adapter's page
    embedding, default 0..P-1) and ``mode`` (read the pages in another single-view DeepEncoder mode)."""

    page_positions = True  # read_pages(positions=...)
    page_modes = True  # read_pages(mode=...), vision_tokens(pages, mode=...)

    def __init__(
        self,
        vlm: VisionLanguageReader,
        *,
        renderer=None,
        encoder=None,
        random_weights: bool,
        description: str,
        conventions: dict[str, str] | None = None,
        loop_guard: NoRepeatNGram = OFF,
    ):
        self.vlm = vlm
        self.loop_guard = loop_guard  # every answer of read_text / read_pages (models/loop_guard.py)
        self.renderer = renderer  # render.PageRenderer at the encoder's page size
        self.encoder = encoder  # DeepEncoderPages: the frozen encoder of `optical encode`
        self.random_weights = random_weights
        self.description = description
        self.conventions = conventions or {}  # adapter layout and page pixels, for the manifest
        self.device = vlm.device
        self.parameters = {
            "deepencoder": None if encoder is None else encoder.parameter_count(),
            "adapter": None if vlm.adapter is None else parameter_count(vlm.adapter),
            "language_model": parameter_count(vlm.model),
        }
        lora = sum(p.numel() for name, p in vlm.model.named_parameters() if ".lora_" in name)
        if lora:
            self.parameters["language_model"] -= lora
            self.parameters["lora"] = lora
        self.max_positions = int(getattr(vlm.model.config.text_config, "max_position_embeddings", 0)) or None
        self._tokens_per_page: int | None = None

    # -- text ------------------------------------------------------------------------------
    def encode_text(self, text: str) -> list[int]:
        return self.vlm.tokenizer.encode(text)

    def decode_text(self, ids: Sequence[int]) -> str:
        return self.vlm.tokenizer.decode(list(ids))

    def _check_length(self, tokens: int) -> None:
        if self.max_positions and tokens + CHAT_OVERHEAD_TOKENS > self.max_positions:
            raise ContextExceeded(
                f"about {tokens + CHAT_OVERHEAD_TOKENS} input tokens exceed the model's {self.max_positions} positions"
            )

    def _streaming(self, stream: Callable[[str], None] | None):
        return None if stream is None else TextStream(self.decode_text, stream)

    def read_text(
        self,
        prompt: PromptParts,
        *,
        max_new_tokens: int,
        temperature: float,
        seed: int,
        stream: Callable[[str], None] | None = None,
    ) -> Generation:
        self._check_length(len(self.encode_text(prompt.text)))
        # text is read by the base model: LoRA trained with the adapter is part of the optical reader only
        with lora_disabled(self.vlm.model) if has_lora(self.vlm.model) else contextlib.nullcontext():
            text, stats = self.vlm.generate(
                question_prompt=prompt.question,
                document_text=prompt.document or None,
                preamble=prompt.preamble,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                seed=seed,
                on_token=self._streaming(stream),
                loop_guard=self.loop_guard,
            )
        return Generation(
            text, stats["input_tokens"], stats["prefill_s"], stats["decode_s"], finish_reason=stats["finish_reason"]
        )

    # -- pages -----------------------------------------------------------------------------
    def render(self, text: str, max_pages: int) -> tuple[list[Any], int]:
        return draw_pages(self.renderer, text, max_pages)

    def vision_tokens(self, pages: Sequence[Any], mode: str | None = None) -> int:
        if mode is not None and mode != self.encoder.mode:
            return len(pages) * page_tokens(mode, self.encoder.layout_tokens)
        if self._tokens_per_page is None and pages:
            self._tokens_per_page = int(self.encoder.encode(list(pages[:1])).shape[1])
        return len(pages) * (self._tokens_per_page or 0)

    def with_pages(self, render, mode: str) -> "HFReader":
        """This reader drawing pages with ``render`` (a RenderSection) at ``mode``'s size and encoding them in
        ``mode``: one setting of a render grid. The models are shared, not loaded again."""
        variant = copy.copy(self)
        variant.renderer = PageRenderer(render.model_copy(update={"mode": mode}))
        if self.encoder is not None and mode != self.encoder.mode:
            variant.encoder = copy.copy(self.encoder)
            variant.encoder.mode = mode
            variant._tokens_per_page = None
        return variant

    def warm_up(self) -> None:
        """Load lazily loaded weights and run each model once, so the first item's timings
        measure reading, not loading or kernel set-up; learns the tokens per page."""
        self.vlm.generate(question_prompt="Say OK.", max_new_tokens=2, temperature=0.0)
        if self.encoder is not None:
            self.vision_tokens([self.renderer.draw(["warm-up"])])

    def read_pages(
        self,
        prompt: PromptParts,
        pages: Sequence[Any],
        *,
        max_new_tokens: int,
        temperature: float,
        seed: int,
        stream: Callable[[str], None] | None = None,
        positions: Sequence[int] | None = None,
        mode: str | None = None,
    ) -> Generation:
        self._check_length(
            self.vision_tokens(pages, mode) + 2 * len(pages) + len(self.encode_text(prompt.preamble + prompt.question))
        )
        start = time.perf_counter()
        features = self.encoder.encode(list(pages), mode=mode)  # [pages, tokens, vision_dim], views batched
        cache = getattr(self.encoder, "stats", None)  # behind the page cache: pages encoded now / read
        if features.device.type == "cpu" and self.vlm.device.type == "cuda":
            features = features.to(self.vlm.device, non_blocking=True)
        synchronize(self.vlm.device)
        encode_s = time.perf_counter() - start
        text, stats = self.vlm.generate(
            question_prompt=prompt.question,
            vision_features=features,
            preamble=prompt.preamble,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed,
            on_token=self._streaming(stream),
            page_index=None if positions is None else torch.tensor(list(positions), device=self.vlm.device),
            loop_guard=self.loop_guard,
        )
        return Generation(
            text,
            stats["input_tokens"],
            stats["prefill_s"],
            stats["decode_s"],
            encode_s=encode_s,
            adapter_s=stats["adapter_s"],
            pages_encoded=len(pages) if cache is None else cache.encoded,
            pages_cached=0 if cache is None else cache.cached,
            finish_reason=stats["finish_reason"],
        )

    def transcribe(self, features: torch.Tensor, page_index: int, max_new_tokens: int, multi_page: bool = True) -> str:
        """Greedy transcription of one encoded page ([1, tokens, vision_dim]) at its place in its
        document (``multi_page``: whether that document has more pages): ``train-adapter``'s reading check."""
        text, _ = self.vlm.generate(
            question_prompt=READ_INSTRUCTION,
            vision_features=features,
            max_new_tokens=max_new_tokens,
            temperature=0.0,
            page_index=torch.tensor([page_index], device=self.vlm.device),
            multi_page=multi_page,
        )
        return text
