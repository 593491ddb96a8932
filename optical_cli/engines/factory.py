"""The one place an engine is chosen: :func:`build_reader` turns a :class:`~.chain.ChainSpec`
(``bench longbench``'s config, or ``serve``/``ask``'s) into the Reader of ``spec.engine``."""

from __future__ import annotations

import time
from typing import Sequence

import torch

from ..devices import resolve_device, resolve_dtype, synchronize
from ..encode.page_cache import with_page_cache
from ..models.adapter import AdapterConfig, OpticalAdapter, PublishedAdapter, parameter_count
from ..models.deepencoder import DeepEncoder, count_parameters
from ..models.deepencoder.runner import DeepEncoderPages
from ..models.lora import load_lora
from ..models.tokenizers import load_chat_tokenizer
from ..models.vlm import VisionLanguageReader
from ..render.pages import PageRenderer
from .chain import RANDOM, ChainSpec, adapter_layout, fit_adapter
from .hf import HFReader
from .model_dir import cached_model_dir
from .tower import PageSettings
from .vllm import VLLMEngine, VLLMReader, language_model_parameters, lora_parameter_count
from .vllm_import import require_vllm, vllm_version

OPTICAL, NATIVE_MATCHED = "optical", "native-matched"


def build_reader(spec: ChainSpec, conditions: Sequence[str]):
    """Load what the conditions need (pages and the encoder for optical and native-matched, whose
    budget is the pages' token count; the adapter for optical) on ``spec.engine``, warmed up.
    A trained adapter is checked before any large model loads."""
    optical = OPTICAL in conditions
    if optical:
        spec.require_adapter()
    if spec.engine == "vllm":
        require_vllm()
    device = resolve_device(spec.runtime.device)
    dtype = resolve_dtype(spec.runtime.dtype, device)
    pages = optical or NATIVE_MATCHED in conditions
    if spec.engine == "vllm":
        reader = _vllm_reader(spec, optical, pages, device, dtype)
    else:
        reader = _hf_reader(spec, optical, pages, device, dtype)
    reader.warm_up()
    return reader


def _page_renderer(spec: ChainSpec) -> PageRenderer:
    """Pages are drawn at the encoder's own size, as train-adapter draws them."""
    return PageRenderer(spec.render.model_copy(update={"mode": spec.deepencoder.mode}))


def _hf_reader(spec: ChainSpec, optical: bool, pages: bool, device: torch.device, dtype: torch.dtype) -> HFReader:
    trained = spec.load_trained_adapter() if optical else None
    lora_dir = spec.lora_dir() if optical else None  # trained with the adapter: the optical reader uses both
    vlm = VisionLanguageReader.from_config(spec.vlm, device, dtype, seed=spec.runtime.seed)
    parts = [f"vlm={spec.vlm.source}"]
    conventions: dict[str, str] = {}
    renderer = encoder = None
    if pages:
        pixels = spec.pixels(adapter_layout(trained) if optical else None)
        section = spec.deepencoder.model_copy(update={"pixels": pixels})
        renderer = _page_renderer(spec)
        encoder = with_page_cache(
            DeepEncoderPages(section, spec.runtime, device, spec.encode_batch_size), spec.page_cache
        )
        parts.append(f"deepencoder={spec.deepencoder.weights} ({spec.deepencoder.mode}, {pixels} pixels)")
        conventions["pixels"] = pixels
    if optical:
        adapter = fit_adapter(spec, trained, encoder.out_dim, vlm.hidden_size).to(device=device, dtype=dtype).eval()
        parts.append(f"adapter={spec.adapter} ({adapter.layout} layout)")
        conventions["adapter_layout"] = adapter.layout
        if lora_dir is not None:
            load_lora(vlm.model, lora_dir)
            vlm.model.to(device=device, dtype=dtype)
            parts.append(f"lora={lora_dir}")
        vlm = VisionLanguageReader(vlm.model, vlm.tokenizer, adapter)
    return HFReader(
        vlm,
        renderer=renderer,
        encoder=encoder,
        random_weights=_random_weights(spec, optical, pages),
        description=", ".join(parts),
        conventions=conventions,
        loop_guard=spec.loop_guard,
    )


