"""The real reader: Qwen3-VL reading text, or pages through DeepEncoder and the adapter.

Every weight comes through ``models/loading.py``; this module only puts the pieces behind
the benchmark's :class:`~optical_cli.bench.reader.Reader` protocol:

- text conditions: ``VisionLanguageReader.generate(document_text=...)`` with the chat template;
- optical: the document is laid out into pages (all of them, cheap), the pages kept by the
  middle truncation are drawn, encoded by DeepEncoder in batches (one forward per batch of
  views), adapted and spliced between vision markers inside the same user turn.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import torch

from ..errors import ConfigError
from .prompts import PromptParts, middle_truncate
from .reader import ContextExceeded, Generation

# <|im_start|>user\n ... <|im_end|>\n<|im_start|>assistant\n around the user content, plus the
# newline between document and question: counted exactly by the chat layout, bounded here.
CHAT_OVERHEAD_TOKENS = 16


class QwenOpticalReader:
    """Implements the benchmark's Reader protocol over the project's models."""

    def __init__(self, vlm, *, renderer=None, encoder=None, encode_batch: int = 8, mode: str = "base",
                 layout_tokens: bool = False, random_weights: bool, description: str):
        self.vlm = vlm
        self.renderer = renderer
        self.encoder = encoder
        self.encode_batch = encode_batch
        self.mode = mode
        self.layout_tokens = layout_tokens
        self.random_weights = random_weights
        self.description = description
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

    def read_text(self, prompt: PromptParts, *, max_new_tokens: int, temperature: float, seed: int) -> Generation:
        self._check_length(len(self.encode_text(prompt.text)))
        text, stats = self.vlm.generate(
            question_prompt=prompt.question, document_text=prompt.document or None,
            max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
        )
        return Generation(text, stats["input_tokens"], stats["prefill_s"], _decode_s(stats))

    # -- pages -----------------------------------------------------------------------------
    def render(self, text: str, max_pages: int) -> tuple[list[Any], int]:
        page_lines, _, _ = self.renderer.layout(text)
        kept, _ = middle_truncate(page_lines, max_pages)
        return [self.renderer.draw(lines) for lines in kept], len(page_lines)

    def vision_tokens(self, pages: Sequence[Any]) -> int:
        if self._tokens_per_page is None and pages:
            self._tokens_per_page = int(self._encode(pages[:1]).shape[1])
        return len(pages) * (self._tokens_per_page or 0)

    @torch.inference_mode()
    def _encode(self, pages: Sequence[Any]) -> torch.Tensor:
        """Pages -> DeepEncoder features [pages, tokens, vision_dim], batched views."""
        from ..encode import BatchRunner, encode_group
        from ..models.deepencoder.preprocess import prepare

        device = next(self.encoder.parameters()).device
        dtype = next(self.encoder.parameters()).dtype
        runner = BatchRunner(self.encoder, self.encode_batch, device, dtype)
        prepared = [prepare(page, self.mode) for page in pages]
        return torch.stack(encode_group(runner, self.encoder, prepared, self.layout_tokens))

    def read_pages(self, prompt: PromptParts, pages: Sequence[Any], *, max_new_tokens: int, temperature: float, seed: int) -> Generation:
        self._check_length(self.vision_tokens(pages) + 2 * len(pages) + len(self.encode_text(prompt.question)))
        start = time.perf_counter()
        features = self._encode(pages)
        if features.device.type == "cpu" and self.vlm.device.type == "cuda":
            features = features.to(self.vlm.device, non_blocking=True)
        _sync(self.vlm.device)
        encode_s = time.perf_counter() - start
        text, stats = self.vlm.generate(
            question_prompt=prompt.question, vision_features=features,
            max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
        )
        return Generation(text, stats["input_tokens"], stats["prefill_s"], _decode_s(stats), encode_s=encode_s)


def _decode_s(stats: dict) -> float:
    """Everything generate timed except the prefill: the decode loop, plus (optical) the adapter
    MLP and the embedding splice, which run before the prefill and are small beside it."""
    return max(0.0, stats["total_s"] - stats["prefill_s"])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_reader(cfg, conditions: Sequence[str]) -> QwenOpticalReader:
    """Load what the chosen conditions need (the encoder and adapter only for optical)."""
    from ..models import loading
    from ..models.vlm import VisionLanguageReader

    if "optical" in conditions and cfg.bench.adapter is None:  # before any weights load
        raise ConfigError(
            "bench.adapter is not set: the optical condition needs a trained adapter; train one with "
            "`optical train-adapter` and pass --set bench.adapter=PATH/adapter.pth, or leave optical out of --conditions"
        )
    device = loading.resolve_device(cfg.runtime.device)
    dtype = loading.resolve_dtype(cfg.runtime.dtype, device)
    vlm_cfg = cfg.vlm
    model = loading.load_qwen3_vl(vlm_cfg.source, device, dtype, random_dims=vlm_cfg.random.model_dump(), seed=cfg.runtime.seed)
    tokenizer_source = vlm_cfg.tokenizer
    if tokenizer_source == "auto":
        tokenizer_source = loading.QWEN_TIKTOKEN if vlm_cfg.source == loading.RANDOM_SOURCE else vlm_cfg.source
    tokenizer = loading.load_chat_tokenizer(tokenizer_source)
    random_weights = vlm_cfg.source == loading.RANDOM_SOURCE
    parts = [f"vlm={vlm_cfg.source}"]
    encoder = renderer = adapter = None
    if "optical" in conditions or "native-matched" in conditions:
        from ..render import PageRenderer

        renderer = PageRenderer(cfg.render)
        encoder = loading.load_deepencoder(
            None if cfg.deepencoder.weights == "random" else cfg.deepencoder.weights, device, dtype,
            config=_random_encoder_config(cfg), seed=cfg.runtime.seed,
        )
        random_weights = random_weights or cfg.deepencoder.weights == "random"
        parts.append(f"deepencoder={cfg.deepencoder.weights} ({cfg.deepencoder.mode})")
    if "optical" in conditions:
        adapter = _adapter(cfg, encoder, model.config.text_config.hidden_size, device, dtype)
        random_weights = random_weights or cfg.bench.adapter == "random"
        parts.append(f"adapter={cfg.bench.adapter}")
    vlm = VisionLanguageReader(model, tokenizer, adapter)
    return QwenOpticalReader(
        vlm, renderer=renderer, encoder=encoder, encode_batch=cfg.bench.encode_batch_size, mode=cfg.deepencoder.mode,
        layout_tokens=cfg.deepencoder.layout_tokens, random_weights=random_weights, description=", ".join(parts),
    )


def _random_encoder_config(cfg):
    if cfg.deepencoder.weights != "random":
        return None
    from ..models.deepencoder import DeepEncoderConfig

    return DeepEncoderConfig.named(cfg.deepencoder.architecture)


def _adapter(cfg, encoder, llm_dim: int, device: torch.device, dtype: torch.dtype):
    from ..models import loading
    from ..models.adapter import AdapterConfig, OpticalAdapter

    vision_dim = encoder.cfg.out_dim
    if cfg.bench.adapter == "random":
        torch.manual_seed(cfg.runtime.seed)
        adapter = OpticalAdapter(AdapterConfig(vision_dim=vision_dim, llm_dim=llm_dim, max_pages=max(cfg.bench.max_pages, 1)))
    else:
        adapter = loading.load_adapter(cfg.bench.adapter, llm_dim=llm_dim, vision_dim=vision_dim, device=device)
    if adapter.config.max_pages < cfg.bench.max_pages:
        raise ConfigError(
            f"bench.max_pages={cfg.bench.max_pages} but the adapter has page embeddings for {adapter.config.max_pages} "
            f"pages; set bench.max_pages to at most {adapter.config.max_pages}"
        )
    return adapter.to(device=device, dtype=dtype).eval()

