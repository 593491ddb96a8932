"""The optical reader as a vLLM model: Qwen3-VL's language model with DeepEncoder and the adapter
as its vision tower. vLLM imports this module itself (the architecture is registered by
:mod:`optical_cli.engines.vllm_plugin` as a string path), so it imports vLLM at its top: it is
vLLM code, never imported by the rest of the package.

- **Processor** (:class:`OpticalProcessor`): each image of a request is a page. It is turned into
  DeepEncoder's view for the configured mode (``models/deepencoder/preprocess.py``, the
  ``deepencoder.pixels`` convention of the directory) and its ``<|image_pad|>`` is expanded to the
  mode's vision tokens, with ``image_grid_thw`` = the grid our M-RoPE positions give a page
  (``models.vlm.vision_grid``: 8 x 8 tokens at tiny, 16 x 16 at base), so vLLM's Qwen3-VL positions
  are ours. A page's place in its document is part of what it encodes (the adapter's page
  embedding), so it is an item field (``page_index``, ``multi_page``) and part of the item's hash:
  vLLM's encoder cache and prefix caching reuse a page only at the same place, in a document of
  the same kind (one page or several, which the published adapter distinguishes).
- **Model** (:class:`OpticalQwen3VLForConditionalGeneration`): vLLM's Qwen3-VL with
  :class:`~optical_cli.engines.tower.OpticalTower` in place of Qwen's vision transformer; the
  pages of every scheduled request are encoded in one call (batched across requests). Deepstack:
  none. Qwen3-VL feeds its vision tower's intermediate layers into the first decoder layers; our
  chain has no such features, so the model declares zero deepstack levels (the language model
  gets exactly the adapted tokens, as in our own generate loop). Video is not served.
- **Counters** (:mod:`.vllm_metrics`, on the server's ``/metrics``): pages the processor found in
  vLLM's multimodal cache; pages the tower encoded and the seconds it took (vLLM's start-up
  profiling, one call on blank pages, is not counted).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from transformers import BatchFeature
from vllm.config import VllmConfig
from vllm.config.multimodal import MultiModalDummyOptions
from vllm.inputs import MultiModalDataDict, MultiModalHashes
from vllm.model_executor.models.qwen3_vl import (
    Qwen3LLMForCausalLM,
    Qwen3VLForConditionalGeneration,
)
from vllm.model_executor.models.utils import WeightsMapper, maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.hasher import MultiModalHasher
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import ImageEmbeddingItems, ImageProcessorItems, MultiModalDataItems
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
)
from vllm.multimodal.processing.inputs import ProcessorInputs
from vllm.tokenizers.registry import cached_tokenizer_from_config

from ..devices import synchronize
from ..models.vlm import IMAGE_PAD, VISION_END, VISION_START
from .tower import OpticalTower, PageSettings, page_view
from .vllm_metrics import page_cache_hits, pages_encoded

# processor keyword arguments that carry each missing item's place in the request (see
# OpticalProcessor._get_cache_missing_processor_kwargs)
PAGE_INDEX_KWARG, PAGE_COUNT_KWARG = "optical_page_index", "optical_page_count"


class OpticalProcessingInfo(BaseProcessingInfo):
    def settings(self) -> PageSettings:
        return PageSettings.from_dict(self.get_hf_config().optical)

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": self.settings().max_pages}

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        return {"image": self.settings().tokens_per_page}

    def image_pad_id(self) -> int:
        return int(self.get_hf_config().image_token_id)


class OpticalDummyInputs(BaseDummyInputsBuilder[OpticalProcessingInfo]):
    """Blank pages for vLLM's start-up profiling (every page costs the same)."""

    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return (VISION_START + IMAGE_PAD + VISION_END) * mm_counts.get("image", 0)

    def get_dummy_mm_data(
        self, seq_len: int, mm_counts: Mapping[str, int], mm_options: MultiModalDummyOptions | None = None
    ) -> MultiModalDataDict:
        size = self.info.settings().page_size
        return {"image": self._get_dummy_images(width=size, height=size, num_images=mm_counts.get("image", 0))}


