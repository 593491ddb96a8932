"""The optical adapter: DeepEncoder vision tokens (1280-d) -> a language model's embedding space.

Default shape is the published one: an MLP 1280 -> 3072 -> 2048 (GELU between), a LayerNorm
on the output and one learned embedding per page position (200 pages), 10,642,432
parameters. Every size is configurable so the same module serves any LLM hidden size.

Page embeddings start at zero so a fresh adapter treats every page alike until training
says otherwise (the published adapter left them random, which scrambled later pages).
Training starts the LayerNorm gain at the RMS of the LLM's token-embedding table
(:meth:`OpticalAdapter.set_output_scale`), so vision tokens enter at the scale of text tokens.

Saved as a plain ``.pth`` state dict (``torch.load(..., weights_only=True)`` reads it) and a
JSON sidecar with the dims and the training config; :func:`optical_cli.models.loading.load_adapter`
reads both back with strict checks.

:class:`PublishedAdapter` reads the published adapter (Volkopat/Qwen-VLM-Optical-Encoder,
``qwen3_vl_2b.pth``): a plain state dict with no sidecar, ``projection.0``/``projection.3``
(Linear, GELU, Dropout, Linear), ``layer_norm`` and ``page_embeddings``, whose forward adds
the page embedding before the LayerNorm and only when a document has more than one page.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..artifacts import atomic_path, atomic_write_json
from ..errors import InputError

SIDECAR_SUFFIX = ".json"
FORMAT = "optical-adapter/1"
OPTICAL_LAYOUT, PUBLISHED_LAYOUT = "optical", "published"


@dataclass(frozen=True)
class AdapterConfig:
    vision_dim: int = 1280  # DeepEncoder projector output
    hidden_dim: int = 3072  # MLP width
    llm_dim: int = 2048  # the LLM's embedding size (Qwen3-VL-2B: 2048)
    max_pages: int = 200  # page-position embeddings

    def __post_init__(self) -> None:
        for name in ("vision_dim", "hidden_dim", "llm_dim", "max_pages"):
            if getattr(self, name) < 1:
                raise InputError(f"adapter {name} must be a positive integer, got {getattr(self, name)}")


def _check_features(features: torch.Tensor, page_index: torch.Tensor | None, config: AdapterConfig) -> torch.Tensor:
    """The page positions of ``features`` [P, T, vision_dim] (default 0..P-1), checked against ``config``."""
    if features.ndim != 3 or features.shape[-1] != config.vision_dim:
        raise InputError(
            f"adapter expects features of shape [pages, tokens, {config.vision_dim}], got {list(features.shape)}"
        )
    if page_index is None:
        page_index = torch.arange(features.shape[0], device=features.device)
    if int(page_index.max()) >= config.max_pages:
        raise InputError(
            f"page index {int(page_index.max())} is beyond the adapter's {config.max_pages} page "
            "embeddings; truncate the document or train an adapter with a larger max_pages"
        )
    return page_index


class OpticalAdapter(nn.Module):
    """Maps per-page vision tokens ``[pages, tokens, vision_dim]`` to ``[pages, tokens, llm_dim]``."""

    layout = OPTICAL_LAYOUT

    def __init__(self, config: AdapterConfig = AdapterConfig()):
        super().__init__()
        self.config = config
        self.mlp = nn.Sequential(
            nn.Linear(config.vision_dim, config.hidden_dim),
            nn.GELU(),
            nn.Linear(config.hidden_dim, config.llm_dim),
        )
        self.norm = nn.LayerNorm(config.llm_dim)
        self.page_embed = nn.Embedding(config.max_pages, config.llm_dim)
        nn.init.zeros_(self.page_embed.weight)

    def forward(self, features: torch.Tensor, page_index: torch.Tensor | None = None) -> torch.Tensor:
        """``features`` [P, T, vision_dim]; ``page_index`` [P] (default 0..P-1) -> [P, T, llm_dim]."""
        page_index = _check_features(features, page_index, self.config)
        hidden = self.norm(self.mlp(features.to(self.mlp[0].weight.dtype)))
        return hidden + self.page_embed(page_index)[:, None, :]

    def set_output_scale(self, rms: float) -> None:
        """Start the output at the LLM's embedding scale (LayerNorm gain = RMS of its embedding table)."""
        with torch.no_grad():
            self.norm.weight.fill_(rms)