def _vllm_reader(spec: ChainSpec, optical: bool, pages: bool, device: torch.device, dtype: torch.dtype) -> VLLMReader:
    """The model directory of ``spec`` (written once into the cache) on vLLM's offline engine. The
    directory always holds the tower; reads without pages never run it (a run without an adapter
    builds it with a random one)."""
    directory_spec = spec if spec.adapter is not None else _with_random_adapter(spec)
    model_dir = cached_model_dir(directory_spec)
    if spec.vllm.dtype != "auto":
        dtype = resolve_dtype(spec.vllm.dtype, device)
    engine = VLLMEngine(model_dir, spec.vllm, dtype, seed=spec.runtime.seed, device=device)
    settings = engine.settings
    parts = [f"vlm={spec.vlm.source}", f"engine=vllm {vllm_version()}"]
    conventions: dict[str, str] = {}
    parameters = {"deepencoder": None, "adapter": None, "language_model": language_model_parameters(model_dir)}
    if pages:
        parts.append(f"deepencoder={spec.deepencoder.weights} ({settings.mode}, {settings.pixels} pixels)")
        conventions["pixels"] = settings.pixels
        parameters["deepencoder"] = _encoder_parameters(settings)
    if optical:
        parts.append(f"adapter={spec.adapter} ({settings.adapter_layout} layout)")
        conventions["adapter_layout"] = settings.adapter_layout
        parameters["adapter"] = _adapter_parameters(settings)
        if settings.lora:
            parts.append(f"lora={spec.lora_dir()}")
            parameters["lora"] = lora_parameter_count(model_dir / settings.lora)
    embed_pages = None
    if optical and spec.vllm.pages == "embeddings":
        embed_pages = _page_embedder(spec, settings, device, dtype)
        parts.append("pages as embeddings")
    return VLLMReader(
        engine,
        load_chat_tokenizer(spec.tokenizer_source()),
        renderer=_page_renderer(spec) if pages else None,
        random_weights=_random_weights(spec, optical, pages),
        description=", ".join(parts),
        conventions=conventions,
        parameters=parameters,
        device=device,
        embed_pages=embed_pages,
        loop_guard=spec.loop_guard,
    )


class PageEmbedder:
    """``vllm.pages: embeddings``: pages encoded by DeepEncoder and adapted in this process (the
    hf engine's pieces) -> (embeddings [P, tokens, hidden] on the CPU, encode s, adapter s)."""

    def __init__(self, encoder: DeepEncoderPages, adapter):
        self.encoder, self.adapter = encoder, adapter

    def __call__(self, pages: list) -> tuple[torch.Tensor, float, float]:
        start = time.perf_counter()
        features = self.encoder.encode(list(pages))
        encode_s = time.perf_counter() - start
        start = time.perf_counter()
        device = next(self.adapter.parameters()).device
        with torch.no_grad():
            embeds = self.adapter(features.to(device))
        synchronize(device)
        return embeds.float().cpu(), encode_s, time.perf_counter() - start


def _page_embedder(spec: ChainSpec, settings: PageSettings, device: torch.device, dtype: torch.dtype) -> PageEmbedder:
    """The same encoder and adapter as the model directory's tower, in this process."""
    section = spec.deepencoder.model_copy(update={"pixels": settings.pixels})
    encoder = with_page_cache(DeepEncoderPages(section, spec.runtime, device, spec.encode_batch_size), spec.page_cache)
    adapter = fit_adapter(spec, spec.load_trained_adapter(), encoder.out_dim, settings.adapter["llm_dim"])
    return PageEmbedder(encoder, adapter.to(device=device, dtype=dtype).eval())


def _with_random_adapter(spec: ChainSpec) -> ChainSpec:
    fields = dict(vars(spec))
    fields["adapter"] = RANDOM
    return ChainSpec(**fields)


def _random_weights(spec: ChainSpec, optical: bool, pages: bool) -> bool:
    return (
        spec.random_language_model
        or (pages and spec.deepencoder.weights == RANDOM)
        or (optical and spec.adapter == RANDOM)
    )


def _encoder_parameters(settings: PageSettings) -> int:
    with torch.device("meta"):
        return count_parameters(DeepEncoder(settings.encoder_config()))


def _adapter_parameters(settings: PageSettings) -> int:
    layout = PublishedAdapter if settings.adapter_layout == PublishedAdapter.layout else OpticalAdapter
    with torch.device("meta"):
        return parameter_count(layout(AdapterConfig(**settings.adapter)))
