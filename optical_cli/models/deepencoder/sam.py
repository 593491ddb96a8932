"""SAM ViT-B image trunk of DeepEncoder: windowed/global attention with decomposed relative
positions, then the neck and two stride-2 convolutions (16x fewer tokens than patches).

Parameter names follow the official checkpoint under ``model.sam_model.``.
"""

from __future__ import annotations

import time

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
    # einsum may return a permuted layout; a mask built from strided terms is strided too and
    # costs a copy of the whole mask to reshape (small terms, contiguous for a few MB)
    return rel_h.contiguous(), rel_w.contiguous()


# How SAM attention applies its relative-position bias; all give the same result.
#   mask:    materialised as one additive attention mask, as the official DeepSeek-OCR code does
#            (the reference; 12 x 4096 x 4096 values per page in a global block);
#   chunked: the same mask built for a few (view, head) pairs at a time into one reused buffer:
#            no page-sized mask in memory, no fresh pages to fault in (fastest on CPU);
#   folded:  folded into augmented queries/keys, so SDPA's fused kernels run without a mask
#            (3x wider q.k in global blocks);
#   flex:    added inside FlexAttention by a score modifier (compiled kernels on a GPU);
#   auto:    the fastest of these for each device, dtype and view shape, measured on first use.
ATTENTION_MODES = ("mask", "chunked", "folded", "flex")
AUTO = "auto"
CHUNK_BYTES = {"cpu": 64 * 2**20, "cuda": 1 * 2**30}  # chunked: mask buffer per step (CPU: cache-sized work)


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

    def forward(self, x: torch.Tensor, window: int = 0) -> torch.Tensor:
        """``x`` [B,H,W,C] -> [B,H,W,C]: global attention, or within ``window`` x ``window`` windows.

        Windowed blocks pad the grid to a multiple of the window. The official code pads the
        normalised tokens with zeros before this layer, so a padded token's q/k/v are the qkv bias
        and its output is cropped away; here q/k/v are computed on the real tokens only, padded
        with that bias, and the projection runs after the crop: the same numbers, 16% fewer
        rows through qkv and proj at 1024 px (64x64 grid padded to 70x70).
        """
        b, h, w, dim = x.shape
        qkv = self.qkv(x)
        if window:
            qkv, padded = window_partition(qkv, window, pad_value=self.qkv.bias)
        n_views, qh, qw, _ = qkv.shape
        # q, k, v contiguous [views, heads, tokens, head_dim]: a strided q makes the bias terms
        # strided too, and building the mask from those costs a copy of the whole mask
        q, k, v = qkv.reshape(n_views, qh * qw, 3, self.heads, -1).permute(2, 0, 3, 1, 4).contiguous().unbind(0)
        rel_h, rel_w = decomposed_rel_pos(q, self.rel_pos_h, self.rel_pos_w, qh, qw)
        out = attend(self.mode, q, k, v, rel_h, rel_w)
        out = out.transpose(1, 2).reshape(n_views, qh, qw, dim)
        if window:
            out = window_unpartition(out, window, padded, (h, w))
        return self.proj(out)


def attend(mode: str, q, k, v, rel_h, rel_w) -> torch.Tensor:
    """Attention with the decomposed bias, by path: q, k, v [B,heads,N,hd]; rel_h [B,heads,h,w,h], rel_w [...,w]."""
    if mode == AUTO:
        return _attend_auto(q, k, v, rel_h, rel_w)
    return _PATHS[mode](q, k, v, rel_h, rel_w)


