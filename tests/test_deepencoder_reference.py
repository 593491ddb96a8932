"""Our SAM and CLIP trunks against independent implementations shipped with transformers.

transformers' DeepSeek-OCR-2 port contains the same SAM ViT-B trunk (windowed + global
attention, decomposed relative positions, neck, two stride-2 convolutions), and its CLIP
encoder layers are the CLIP-L blocks with separate q/k/v projections. With the same random
weights the outputs must agree, at the native size and at a resized one.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from optical_cli.models.deepencoder import DeepEncoderConfig
from optical_cli.models.deepencoder.weights import load_deepencoder

CFG = DeepEncoderConfig.tiny()


@pytest.fixture(scope="module")
def ours():
    return load_deepencoder(None, config=CFG, seed=2)


@pytest.fixture(scope="module", params=[CFG.sam_window, 3], ids=["window divides grid", "padded windows"])
def sam_cfg_and_model(request):
    """A 40x40 grid (640 px) is split into whole 4x4 windows, or padded to 42x42 for 3x3 windows."""
    cfg = dataclasses.replace(CFG, sam_window=request.param)
    return cfg, load_deepencoder(None, config=cfg, seed=2)


def _sam_name(ref_name: str) -> str:
    """transformers' DeepSeek-OCR-2 SAM names -> the official (our) names."""
    for old, new in [
        ("patch_embed.projection", "patch_embed.proj"),
        ("layers.", "blocks."),
        ("layer_norm1", "norm1"),
        ("layer_norm2", "norm2"),
        ("neck.conv1", "neck.0"),
        ("neck.norm1", "neck.1"),
        ("neck.conv2", "neck.2"),
        ("neck.norm2", "neck.3"),
        ("proj.conv1", "net_2"),
        ("proj.conv2", "net_3"),
    ]:
        ref_name = ref_name.replace(old, new)
    return ref_name


def test_sam_trunk_matches_the_transformers_deepseek_ocr2_sam(sam_cfg_and_model):
    cfg, ours = sam_cfg_and_model
    size = 640  # not the table's native 1024: positional and relative-position tables get resized
    # transformers ships DeepSeek-OCR-2's SAM trunk from the lower bound in pyproject.toml on: no skip.
    from transformers.models.deepseek_ocr2 import modeling_deepseek_ocr2 as ocr2
    from transformers.models.deepseek_ocr2.configuration_deepseek_ocr2 import DeepseekOcr2SamVisionConfig

    config = DeepseekOcr2SamVisionConfig(
        hidden_size=cfg.sam_dim,
        output_channels=cfg.sam_neck_dim,
        num_hidden_layers=cfg.sam_depth,
        num_attention_heads=cfg.sam_heads,
        window_size=cfg.sam_window,
        global_attn_indexes=list(cfg.sam_global_blocks),
        downsample_channels=[cfg.sam_net2_dim, cfg.sam_out_dim],
    )
    reference = ocr2.DeepseekOcr2SamVisionEncoder(config).eval()
    state = ours.sam_model.state_dict()
    reference.load_state_dict({name: state[_sam_name(name)] for name in reference.state_dict()})
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))
    with torch.inference_mode():
        expected = reference(pixels).last_hidden_state
        got = ours.sam_model(pixels)
    assert got.shape == expected.shape == (1, cfg.sam_out_dim, size // 64, size // 64)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_clip_blocks_match_transformers_clip_encoder(ours):
    from transformers import CLIPVisionConfig
    from transformers.models.clip.modeling_clip import CLIPEncoder

    config = CLIPVisionConfig(
        hidden_size=CFG.clip_dim,
        intermediate_size=CFG.clip_mlp_dim,
        num_hidden_layers=CFG.clip_depth,
        num_attention_heads=CFG.clip_heads,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    config._attn_implementation = "sdpa"
    reference = CLIPEncoder(config).eval()
    mapped = {}
    for name, tensor in ours.vision_model.transformer.state_dict().items():
        if "qkv_proj" in name:
            for part, chunk in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0)):
                mapped[name.replace("qkv_proj", part)] = chunk
        else:
            mapped[name] = tensor
    reference.load_state_dict(mapped)
    tokens = torch.randn(2, 17, CFG.clip_dim, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = reference(inputs_embeds=tokens).last_hidden_state
        got = ours.vision_model.transformer(tokens)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