class PublishedAdapter(nn.Module):
    """The published adapter's module, under its own tensor names, reproducing its forward.

    Its page embedding is added before the LayerNorm, and only when the document has more
    than one page (a one-page document gets no page position at all). The published code
    runs it on one document at a time, so a call here is one document: ``features`` are its
    pages [P, T, vision_dim] in reading order.
    """

    layout = PUBLISHED_LAYOUT

    def __init__(self, config: AdapterConfig = AdapterConfig()):
        super().__init__()
        self.config = config
        self.projection = nn.Sequential(
            nn.Linear(config.vision_dim, config.hidden_dim),
            nn.GELU(),
            nn.Dropout(0.1),  # no weights; kept so the tensor names are the published ones
            nn.Linear(config.hidden_dim, config.llm_dim),
        )
        self.layer_norm = nn.LayerNorm(config.llm_dim)
        self.page_embeddings = nn.Embedding(config.max_pages, config.llm_dim)

    def forward(
        self, features: torch.Tensor, page_index: torch.Tensor | None = None, multi_page: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``multi_page`` [P] (bool): whether each page's document has more than one page, for pages
        of several documents in one call (an engine batching requests); default: one document, P > 1."""
        page_index = _check_features(features, page_index, self.config)
        hidden = self.projection(features.to(self.projection[0].weight.dtype))
        if multi_page is not None:
            hidden = hidden + self.page_embeddings(page_index)[:, None, :] * multi_page[:, None, None].to(hidden.dtype)
        elif features.shape[0] > 1:
            hidden = hidden + self.page_embeddings(page_index)[:, None, :]
        return self.layer_norm(hidden)

    @staticmethod
    def matches(state: dict) -> bool:
        """Whether a state dict has the published tensor names (and nothing of ours)."""
        return set(state) == PUBLISHED_KEYS

    @staticmethod
    def config_of(state: dict) -> AdapterConfig:
        """The dims a published-layout state dict was saved with (its shapes say them all)."""
        if any(state[name].ndim != 2 for name in ("projection.0.weight", "page_embeddings.weight")):
            raise InputError("a published-layout adapter needs 2-d projection.0.weight and page_embeddings.weight")
        hidden_dim, vision_dim = state["projection.0.weight"].shape
        max_pages, llm_dim = state["page_embeddings.weight"].shape
        return AdapterConfig(vision_dim=vision_dim, hidden_dim=hidden_dim, llm_dim=llm_dim, max_pages=max_pages)


PUBLISHED_KEYS = {
    "projection.0.weight",
    "projection.0.bias",
    "projection.3.weight",
    "projection.3.bias",
    "layer_norm.weight",
    "layer_norm.bias",
    "page_embeddings.weight",
}


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_suffix(SIDECAR_SUFFIX)


def save_adapter(adapter: OpticalAdapter, path: str | Path, training: dict[str, Any] | None = None) -> Path:
    """Write ``path`` (state dict, .pth) and its JSON sidecar, both atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in adapter.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    atomic_write_json(
        sidecar_path(path),
        {
            "format": FORMAT,
            "dims": asdict(adapter.config),
            "parameters": parameter_count(adapter),
            "training": training or {},
        },
    )
    return path


def read_sidecar(path: str | Path) -> dict[str, Any]:
    side = sidecar_path(path)
    if not side.is_file():
        raise InputError(
            f"adapter sidecar not found: {side}; `optical train-adapter` writes it next to the .pth "
            "(a .pth without one is read only in the published layout: projection.0/3, layer_norm, page_embeddings)"
        )
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
        dims = AdapterConfig(**meta["dims"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"adapter sidecar {side} is unreadable or incomplete ({exc}); re-save the adapter") from None
    meta["dims"] = dims
    return meta