def _attend_mask(q, k, v, rel_h, rel_w) -> torch.Tensor:
    b, heads, n, _ = q.shape
    bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, heads, n, n)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def _attend_chunked(q, k, v, rel_h, rel_w) -> torch.Tensor:
    """The mask path over a few (view, head) pairs at a time, the mask built into one reused buffer."""
    b, heads, n, head_dim = q.shape
    h, w = rel_h.shape[2], rel_h.shape[3]
    pairs = b * heads
    budget = CHUNK_BYTES.get(q.device.type, CHUNK_BYTES["cuda"])
    step = max(1, min(pairs, budget // (n * n * q.element_size())))
    q, k, v = (t.reshape(pairs, 1, n, head_dim) for t in (q, k, v))
    rel_h, rel_w = rel_h.reshape(pairs, 1, h, w, h, 1), rel_w.reshape(pairs, 1, h, w, 1, w)
    out = torch.empty_like(q)
    buffer = torch.empty(step, 1, h, w, h, w, device=q.device, dtype=q.dtype)
    for start in range(0, pairs, step):
        stop = min(pairs, start + step)
        mask = buffer[: stop - start]
        torch.add(rel_h[start:stop], rel_w[start:stop], out=mask)
        out[start:stop] = F.scaled_dot_product_attention(
            q[start:stop], k[start:stop], v[start:stop], attn_mask=mask.view(stop - start, 1, n, n)
        )
    return out.reshape(b, heads, n, head_dim)


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

    attend_fn = flex_attention
    if q.is_cuda and not torch.compiler.is_compiling():
        global _compiled_flex
        if _compiled_flex is None:  # flex_attention is only fast when compiled
            _compiled_flex = torch.compile(flex_attention, dynamic=False)
        attend_fn = _compiled_flex
    return attend_fn(q, k, v, score_mod=add_rel_pos)


_PATHS = {"mask": _attend_mask, "chunked": _attend_chunked, "folded": _attend_folded, "flex": _attend_flex}

# auto: (device, dtype, per-view q shape [heads, tokens, head_dim]) -> the path measured fastest there,
# and every path's seconds
AUTO_CHOICES: dict[tuple, tuple[str, dict[str, float]]] = {}
AUTO_REPEATS = 2


def _synchronize(tensor: torch.Tensor) -> None:
    if tensor.is_cuda:
        torch.cuda.synchronize(tensor.device)


def _auto_candidates(device: torch.device) -> tuple[str, ...]:
    # eager FlexAttention on a CPU materialises every score and is far slower than any other path
    return ATTENTION_MODES if device.type == "cuda" else ("mask", "chunked", "folded")


def _attend_auto(q, k, v, rel_h, rel_w) -> torch.Tensor:
    """The fastest path for this device, dtype and shape; measured the first time the shape is seen.

    Each candidate runs on the real inputs (on a GPU once more first, to warm up and compile)
    and keeps the best of ``AUTO_REPEATS`` timings, so one stall on a busy machine does not
    decide; one that fails (out of memory, no compiler) is skipped. The choice and the timings
    are kept in ``AUTO_CHOICES`` so benchmarks can report them.
    """
    # per view shape, not batch size: a run meets many batch sizes (a last partial batch), and
    # timing the candidates again for each would land inside the work being timed
    key = (str(q.device), q.dtype, tuple(q.shape[1:]))
    if key in AUTO_CHOICES:
        return _PATHS[AUTO_CHOICES[key][0]](q, k, v, rel_h, rel_w)
    seconds, outputs = {}, {}
    for mode in _auto_candidates(q.device):
        try:
            if q.is_cuda:
                _PATHS[mode](q, k, v, rel_h, rel_w)
            for _ in range(AUTO_REPEATS):
                _synchronize(q)
                start = time.perf_counter()
                outputs[mode] = _PATHS[mode](q, k, v, rel_h, rel_w)
                _synchronize(q)
                seconds[mode] = min(seconds.get(mode, float("inf")), time.perf_counter() - start)
        except Exception:  # noqa: BLE001 - an unusable path (OOM, no triton, ...) is not a candidate
            seconds.pop(mode, None)
            outputs.pop(mode, None)
            if q.is_cuda:
                torch.cuda.empty_cache()
    if not seconds:
        raise RuntimeError("no SAM attention path ran on this device")
    best = min(seconds, key=seconds.get)
    AUTO_CHOICES[key] = (best, seconds)
    return outputs[best]


def auto_choices() -> list[dict]:
    """What ``auto`` chose in this process, as JSON: one record per (device, dtype, view shape).

    Paths agree to ~1e-6, not bitwise, so a run's features are reproducible only with its
    choices: encode writes them into its shards, index and manifest and reuses them on --resume."""
    return [
        {
            "device": device,
            "dtype": str(dtype).removeprefix("torch."),
            "q_shape": list(shape),
            "path": path,
            "seconds": {mode: round(t, 6) for mode, t in seconds.items()},
        }
        for (device, dtype, shape), (path, seconds) in AUTO_CHOICES.items()
    ]


def seed_auto_choices(records: list[dict]) -> int:
    """Take earlier choices (``auto_choices()`` records) as this process's own; returns how many.
    A record naming an unknown path or dtype is ignored (``auto`` measures that shape again)."""
    taken = 0
    for record in records:
        try:
            key = (record["device"], getattr(torch, record["dtype"]), tuple(int(n) for n in record["q_shape"]))
            if record["path"] not in _PATHS or not isinstance(key[1], torch.dtype):
                continue
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
        AUTO_CHOICES[key] = (record["path"], dict(record.get("seconds") or {}))
        taken += 1
    return taken


def window_partition(x: torch.Tensor, window: int, pad_value: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """[B,H,W,C] -> [B*windows, window, window, C], padding H and W up to multiples of window
    with ``pad_value`` [C] in every padded position."""
    b, h, w, c = x.shape
    pad_h, pad_w = (-h) % window, (-w) % window
    if pad_h or pad_w:
        grid = pad_value.to(x.dtype).expand(b, h + pad_h, w + pad_w, c).clone()
        grid[:, :h, :w] = x
        x = grid
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window, window, c), (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
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
        x = x + self.attn(self.norm1(x), self.window)
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
        if mode not in (AUTO, *ATTENTION_MODES):
            raise ValueError(f"unknown SAM attention mode {mode!r}; use one of {AUTO}, {', '.join(ATTENTION_MODES)}")
        for block in self.blocks:
            block.attn.mode = mode

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels)
        x = x + resize_abs_pos(self.pos_embed, x.shape[1])
        for block in self.blocks:
            x = block(x)
        x = self.neck(x.permute(0, 3, 1, 2))
        return self.net_3(self.net_2(x))
