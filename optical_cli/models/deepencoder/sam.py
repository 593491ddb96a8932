"""SAM ViT-B image trunk of DeepEncoder: windowed/global attention with decomposed relative
positions, then the neck and two stride-2 convolutions (16x fewer tokens than patches).

Parameter names follow the official checkpoint under ``model.sam_model.``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import ATTENTION_MODES, AUTO, attend, decomposed_rel_pos
from .config import DeepEncoderConfig
from .products import Linear, linear


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a [B,C,H,W] map."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


def reduced_precision(x: torch.Tensor) -> bool:
    """float32 runs the official arithmetic (bit for bit); bfloat16 and float16 run SAM's convolutions as
    matrix products over channels-last maps and its LayerNorm2d as one fused layer norm: the same function,
    rounded differently, held to the accuracy contract in tests/test_deepencoder_precision.py."""
    return x.dtype in (torch.bfloat16, torch.float16)


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B,3,S,S] -> [B,S/p,S/p,C]."""
        if not reduced_precision(x):
            return self.proj(x).permute(0, 2, 3, 1)
        # stride = kernel: the patches do not overlap, so the convolution is one matrix product over them
        # (CPUs without bfloat16 convolution kernels otherwise fall back to a slow generic one)
        b, c, height, width = x.shape
        p = self.proj.kernel_size[0]
        patches = x.reshape(b, c, height // p, p, width // p, p).permute(0, 2, 4, 1, 3, 5)
        patches = patches.reshape(b, height // p, width // p, c * p * p)
        return linear(patches, self.proj.weight.reshape(self.proj.out_channels, -1), self.proj.bias)


def resize_abs_pos(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """The [1,G,G,C] table resized to [1,grid,grid,C]: bicubic, antialiased, in float32."""
    if pos.shape[1] == grid:
        return pos
    table = pos.permute(0, 3, 1, 2).float()
    table = F.interpolate(table, size=(grid, grid), mode="bicubic", antialias=True, align_corners=False)
    return table.to(pos.dtype).permute(0, 2, 3, 1)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, rel_pos_len: int):
        super().__init__()
        self.heads = heads
        self.qkv = Linear(dim, dim * 3, bias=True)
        self.proj = Linear(dim, dim)
        head_dim = dim // heads
        self.rel_pos_h = nn.Parameter(torch.zeros(rel_pos_len, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(rel_pos_len, head_dim))
        self.mode = "mask"

    def forward(self, x: torch.Tensor, window: int = 0) -> torch.Tensor:
        """``x`` [B,H,W,C] -> [B,H,W,C]: global attention, or within ``window`` x ``window`` windows.

        Windowed blocks pad the grid to a multiple of the window. The official code pads the
        normalised tokens with zeros before this layer, so a padded token's q/k/v are the qkv bias
        and its output is cropped away; here q/k/v are computed on the real tokens only and written
        straight into the windows' head-major layout (padding: the qkv bias), and the attention
        output goes straight back to the cropped grid: one copy each way, the same numbers, 16%
        fewer rows through qkv and proj at 1024 px (64x64 grid padded to 70x70).
        """
        b, h, w, dim = x.shape
        qkv = self.qkv(x)
        if window:
            # q, k, v contiguous [views, heads, tokens, head_dim]: a strided q makes the bias terms
            # strided too, and building the mask from those costs a copy of the whole mask
            q, k, v = windows_from_grid(qkv, window, self.heads, self.qkv.bias).unbind(0)
            grid = (window, window)
        else:
            q, k, v = qkv.view(b, h * w, 3, self.heads, -1).permute(2, 0, 3, 1, 4).contiguous().unbind(0)
            grid = (h, w)
        rel_h, rel_w = decomposed_rel_pos(q, self.rel_pos_h, self.rel_pos_w, *grid)
        out = attend(self.mode, q, k, v, rel_h, rel_w)
        if window:
            out = grid_from_windows(out, (b, h, w), window)
        else:
            out = out.transpose(1, 2).reshape(b, h, w, dim)
        return self.proj(out)


def _window_pieces(size: int, window: int) -> list[tuple[int, int, int]]:
    """A grid side cut into (first window, windows, rows of each inside the grid): whole windows, then the
    one the grid ends inside (its remaining rows are padding)."""
    whole, rest = divmod(size, window)
    return [(0, whole, window)] * bool(whole) + [(whole, 1, rest)] * bool(rest)


def windows_from_grid(qkv: torch.Tensor, window: int, heads: int, pad_value: torch.Tensor) -> torch.Tensor:
    """qkv [B,H,W,3C] -> [3, B*windows, heads, window*window, head_dim] in one pass, H and W padded up to
    multiples of ``window`` with ``pad_value`` [3C] (windows row-major per view, as the official partition)."""
    b, h, w, width = qkv.shape
    head_dim = width // (3 * heads)
    rows, cols = -(-h // window), -(-w // window)
    out = qkv.new_empty(3, b, rows, cols, heads, window, window, head_dim)
    grid = out.permute(1, 2, 5, 3, 6, 0, 4, 7)  # [B, rows, window, cols, window, 3, heads, head_dim]: a view
    source = qkv.view(b, h, w, 3, heads, head_dim)
    for r0, nr, hr in _window_pieces(h, window):
        for c0, nc, wc in _window_pieces(w, window):
            part = source[:, r0 * window : r0 * window + nr * hr, c0 * window : c0 * window + nc * wc]
            grid[:, r0 : r0 + nr, :hr, c0 : c0 + nc, :wc] = part.view(b, nr, hr, nc, wc, 3, heads, head_dim)
    fill = pad_value.to(qkv.dtype).view(3, heads, head_dim)
    if h % window:
        grid[:, -1, h % window :] = fill
    if w % window:
        grid[:, :, :, -1, w % window :] = fill
    return out.view(3, b * rows * cols, heads, window * window, head_dim)


def grid_from_windows(windows: torch.Tensor, size: tuple[int, int, int], window: int) -> torch.Tensor:
    """Attention output [B*windows, heads, window*window, head_dim] -> [B,H,W,heads*head_dim], padding
    dropped, in one pass."""
    b, h, w = size
    heads, head_dim = windows.shape[1], windows.shape[3]
    rows, cols = -(-h // window), -(-w // window)
    grid = windows.view(b, rows, cols, heads, window, window, head_dim).permute(0, 1, 4, 2, 5, 3, 6)
    out = windows.new_empty(b, h, w, heads, head_dim)
    for r0, nr, hr in _window_pieces(h, window):
        for c0, nc, wc in _window_pieces(w, window):
            part = out[:, r0 * window : r0 * window + nr * hr, c0 * window : c0 * window + nc * wc]
            part.view(b, nr, hr, nc, wc, heads, head_dim).copy_(grid[:, r0 : r0 + nr, :hr, c0 : c0 + nc, :wc])
    return out.view(b, h, w, heads * head_dim)


class MLPBlock(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.lin1 = Linear(dim, hidden)
        self.lin2 = Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(F.gelu(self.lin1(x)))  # exact (erf) GELU


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_dim: int, window: int, grid: int):
        super().__init__()
        self.window = window  # 0 = global attention
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, 2 * (window or grid) - 1)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = add_residual(x, self.attn(self.norm1(x), self.window))
        return add_residual(x, self.mlp(self.norm2(x)))


def add_residual(x: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
    """``x + update``, in place where nothing records ``x`` for a backward pass (no fresh page-sized
    tensor per block; the same sums)."""
    if x.requires_grad or update.requires_grad:
        return x + update
    return x.add_(update)


class SamEncoder(nn.Module):
    """pixels [B,3,S,S] -> maps [B, sam_out_dim, S/64, S/64]."""

    def __init__(self, cfg: DeepEncoderConfig):
        super().__init__()
        grid = cfg.sam_grid
        self.patch_embed = PatchEmbed(cfg.sam_patch_size, cfg.sam_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, cfg.sam_dim))
        mlp_dim = int(cfg.sam_dim * cfg.sam_mlp_ratio)
        self.blocks = nn.ModuleList(
            Block(cfg.sam_dim, cfg.sam_heads, mlp_dim, 0 if i in cfg.sam_global_blocks else cfg.sam_window, grid)
            for i in range(cfg.sam_depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(cfg.sam_dim, cfg.sam_neck_dim, 1, bias=False),
            LayerNorm2d(cfg.sam_neck_dim),
            nn.Conv2d(cfg.sam_neck_dim, cfg.sam_neck_dim, 3, padding=1, bias=False),
            LayerNorm2d(cfg.sam_neck_dim),
        )
        self.net_2 = nn.Conv2d(cfg.sam_neck_dim, cfg.sam_net2_dim, 3, stride=2, padding=1, bias=False)
        self.net_3 = nn.Conv2d(cfg.sam_net2_dim, cfg.sam_out_dim, 3, stride=2, padding=1, bias=False)

    def set_attention(self, mode: str) -> None:
        if mode not in (AUTO, *ATTENTION_MODES):
            raise ValueError(f"unknown SAM attention mode {mode!r}; use one of {AUTO}, {', '.join(ATTENTION_MODES)}")
        for block in self.blocks:
            block.attn.mode = mode

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels)
        # table first: the sum takes its contiguous [B,H,W,C] layout (x is a permuted conv output), so the blocks'
        # layer norms and residual adds run on contiguous rows; the same sums as x + table
        x = resize_abs_pos(self.pos_embed, x.shape[1]) + x
        for block in self.blocks:
            x = block(x)
        if reduced_precision(x):
            return self._neck_channels_last(x)
        x = self.neck(x.permute(0, 3, 1, 2).contiguous())  # the official neck's input layout (NCHW)
        return self.net_3(self.net_2(x))

    def _neck_channels_last(self, x: torch.Tensor) -> torch.Tensor:
        """The neck and the two stride-2 convolutions on [B,H,W,C] maps as matrix products (im2col), each
        LayerNorm2d one fused layer norm over channels; returns a [B,C,h,w] view of channels-last memory,
        which flattens to CLIP's tokens without a copy."""
        conv1, norm1, conv2, norm2 = self.neck
        x = linear(x, conv1.weight.flatten(1))
        x = F.layer_norm(x, norm1.weight.shape, norm1.weight, norm1.bias, norm1.eps)
        x = F.layer_norm(
            conv3x3_channels_last(x, conv2.weight, 1), norm2.weight.shape, norm2.weight, norm2.bias, norm2.eps
        )
        x = conv3x3_channels_last(x, self.net_2.weight, 2)
        return conv3x3_channels_last(x, self.net_3.weight, 2).permute(0, 3, 1, 2)


def conv3x3_channels_last(x: torch.Tensor, weight: torch.Tensor, stride: int) -> torch.Tensor:
    """A 3x3 convolution (padding 1, no bias) of x [B,H,W,C] -> [B,H',W',O]: the nine shifted views
    side by side per pixel in the weight's (C, kh, kw) order, then one matrix product."""
    b, h, w, c = x.shape
    padded = F.pad(x, (0, 0, 1, 1, 1, 1))
    out_h, out_w = (h - 1) // stride + 1, (w - 1) // stride + 1
    shifted = [
        padded[:, i : i + stride * (out_h - 1) + 1 : stride, j : j + stride * (out_w - 1) + 1 : stride]
        for i in range(3)
        for j in range(3)
    ]
    columns = torch.stack(shifted, dim=-1).view(b, out_h, out_w, c * 9)
    return linear(columns, weight.reshape(weight.shape[0], -1))
