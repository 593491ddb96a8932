"""CLIP-L/14 trunk of DeepEncoder, fed SAM's [B,1024,h,w] maps as its patch embeddings.

Parameter names follow the official checkpoint under ``model.vision_model.``. The CLIP
patch convolution is stored there but never used; it is kept so the file loads strictly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import DeepEncoderConfig
from .products import Linear
from .sam import add_residual


def resize_clip_pos(table: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[1+G*G, C] table -> [1+h*w, C]: the CLS row kept, the grid part resized bicubically
    (antialiased, in float32)."""
    cls_row, grid_rows = table[:1], table[1:]
    side = int(round(grid_rows.shape[0] ** 0.5))
    if (side, side) == (h, w):
        return table
    grid = grid_rows.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
    grid = grid.to(table.dtype).permute(0, 2, 3, 1).reshape(h * w, -1)
    return torch.cat([cls_row, grid], dim=0)


class Embeddings(nn.Module):
    def __init__(self, cfg: DeepEncoderConfig):
        super().__init__()
        self.class_embedding = nn.Parameter(torch.zeros(cfg.clip_dim))
        self.patch_embedding = nn.Conv2d(3, cfg.clip_dim, cfg.clip_patch_size, cfg.clip_patch_size, bias=False)
        self.position_embedding = nn.Embedding(cfg.clip_grid**2 + 1, cfg.clip_dim)

    def forward(self, sam_maps: torch.Tensor) -> torch.Tensor:
        """[B,C,h,w] -> [B,1+h*w,C]: the class embedding, then the maps' pixels, each plus its position row.

        Written into one tensor (no concatenation, then a second pass for the positions): the same sums."""
        b, _, h, w = sam_maps.shape
        patches = sam_maps.flatten(2).transpose(1, 2)
        table = resize_clip_pos(self.position_embedding.weight, h, w).to(patches.dtype)
        cls = self.class_embedding.to(patches.dtype)
        if torch.is_grad_enabled() and (cls.requires_grad or patches.requires_grad or table.requires_grad):
            return torch.cat([cls.expand(b, 1, -1), patches], dim=1) + table  # out= does not differentiate
        tokens = patches.new_empty(b, 1 + h * w, patches.shape[-1])
        tokens[:, 0] = cls + table[0]
        torch.add(patches, table[1:], out=tokens[:, 1:])
        return tokens


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv_proj = Linear(dim, dim * 3)
        self.out_proj = Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, dim = x.shape
        q, k, v = self.qkv_proj(x).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, dim))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.fc2 = Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        return self.fc2(torch.sigmoid(1.702 * x).mul_(x))  # quick_gelu: x * sigmoid(1.702 x), one fresh tensor


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.self_attn = SelfAttention(dim, heads)
        self.layer_norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = FeedForward(dim, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = add_residual(x, self.self_attn(self.layer_norm1(x)))
        return add_residual(x, self.mlp(self.layer_norm2(x)))


class Transformer(nn.Module):
    def __init__(self, cfg: DeepEncoderConfig):
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerBlock(cfg.clip_dim, cfg.clip_heads, cfg.clip_mlp_dim) for _ in range(cfg.clip_depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class ClipEncoder(nn.Module):
    """SAM maps [B,C,h,w] -> tokens [B, 1+h*w, C] (CLS first; no post-LayerNorm)."""

    def __init__(self, cfg: DeepEncoderConfig):
        super().__init__()
        self.embeddings = Embeddings(cfg)
        self.pre_layrnorm = nn.LayerNorm(cfg.clip_dim, eps=1e-5)  # official spelling
        self.transformer = Transformer(cfg)

    def forward(self, sam_maps: torch.Tensor) -> torch.Tensor:
        return self.transformer(self.pre_layrnorm(self.embeddings(sam_maps)))
