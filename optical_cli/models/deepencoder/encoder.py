"""DeepEncoder: SAM -> CLIP (fed SAM maps) -> concat -> linear projector, plus the official
layout of a page's views into one token sequence.

State-dict names equal the official checkpoint's after dropping its leading ``model.``.
"""

from __future__ import annotations

import torch
from torch import nn

from .clip import ClipEncoder
from .config import DeepEncoderConfig
from .products import Linear
from .sam import SamEncoder


class Projector(nn.Module):
    def __init__(self, cfg: DeepEncoderConfig):
        super().__init__()
        self.layers = Linear(cfg.projector_in, cfg.out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DeepEncoder(nn.Module):
    def __init__(self, cfg: DeepEncoderConfig | None = None):
        super().__init__()
        self.cfg = cfg or DeepEncoderConfig()
        self.sam_model = SamEncoder(self.cfg)
        self.vision_model = ClipEncoder(self.cfg)
        self.projector = Projector(self.cfg)
        self.image_newline = nn.Parameter(torch.zeros(self.cfg.out_dim))
        self.view_seperator = nn.Parameter(torch.zeros(self.cfg.out_dim))  # official spelling
        # False when the weights came without the two layout vectors (community layout).
        self.layout_vectors_loaded = True

    def set_attention(self, mode: str) -> None:
        """How SAM applies its relative-position bias: mask, folded or flex (same results)."""
        self.sam_model.set_attention(mode)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Views [B,3,S,S] in [-1,1] -> projected features [B, (S/64)^2, out_dim]."""
        sam_maps = self.sam_model(pixels)
        clip_tokens = self.vision_model(sam_maps)
        joint = torch.cat([clip_tokens[:, 1:], sam_maps.flatten(2).transpose(1, 2)], dim=-1)
        return self.projector(joint)

    def arrange(
        self, tiles: torch.Tensor | None, grid: tuple[int, int], global_view: torch.Tensor, layout_tokens: bool
    ) -> torch.Tensor:
        """One page's token sequence: tile features first, then the global view's.

        ``tiles`` [cols*rows, n, D] in row-major tile order, ``grid`` = (cols, rows),
        ``global_view`` [n, D]. Without layout tokens the views are concatenated as they are.
        With them, as the DeepSeek decoder lays them out: the tiles stitched into one map,
        each map row followed by ``image_newline``, and ``view_seperator`` closing the page.
        """
        if not layout_tokens:
            parts = ([tiles.reshape(-1, tiles.shape[-1])] if tiles is not None else []) + [global_view]
            return torch.cat(parts, dim=0)
        if not self.layout_vectors_loaded:
            raise ValueError(
                "these weights carry no image_newline/view_seperator (community layout); set "
                "deepencoder.layout_tokens=false"
            )
        parts = []
        if tiles is not None:
            cols, rows = grid
            side = _side(tiles.shape[1])
            stitched = tiles.reshape(rows, cols, side, side, -1).permute(0, 2, 1, 3, 4)
            parts.append(self._rows_with_newlines(stitched.reshape(rows * side, cols * side, -1)))
        side = _side(global_view.shape[0])
        parts.append(self._rows_with_newlines(global_view.reshape(side, side, -1)))
        parts.append(self.view_seperator.to(global_view.dtype)[None])
        return torch.cat(parts, dim=0)

    def _rows_with_newlines(self, grid: torch.Tensor) -> torch.Tensor:
        h, _, d = grid.shape
        newline = self.image_newline.to(grid.dtype)[None, None].expand(h, 1, d)
        return torch.cat([grid, newline], dim=1).reshape(-1, d)


def _side(tokens: int) -> int:
    side = int(round(tokens**0.5))
    if side * side != tokens:
        raise ValueError(f"{tokens} tokens do not form a square view")
    return side


def count_parameters(model: nn.Module, layout_vectors: bool = False) -> int:
    names = {"image_newline", "view_seperator"}
    return sum(p.numel() for n, p in model.named_parameters() if layout_vectors or n not in names)
