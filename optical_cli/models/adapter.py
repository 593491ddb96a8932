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


@dataclass(frozen=True)
class AdapterConfig:
    vision_dim: int = 1280   # DeepEncoder projector output
    hidden_dim: int = 3072   # MLP width
    llm_dim: int = 2048      # the LLM's embedding size (Qwen3-VL-2B: 2048)
    max_pages: int = 200     # page-position embeddings

    def __post_init__(self) -> None:
        for name in ("vision_dim", "hidden_dim", "llm_dim", "max_pages"):
            if getattr(self, name) < 1:
                raise InputError(f"adapter {name} must be a positive integer, got {getattr(self, name)}")


class OpticalAdapter(nn.Module):
    """Maps per-page vision tokens ``[pages, tokens, vision_dim]`` to ``[pages, tokens, llm_dim]``."""

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
        if features.ndim != 3 or features.shape[-1] != self.config.vision_dim:
            raise InputError(
                f"adapter expects features of shape [pages, tokens, {self.config.vision_dim}], "
                f"got {list(features.shape)}"
            )
        if page_index is None:
            page_index = torch.arange(features.shape[0], device=features.device)
        if int(page_index.max()) >= self.config.max_pages:
            raise InputError(
                f"page index {int(page_index.max())} is beyond the adapter's {self.config.max_pages} page "
                "embeddings; truncate the document or train an adapter with a larger max_pages"
            )
        hidden = self.norm(self.mlp(features.to(self.mlp[0].weight.dtype)))
        return hidden + self.page_embed(page_index)[:, None, :]

    def set_output_scale(self, rms: float) -> None:
        """Start the output at the LLM's embedding scale (LayerNorm gain = RMS of its embedding table)."""
        with torch.no_grad():
            self.norm.weight.fill_(rms)


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
        raise InputError(f"adapter sidecar not found: {side}; it is written next to the .pth by save_adapter")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
        dims = AdapterConfig(**meta["dims"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"adapter sidecar {side} is unreadable or incomplete ({exc}); re-save the adapter") from None
    meta["dims"] = dims
    return meta