class OpticalProcessor(BaseMultiModalProcessor[OpticalProcessingInfo]):
    """Pages -> DeepEncoder views (``pixel_values`` [pages, 3, S, S]), each page's grid and place."""

    def _get_mm_hashes(self, inputs: ProcessorInputs) -> MultiModalHashes:
        """Each page's hash covers its place: (image, page index, whether its document has more pages)."""
        hashes = dict(super()._get_mm_hashes(inputs))
        pages = hashes.get("image", [])
        algorithm = self.info.ctx.get_mm_config().mm_hasher_algorithm
        hashes["image"] = [
            MultiModalHasher.hash_kwargs(algorithm, mm_hash=item, page_index=index, multi_page=len(pages) > 1)
            for index, item in enumerate(pages)
        ]
        return hashes

    def _get_cache_missing_processor_kwargs(self, inputs: ProcessorInputs, mm_is_cached) -> Mapping[str, object]:
        """Only the pages missing from vLLM's processor cache are processed: tell the processor
        where each of them sits in the request."""
        cached = mm_is_cached.get("image", [])
        page_cache_hits(sum(1 for hit in cached if hit))
        return {
            **inputs.hf_processor_mm_kwargs,
            PAGE_INDEX_KWARG: [index for index, hit in enumerate(cached) if not hit],
            PAGE_COUNT_KWARG: len(cached),
        }

    def _apply_hf_processor_main(self, mm_items: MultiModalDataItems, hf_kwargs: Mapping[str, object]) -> BatchFeature:
        settings = self.info.settings()
        if "video" in mm_items:
            raise ValueError("this model reads page images; videos are not served")
        if isinstance(mm_items.get("image"), ImageEmbeddingItems):
            return self._adapted_pages(mm_items["image"], settings)
        images = mm_items.get_items("image", ImageProcessorItems) if "image" in mm_items else None
        count = 0 if images is None else len(images)
        indices = list(hf_kwargs.get(PAGE_INDEX_KWARG, range(count)))
        total = int(hf_kwargs.get(PAGE_COUNT_KWARG, count))
        if count == 0:
            return BatchFeature()
        views = []
        for number in range(count):
            try:
                views.append(page_view(images.get(number), settings))
            except (OSError, ValueError) as exc:
                raise ValueError(f"page {indices[number] + 1} is not a readable image ({exc})") from None
        return BatchFeature(
            {
                "pixel_values": torch.stack(views),
                "image_grid_thw": torch.tensor([settings.grid_thw] * count, dtype=torch.long),
                "page_index": torch.tensor(indices, dtype=torch.long),
                "multi_page": torch.tensor([total > 1] * count, dtype=torch.bool),
            }
        )

    @staticmethod
    def _adapted_pages(pages: ImageEmbeddingItems, settings: PageSettings) -> BatchFeature:
        """Pages already encoded and adapted by the caller (``vllm.pages: embeddings``), [tokens, hidden] each."""
        embeds = [pages.get(number) for number in range(pages.get_count())]
        for number, page in enumerate(embeds):
            if page.shape[0] != settings.tokens_per_page:
                raise ValueError(
                    f"page {number + 1} has {page.shape[0]} embeddings; "
                    f"this model's pages have {settings.tokens_per_page}"
                )
        return BatchFeature(
            {
                "image_embeds": torch.stack(embeds),
                "image_grid_thw": torch.tensor([settings.grid_thw] * len(embeds), dtype=torch.long),
            }
        )

    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        return dict(
            pixel_values=MultiModalFieldConfig.batched("image"),
            image_grid_thw=MultiModalFieldConfig.batched("image", keep_on_cpu=True),
            page_index=MultiModalFieldConfig.batched("image"),
            multi_page=MultiModalFieldConfig.batched("image"),
            image_embeds=MultiModalFieldConfig.batched("image"),
        )

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, Any],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        pad = self.info.image_pad_id()
        tokens = self.info.settings().tokens_per_page
        return [PromptReplacement(modality="image", target=[pad], replacement=[pad] * tokens)]


@MULTIMODAL_REGISTRY.register_processor(OpticalProcessor, info=OpticalProcessingInfo, dummy_inputs=OpticalDummyInputs)
class OpticalQwen3VLForConditionalGeneration(Qwen3VLForConditionalGeneration):
    """Qwen3-VL with the optical tower in place of its vision transformer (see the module's docstring)."""

    # the tower's tensors are stored as optical.encoder.* / optical.adapter.*; Qwen's own vision
    # tower in a real checkpoint's shards (model.visual.*) is skipped in load_weights
    hf_to_vllm_mapper = WeightsMapper(
        orig_to_new_prefix={
            "optical.": "visual.",
            "lm_head.": "language_model.lm_head.",
            "model.language_model.": "language_model.model.",
        }
    )
    supports_encoder_tp_data = False  # the tower runs whole on each rank
    supports_tower_connector_lora = False  # a LoRA adapts the language model only
    supports_mm_device_do_normalize = False  # pages are normalised by our processor

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "model"):
        nn.Module.__init__(self)
        config = vllm_config.model_config.hf_config
        multimodal_config = vllm_config.model_config.get_multimodal_config()
        self.config = config
        self.model_config = vllm_config.model_config
        self._tokenizer = cached_tokenizer_from_config(vllm_config.model_config)
        self.multimodal_config = multimodal_config
        self.use_data_parallel = False
        self._init_video_pruning(multimodal_config)
        self.settings = PageSettings.from_dict(config.optical)
        with self._mark_tower_model(vllm_config, "image"):
            self.visual = OpticalTower(self.settings)
        self.use_deepstack = False  # our chain has no deepstack features (see the module's docstring)
        self.deepstack_num_level = 0
        self.visual_dim = config.text_config.hidden_size
        self.multiscale_dim = 0
        with self._mark_language_model(vllm_config):
            self.language_model = Qwen3LLMForCausalLM(
                vllm_config=vllm_config.with_hf_config(config.text_config, architectures=["Qwen3ForCausalLM"]),
                prefix=maybe_prefix(prefix, "language_model"),
            )
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors
        # vLLM's start-up profiling encodes one batch of blank pages first (unless it is skipped): not counted
        self._profiled = bool(getattr(multimodal_config, "skip_mm_profiling", False))

    def embed_multimodal(self, **kwargs: object) -> tuple[torch.Tensor, ...] | None:
        """The pages of every scheduled request at once -> one [tokens, hidden] tensor per page
        (pages sent already adapted pass through as they are)."""
        parameter = next(self.language_model.parameters())
        if kwargs.get("image_embeds") is not None:
            return tuple(page.to(parameter.device, parameter.dtype) for page in _stacked(kwargs["image_embeds"]))
        views = kwargs.get("pixel_values")
        if views is None:
            return None
        views = _stacked(views)
        page_index = _stacked(kwargs["page_index"]).reshape(-1)
        multi_page = _stacked(kwargs["multi_page"]).reshape(-1)
        start = time.perf_counter()
        with torch.inference_mode():
            pages = self.visual(views.to(parameter.device, parameter.dtype), page_index, multi_page)
        if self._profiled:
            synchronize(parameter.device)
            pages_encoded(int(views.shape[0]), time.perf_counter() - start)
        self._profiled = True
        return tuple(pages.to(parameter.dtype))

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return super().load_weights((name, tensor) for name, tensor in weights if not name.startswith("model.visual."))


def _stacked(value) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.stack(list(value))
