"""SAM ViT-B image trunk of DeepEncoder: windowed/global attention with decomposed relative
positions, then the neck and two stride-2 convolutions (16x fewer tokens than patches).

Parameter names follow the official checkpoint under ``model.sam_model.``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import DeepEncoderConfig


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


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)  # [B,H,W,C]


def resize_abs_pos(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """The [1,G,G,C] table resized to [1,grid,grid,C]: bicubic, antialiased, in float32."""
    if pos.shape[1] == grid:
        return pos
    table = pos.permute(0, 3, 1, 2).float()
    table = F.interpolate(table, size=(grid, grid), mode="bicubic", antialias=True, align_corners=False)
    return table.to(pos.dtype).permute(0, 2, 3, 1)


def rel_pos_table(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative-position embeddings [q_size, k_size, C] gathered from a learned [L, C] table,
    linearly resized (in float32) when L != 2*max(q,k)-1, as in the original SAM."""
    length = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != length:
        resized = F.interpolate(rel_pos.float().t()[None], size=length, mode="linear")
        rel_pos = resized[0].t().to(rel_pos.dtype)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative.long()]


def decomposed_rel_pos(q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, h: int, w: int):
    """Row and column bias terms for queries q [B,heads,h*w,C]: ([B,heads,h,w,h], [B,heads,h,w,w]).

    The logit bias of query (i,j) on key (k,l) is rel_h[i,j,k] + rel_w[i,j,l] (unscaled q)."""
    table_h = rel_pos_table(h, h, rel_pos_h)
    table_w = rel_pos_table(w, w, rel_pos_w)
    grid_q = q.reshape(*q.shape[:2], h, w, q.shape[-1])
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", grid_q, table_h)
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", grid_q, table_w)
    return rel_h, rel_w


# How SAM attention applies its relative-position bias; all three give the same result.
#   mask:   materialised as an additive attention mask (the plain reference);
#   folded: folded into augmented queries/keys, so SDPA's fused kernels run without a mask;
#   flex:   added inside FlexAttention by a score modifier (compiled kernels on a GPU).
ATTENTION_MODES = ("mask", "folded", "flex")


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, rel_pos_len: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        head_dim = dim // heads
        self.rel_pos_h = nn.Parameter(torch.zeros(rel_pos_len, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(rel_pos_len, head_dim))
        self.mode = "mask"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, dim = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [B,heads,N,hd]
        rel_h, rel_w = decomposed_rel_pos(q, self.rel_pos_h, self.rel_pos_w, h, w)
        if self.mode == "folded":
            out = _attend_folded(q, k, v, rel_h, rel_w)
        elif self.mode == "flex":
            out = _attend_flex(q, k, v, rel_h, rel_w)
        else:
            bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, self.heads, h * w, h * w)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = out.transpose(1, 2).reshape(b, h, w, dim)
        return self.proj(out)


def _attend_folded(q, k, v, rel_h, rel_w) -> torch.Tensor:
    """Same result as the additive-mask path, but with the bias inside the q.k product.

    q' = [q*scale, rel_h, rel_w] and k' = [k, onehot(row), onehot(col)] give
    q'.k' = scale*q.k + rel_h[key row] + rel_w[key col]; SDPA then runs with scale 1 and no
    mask, so fused (flash / memory-efficient) kernels apply. v is zero-padded to the same
    width because some kernels require equal head dims; the padding is sliced off.
    """
    b, n_heads, n, head_dim = q.shape
    h, w = rel_h.shape[2], rel_h.shape[3]
    rows = torch.arange(n, device=q.device) // w
    cols = torch.arange(n, device=q.device) % w
    onehot = torch.cat([F.one_hot(rows, h), F.one_hot(cols, w)], dim=-1).to(q.dtype)  # [N, h+w]
    q_aug = torch.cat([q * head_dim**-0.5, rel_h.reshape(b, n_heads, n, h), rel_w.reshape(b, n_heads, n, w)], dim=-1)
    k_aug = torch.cat([k, onehot.expand(b, n_heads, n, h + w)], dim=-1)
    width = q_aug.shape[-1]
    pad = (-width) % 8  # kernels like head dims that are multiples of 8
    if pad:
        q_aug = F.pad(q_aug, (0, pad))
        k_aug = F.pad(k_aug, (0, pad))
    v_aug = F.pad(v, (0, width + pad - head_dim))
    return F.scaled_dot_product_attention(q_aug, k_aug, v_aug, scale=1.0)[..., :head_dim]


_compiled_flex = None


def _attend_flex(q, k, v, rel_h, rel_w) -> torch.Tensor:
    """The bias added per score inside FlexAttention: no mask in memory, no extra head width."""
    from torch.nn.attention.flex_attention import flex_attention

    b, n_heads, n, _ = q.shape
    h, w = rel_h.shape[2], rel_h.shape[3]
    row_bias, col_bias = rel_h.reshape(b, n_heads, n, h), rel_w.reshape(b, n_heads, n, w)

    def add_rel_pos(score, batch, head, q_idx, k_idx):
        return score + row_bias[batch, head, q_idx, k_idx // w] + col_bias[batch, head, q_idx, k_idx % w]

    attend = flex_attention
    if q.is_cuda and not torch.compiler.is_compiling():
        global _compiled_flex
        if _compiled_flex is None:  # flex_attention is only fast when compiled
            _compiled_flex = torch.compile(flex_attention, dynamic=False)
        attend = _compiled_flex
    return attend(q, k, v, score_mod=add_rel_pos)


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """[B,H,W,C] -> [B*windows, window, window, C], padding H and W up to multiples of window."""
    b, h, w, c = x.shape
    pad_h, pad_w = (-h) % window, (-w) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window, window, c), (hp, wp)


def window_unpartition(windows: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    hp, wp = padded
    b = windows.shape[0] // ((hp // window) * (wp // window))
    x = windows.view(b, hp // window, wp // window, window, window, -1).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, hp, wp, -1)
    return x[:, : size[0], : size[1], :].contiguous()


class MLPBlock(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)

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
        shortcut = x
        x = self.norm1(x)
        if self.window:
            size = x.shape[1:3]
            x, padded = window_partition(x, self.window)
            x = window_unpartition(self.attn(x), self.window, padded, size)
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


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
        if mode not in ATTENTION_MODES:
            raise ValueError(f"unknown SAM attention mode {mode!r}; use one of {', '.join(ATTENTION_MODES)}")
        for block in self.blocks:
            block.attn.mode = mode

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels)
        x = x + resize_abs_pos(self.pos_embed, x.shape[1])
        for block in self.blocks:
            x = block(x)
        x = self.neck(x.permute(0, 3, 1, 2))
        return self.net_3(self.net_2(x))
