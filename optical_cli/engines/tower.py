"""The optical vision tower: DeepEncoder and the adapter as one module, as an engine runs them.

A page image becomes one square view for the configured mode (DeepEncoder's own preprocessing,
``models/deepencoder/preprocess.py``, with ``deepencoder.pixels``), the view becomes DeepEncoder
tokens (``DeepEncoder.arrange``: the layout tokens when configured), and the adapter maps them into
the language model's embedding space with the page's position in its document. This is the
vision tower of the vLLM model plugin (:mod:`optical_cli.engines.vllm_model`); it is plain PyTorch
so its parity with the hf engine's pieces (``DeepEncoderPages`` + the adapter) is tested
without vLLM.

:class:`PageSettings` is the ``optical`` block of an engine model directory's ``config.json``
(written by :mod:`optical_cli.engines.model_dir`): everything the tower and the plugin's processor
need to rebuild the same chain, and nothing that needs the weights.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable

import torch
from torch import nn

from ..errors import InputError
from ..models.adapter import PUBLISHED_LAYOUT, AdapterConfig, OpticalAdapter, PublishedAdapter
from ..models.deepencoder import DeepEncoder, DeepEncoderConfig
from ..models.deepencoder.preprocess import prepare
from ..models.deepencoder.runner import BatchRunner
from ..models.vlm import vision_grid
from ..modes import MODES

MODEL_FORMAT = "optical-model/1"
ENCODER_PREFIX, ADAPTER_PREFIX = "encoder.", "adapter."


def page_tokens(mode: str, layout_tokens: bool) -> int:
    """LLM positions one page takes: the view's tokens, or with layout tokens one newline per row
    and a closing separator (``DeepEncoder.arrange``)."""
    tokens = MODES[mode].tokens
    if not layout_tokens:
        return tokens
    side = math.isqrt(tokens)
    return side * (side + 1) + 1


@dataclass(frozen=True)
class PageSettings:
    """How a page becomes vision tokens (the ``optical`` block of the model directory's config)."""

    mode: str  # DeepEncoder mode: tiny | small | base | large (one view per page)
    pixels: str  # official | published (resolved: never auto)
    layout_tokens: bool
    attention: str  # SAM attention path (deepencoder.attention)
    encoder: dict  # DeepEncoderConfig fields (the architecture)
    adapter_layout: str  # optical | published
    adapter: dict  # AdapterConfig fields
    max_pages: int  # pages one request may hold (the adapter's page embeddings bound it)
    encode_batch_size: int  # views per DeepEncoder forward inside the engine
    merge: int = 2  # Qwen3-VL's spatial merge: image_grid_thw counts patches before it
    lora: str | None = None  # a PEFT LoRA directory inside the model directory, served for pages
    format: str = MODEL_FORMAT

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"mode {self.mode!r} has no single view per page; use one of {', '.join(MODES)}")
        if self.pixels not in ("official", "published"):
            raise InputError(f"pixels {self.pixels!r} must be resolved to official or published")

    @property
    def page_size(self) -> int:
        return MODES[self.mode].size

    @property
    def tokens_per_page(self) -> int:
        return page_tokens(self.mode, self.layout_tokens)

    @property
    def grid_thw(self) -> list[int]:
        """Qwen3-VL's ``image_grid_thw`` of one page (patches before the spatial merge): the grid
        our M-RoPE positions give it (``models.vlm.vision_grid``)."""
        rows, cols = vision_grid(self.tokens_per_page)
        return [1, rows * self.merge, cols * self.merge]

    def encoder_config(self) -> DeepEncoderConfig:
        fields = dict(self.encoder)
        fields["sam_global_blocks"] = tuple(fields.get("sam_global_blocks", ()))
        return DeepEncoderConfig(**fields)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PageSettings":
        if data.get("format") != MODEL_FORMAT:
            raise InputError(f"the model directory's optical settings are {data.get('format')!r}, not {MODEL_FORMAT}")
        return cls(**data)


def page_view(image, settings: PageSettings) -> torch.Tensor:
    """One page image (any PIL mode and size) -> its DeepEncoder view [3, S, S], float32."""
    return prepare(image, settings.mode, settings.pixels).views[0]


class OpticalTower(nn.Module):
    """Views [N, 3, S, S] -> adapted page embeddings [N, tokens_per_page, hidden].

    ``page_index`` [N] is each page's position in its document (the adapter's page embedding);
    ``multi_page`` [N] says whether its document has more than one page (the published adapter adds
    its page embedding only then). Pages of different requests can share one call."""

    def __init__(self, settings: PageSettings):
        super().__init__()
        self.settings = settings
        self.encoder = DeepEncoder(settings.encoder_config())
        adapter_class = PublishedAdapter if settings.adapter_layout == PUBLISHED_LAYOUT else OpticalAdapter
        self.adapter = adapter_class(AdapterConfig(**settings.adapter))
        self.encoder.set_attention(settings.attention)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "OpticalTower":
        """Always in inference mode: the published adapter keeps a Dropout (for its tensor names)
        that must never drop anything here, whoever calls ``train()``."""
        return super().train(False)

    @property
    def hidden_size(self) -> int:
        return self.adapter.config.llm_dim

    def forward(self, views: torch.Tensor, page_index: torch.Tensor, multi_page: torch.Tensor) -> torch.Tensor:
        parameter = next(self.encoder.parameters())
        runner = BatchRunner(self.encoder, self.settings.encode_batch_size, parameter.device, parameter.dtype)
        features = runner(views)  # [N, view tokens, vision_dim]
        pages = torch.stack(
            [self.encoder.arrange(None, (1, 1), view, self.settings.layout_tokens) for view in features]
        )
        page_index = page_index.to(pages.device, torch.long)
        if isinstance(self.adapter, PublishedAdapter):
            return self.adapter(pages, page_index, multi_page=multi_page.to(pages.device))
        return self.adapter(pages, page_index)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load ``encoder.*`` and ``adapter.*`` tensors strictly (every one present, none extra);
        returns the loaded names, as vLLM's weight loader expects of a module's ``load_weights``."""
        state = dict(weights)
        expected = self.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise InputError(
                f"optical tower weights do not match its settings: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        with torch.no_grad():
            for name, tensor in state.items():
                target = expected[name]
                if tuple(target.shape) != tuple(tensor.shape):
                    raise InputError(f"optical tower weight {name}: {tuple(tensor.shape)}, expected {target.shape}")
                target.copy_(tensor)
        return set(state)
