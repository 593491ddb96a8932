"""How SAM's attention applies its decomposed relative-position bias: the paths, all equal in value,
and ``auto``, which measures them on first use and keeps the fastest per device, dtype and view shape.

The choices ``auto`` made are process-wide (a run meets the same shapes in every block and batch):
``auto_choices()`` reports them, ``seed_auto_choices(records)`` adopts an earlier run's (so a resumed
run computes what the first did, bit for bit), ``clear_auto_choices()`` forgets them.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import flex_attention

from .products import einsum


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
    rel_h = einsum("bnhwc,hkc->bnhwk", grid_q, table_h)
    rel_w = einsum("bnhwc,wkc->bnhwk", grid_q, table_w)
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


def clear_auto_choices() -> None:
    """Forget every choice ``auto`` made in this process (the next forward measures again)."""
    AUTO_CHOICES.clear()
