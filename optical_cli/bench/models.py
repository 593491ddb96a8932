"""The real reader: Qwen3-VL reading text, or pages through DeepEncoder and the adapter.

Every weight comes through ``models/loading.py``; this module only puts the pieces behind
the benchmark's :class:`~optical_cli.bench.reader.Reader` protocol:

- text conditions: ``VisionLanguageReader.generate(document_text=...)`` with the chat template;
- optical: the document is laid out into pages (all of them, cheap), the pages kept by the
  middle truncation are drawn, encoded by DeepEncoder in batches (one forward per batch of
  views), adapted and spliced between vision markers inside the same user turn.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Sequence

import torch

from ..devices import resolve_device, resolve_dtype, synchronize
from ..errors import ConfigError
from ..models.adapter import load_adapter
from ..models.lora import load_lora
from ..models.model_dirs import engine_model_dir
from ..models.tokenizers import QWEN_TIKTOKEN, load_chat_tokenizer
from .prompts import PromptParts, middle_truncate
from .reader import ContextExceeded, Generation

# <|im_start|>user\n ... <|im_end|>\n<|im_start|>assistant\n around the user content, plus the
# newline between document and question: counted exactly by the chat layout, bounded here.
CHAT_OVERHEAD_TOKENS = 16


class QwenOpticalReader:
    """Implements the benchmark's Reader protocol over the project's models."""

    def __init__(
        self,
        vlm,
        *,
        renderer=None,
        encoder=None,
        random_weights: bool,
        description: str,
        conventions: dict[str, str] | None = None,
    ):
        from ..models.adapter import parameter_count

        self.vlm = vlm  # models.vlm.VisionLanguageReader
        self.renderer = renderer  # render.PageRenderer at the encoder's page size
        self.encoder = encoder  # train.DeepEncoderPages: the frozen encoder of `optical encode`
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

    def read_text(self, prompt: PromptParts, *, max_new_tokens: int, temperature: float, seed: int) -> Generation:
        from ..models.lora import has_lora, lora_disabled

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
            )
        return Generation(text, stats["input_tokens"], stats["prefill_s"], stats["decode_s"])

    # -- pages -----------------------------------------------------------------------------
    def render(self, text: str, max_pages: int) -> tuple[list[Any], int]:
        page_lines, _, _ = self.renderer.layout(text)
        kept, _ = middle_truncate(page_lines, max_pages)
        return [self.renderer.draw(lines) for lines in kept], len(page_lines)

    def vision_tokens(self, pages: Sequence[Any]) -> int:
        if self._tokens_per_page is None and pages:
            self._tokens_per_page = int(self._encode(pages[:1]).shape[1])
        return len(pages) * (self._tokens_per_page or 0)

    def warm_up(self) -> None:
        """Load lazily loaded weights and run each model once, so the first item's timings
        measure reading, not loading or kernel set-up; learns the tokens per page."""
        self.vlm.generate(question_prompt="Say OK.", max_new_tokens=2, temperature=0.0)
        if self.encoder is not None:
            self.vision_tokens([self.renderer.draw(["warm-up"])])

    def _encode(self, pages: Sequence[Any]) -> torch.Tensor:
        """Pages -> DeepEncoder features [pages, tokens, vision_dim] (views batched, as `optical encode`)."""
        return self.encoder.encode(list(pages))

    def read_pages(
        self, prompt: PromptParts, pages: Sequence[Any], *, max_new_tokens: int, temperature: float, seed: int
    ) -> Generation:
        self._check_length(
            self.vision_tokens(pages) + 2 * len(pages) + len(self.encode_text(prompt.preamble + prompt.question))
        )
        start = time.perf_counter()
        features = self._encode(pages)
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
        )
        return Generation(
            text,
            stats["input_tokens"],
            stats["prefill_s"],
            stats["decode_s"],
            encode_s=encode_s,
            adapter_s=stats["adapter_s"],
        )


def build_reader(cfg, conditions: Sequence[str]):
    """Load what the chosen conditions need: pages and the encoder for optical and
    native-matched (whose budget is the pages' token count), the adapter for optical only, and
    the language model on the configured engine (``bench.engine``: ``hf`` -> QwenOpticalReader,
    ``vllm`` -> engines.vllm.VLLMReader; everything but the language model is shared).

    A trained adapter loads first (a missing or malformed one fails before gigabytes of models
    load); its layout decides ``deepencoder.pixels: auto`` (published layout: the published
    page preprocessing)."""
    from ..models import loading
    from ..models.adapter import OPTICAL_LAYOUT, adapter_location
    from ..models.deepencoder.preprocess import resolve_pixels
    from ..models.lora import lora_beside

    optical = "optical" in conditions
    if optical and cfg.bench.adapter is None:  # before any weights load
        raise ConfigError(
            "bench.adapter is not set: the optical condition needs an adapter; train one with `optical train-adapter` "
            "and pass --set bench.adapter=RUN_DIR, or leave optical out of --conditions"
        )
    vllm = cfg.bench.engine == "vllm"
    if vllm:
        from .engines.vllm import require_vllm

        require_vllm()
    device = resolve_device(cfg.runtime.device)
    dtype = resolve_dtype(cfg.runtime.dtype, device)
    trained = optical and cfg.bench.adapter != "random"
    adapter = load_adapter(cfg.bench.adapter) if trained else None
    local = trained and not str(cfg.bench.adapter).startswith(loading.HUB_FILE_SCHEME)
    lora_dir = (
        lora_beside(adapter_location(cfg.bench.adapter)) if local else None
    )  # trained with the adapter: the optical reader uses both
    if vllm:
        engine, tokenizer, lm_parameters = _vllm_language_model(cfg, device, dtype, lora_dir)
        hidden_size, vlm = engine.hidden_size, None
    else:
        from ..models.vlm import VisionLanguageReader

        vlm = VisionLanguageReader.from_config(cfg.vlm, device, dtype, seed=cfg.runtime.seed)
        hidden_size = vlm.hidden_size
    random_weights = cfg.vlm.source == loading.RANDOM_SOURCE
    parts = [f"vlm={cfg.vlm.source}"] + ([f"engine=vllm {engine.version}"] if vllm else [])
    conventions: dict[str, str] = {}
    renderer = encoder = None
    if optical or "native-matched" in conditions:
        from ..render import PageRenderer
        from ..train import DeepEncoderPages

        layout = adapter.layout if adapter is not None else OPTICAL_LAYOUT
        pixels = resolve_pixels(cfg.deepencoder.pixels, layout if optical else None)
        section = cfg.deepencoder.model_copy(update={"pixels": pixels})
        # pages are drawn at the encoder's own size, as train-adapter draws them
        renderer = PageRenderer(cfg.render.model_copy(update={"mode": cfg.deepencoder.mode}))
        encoder = DeepEncoderPages(section, cfg.runtime, device, cfg.bench.encode_batch_size)
        random_weights = random_weights or cfg.deepencoder.weights == "random"
        parts.append(f"deepencoder={cfg.deepencoder.weights} ({cfg.deepencoder.mode}, {pixels} pixels)")
        conventions["pixels"] = pixels
    if optical:
        adapter = _fit_adapter(cfg, adapter, encoder.out_dim, hidden_size, device, dtype)
        random_weights = random_weights or cfg.bench.adapter == "random"
        parts.append(f"adapter={cfg.bench.adapter} ({adapter.layout} layout)")
        conventions["adapter_layout"] = adapter.layout
        if lora_dir is not None:
            if not vllm:  # vLLM loaded it with the model
                load_lora(vlm.model, lora_dir)
                vlm.model.to(device=device, dtype=dtype)
            parts.append(f"lora={lora_dir}")
    else:
        adapter = None
    if vllm:
        from ..models.adapter import parameter_count
        from .engines.vllm import VLLMReader, lora_parameters

        parameters = {
            "deepencoder": None if encoder is None else encoder.parameter_count(),
            "adapter": None if adapter is None else parameter_count(adapter),
            "language_model": lm_parameters,
        }
        if lora_dir is not None:
            parameters["lora"] = lora_parameters(lora_dir)
        reader = VLLMReader(
            engine,
            tokenizer,
            adapter=adapter,
            renderer=renderer,
            encoder=encoder,
            random_weights=random_weights,
            description=", ".join(parts),
            conventions=conventions,
            parameters=parameters,
            device=device,
        )
    else:
        from ..models.vlm import VisionLanguageReader

        if adapter is not None:
            vlm = VisionLanguageReader(vlm.model, vlm.tokenizer, adapter)
        reader = QwenOpticalReader(
            vlm,
            renderer=renderer,
            encoder=encoder,
            random_weights=random_weights,
            description=", ".join(parts),
            conventions=conventions,
        )
    reader.warm_up()
    return reader


def _vllm_language_model(cfg, device: torch.device, dtype: torch.dtype, lora_dir=None):
    """(engine, chat tokenizer, language-model parameters) for ``bench.engine: vllm``: the model
    directory from loading.py (random weights saved once, the same the hf engine builds), with the
    LoRA in ``lora_dir`` (train-adapter's PEFT ``lora/``, in the checkpoint's names) served for pages."""
    from ..models import loading
    from .engines.vllm import VLLMEngine, language_model_parameters, vllm_version

    tokenizer_source = cfg.vlm.tokenizer
    if tokenizer_source == "auto":
        tokenizer_source = QWEN_TIKTOKEN if cfg.vlm.source == loading.RANDOM_SOURCE else cfg.vlm.source
    model_dir, tokenizer_dir = engine_model_dir(
        cfg.vlm.source, tokenizer_source, cfg.vlm.random.model_dump(), seed=cfg.runtime.seed
    )
    if cfg.vllm.dtype != "auto":
        dtype = resolve_dtype(cfg.vllm.dtype, device)
    engine = VLLMEngine(
        model_dir,
        cfg.vllm,
        dtype,
        tokenizer_dir=tokenizer_dir,
        seed=cfg.runtime.seed,
        max_pages=cfg.bench.max_pages,
        device=device,
        lora_dir=lora_dir,
    )
    engine.version = vllm_version()
    return engine, load_chat_tokenizer(tokenizer_source), language_model_parameters(model_dir)


def _fit_adapter(cfg, adapter, vision_dim: int, llm_dim: int, device: torch.device, dtype: torch.dtype):
    """The loaded adapter checked against the models it joins, or a seeded random one."""
    from ..errors import InputError
    from ..models.adapter import AdapterConfig, OpticalAdapter

    if adapter is None:  # bench.adapter: random
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.runtime.seed)
            adapter = OpticalAdapter(
                AdapterConfig(vision_dim=vision_dim, llm_dim=llm_dim, max_pages=cfg.bench.max_pages)
            )
    for what, wanted, found in (
        ("language model's hidden size", llm_dim, adapter.config.llm_dim),
        ("encoder's vision-token width", vision_dim, adapter.config.vision_dim),
    ):
        if wanted != found:
            raise InputError(
                f"adapter {cfg.bench.adapter} has width {found} where the {what} is {wanted}; "
                "use an adapter trained for these models"
            )
    if adapter.config.max_pages < cfg.bench.max_pages:
        raise ConfigError(
            f"bench.max_pages={cfg.bench.max_pages} but the adapter has page embeddings for {adapter.config.max_pages} "
            f"pages; set bench.max_pages to at most {adapter.config.max_pages}"
        )
    return adapter.to(device=device, dtype=dtype).eval()
