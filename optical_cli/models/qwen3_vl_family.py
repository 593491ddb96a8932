"""The Qwen3-VL family by name: each model's text dims, so a config names a model (``vlm.random.model:
qwen3-vl-8b``) and overrides only what differs. Pure data (no torch): the config schema reads it.

Sources: the ``text_config`` of each published ``config.json`` (https://huggingface.co/Qwen/Qwen3-VL-2B-Instruct,
-4B-, -8B-, -32B-, -30B-A3B-Instruct); no hub is reachable where this was written, so the values were read from
public copies of those files and public tooling that mirrors them (model cards, GGUF metadata, Megatron-Bridge
model args), which agree. tests/test_fullsize.py checks each one's parameter count against a count written out
from the dims alone. ``tiny`` is ours: the test model (vLLM's CPU attention takes head sizes from 32).
"""

from __future__ import annotations

# What every member shares: the Qwen vocabulary, interleaved M-RoPE sections over 128-wide heads, its theta and
# positions, and Qwen3-VL's own initializer range.
_QWEN3_VL = {
    "vocab_size": 151936,
    "head_dim": 128,
    "mrope_section": [24, 20, 20],
    "rope_theta": 5_000_000.0,
    "max_position_embeddings": 262144,
    "initializer_range": 0.02,
    "num_experts": 0,
    "num_experts_per_tok": 8,
    "moe_intermediate_size": 768,
    "decoder_sparse_step": 1,
    "mlp_only_layers": [],
}


def _member(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, tied: bool, **more) -> dict:
    shape = {"hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": layers}
    shape |= {"num_attention_heads": heads, "num_key_value_heads": kv_heads, "tie_word_embeddings": tied}
    return {**_QWEN3_VL, **shape, **more}


QWEN3_VL_FAMILY: dict[str, dict] = {
    "tiny": _member(64, 128, 2, 4, 2, True, head_dim=32, mrope_section=[6, 5, 5], max_position_embeddings=32768),
    "qwen3-vl-2b": _member(2048, 6144, 28, 16, 8, True),
    "qwen3-vl-4b": _member(2560, 9728, 36, 32, 8, True),
    "qwen3-vl-8b": _member(4096, 12288, 36, 32, 8, False),
    "qwen3-vl-32b": _member(5120, 25600, 64, 64, 8, False),
    # mixture of experts: 128 experts of width 768 a layer, 8 per token; intermediate_size (dense) is unused
    "qwen3-vl-30b-a3b": _member(2048, 6144, 48, 32, 4, False, num_experts=128),
}
