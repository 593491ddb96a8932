"""DeepEncoder network: official names/shapes, parameter count, shapes per mode, attention paths."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from optical_cli.models.deepencoder import DeepEncoder, DeepEncoderConfig, count_parameters
from optical_cli.models.deepencoder import attention as attention_module
from optical_cli.models.deepencoder.attention import rel_pos_table
from optical_cli.models.deepencoder.clip import resize_clip_pos
from optical_cli.models.deepencoder.sam import Attention, Block, resize_abs_pos
from optical_cli.models.deepencoder.weights import load_deepencoder

KEYS_TSV = Path(__file__).parent / "data" / "deepencoder_keys.tsv"


def official_shapes() -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in KEYS_TSV.read_text().splitlines()[1:]:
        if not line.strip() or line.startswith("#"):
            continue
        name, shape, _dtype = line.split("\t")
        shapes[name.removeprefix("model.")] = tuple(int(d) for d in shape.split("x"))
    return shapes


@pytest.fixture(scope="module")
def full_size_meta() -> DeepEncoder:
    with torch.device("meta"):
        return DeepEncoder()


@pytest.fixture(scope="module")
def tiny_model() -> DeepEncoder:
    return load_deepencoder(None, config=DeepEncoderConfig.tiny(), seed=0)


def test_full_size_names_and_shapes_equal_the_official_checkpoint(full_size_meta):
    model = full_size_meta
    ours = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    official = official_shapes()
    assert len(official) == 478 - 2  # tsv rows minus header and summary line
    assert sorted(set(official) - set(ours)) == []
    assert sorted(set(ours) - set(official)) == []
    assert {n: s for n, s in ours.items() if official[n] != s} == {}


def test_full_size_parameter_count_matches_the_spec(full_size_meta):
    model = full_size_meta
    assert count_parameters(model.sam_model) == 95_569_152
    assert count_parameters(model.vision_model) == 303_177_728
    assert count_parameters(model.projector) == 2_622_720
    assert count_parameters(model) == 401_369_600
    assert count_parameters(model, layout_vectors=True) == 401_369_600 + 2 * 1280


@pytest.mark.parametrize("size,tokens", [(512, 64), (640, 100)])  # base and gundam: test_encode_cli
def test_tiny_forward_shapes(tiny_model, size, tokens):
    with torch.inference_mode():
        out = tiny_model(torch.randn(2, 3, size, size))
    assert out.shape == (2, tokens, 48)
    assert torch.isfinite(out).all()


def test_large_mode_shape_with_a_shallow_model():
    cfg = dataclasses.replace(DeepEncoderConfig.tiny(), sam_depth=2, sam_global_blocks=(1,), clip_depth=1)
    model = load_deepencoder(None, config=cfg)
    with torch.inference_mode():
        assert model(torch.randn(1, 3, 1280, 1280)).shape == (1, 400, 48)


@pytest.mark.parametrize("mode", ["chunked", "folded", "auto"])
def test_attention_paths_equal_the_additive_mask(tiny_model, mode, monkeypatch):
    # a tiny chunk budget makes the chunked path loop over many (view, head) chunks
    monkeypatch.setattr(attention_module, "CHUNK_BYTES", {"cpu": 3 * 40**4 * 4, "cuda": 3 * 40**4 * 4})
    monkeypatch.setattr(attention_module, "AUTO_CHOICES", {})
    pixels = torch.randn(2, 3, 640, 640)
    with torch.inference_mode():
        tiny_model.set_attention("mask")
        masked = tiny_model(pixels)
        tiny_model.set_attention(mode)
        other = tiny_model(pixels)
        tiny_model.set_attention("mask")
    torch.testing.assert_close(other, masked, rtol=1e-5, atol=1e-5)
    assert masked.abs().max() > 0.1  # the comparison is not between zeros


def test_auto_measures_every_cpu_path_once_per_shape_and_keeps_the_fastest(tiny_model, monkeypatch):
    monkeypatch.setattr(attention_module, "AUTO_CHOICES", {})
    calls = []
    paths = {
        name: (lambda fn, name: lambda *a: calls.append(name) or fn(*a))(fn, name)
        for name, fn in attention_module._PATHS.items()
    }
    monkeypatch.setattr(attention_module, "_PATHS", paths)
    tiny_model.set_attention("auto")
    try:
        with torch.inference_mode():
            tiny_model(torch.randn(1, 3, 512, 512))
            first = len(calls)
            tiny_model(torch.randn(1, 3, 512, 512))
    finally:
        tiny_model.set_attention("mask")
    choices = attention_module.AUTO_CHOICES
    assert len(choices) == 2  # one windowed and one global shape (tiny: window 4 on a 32x32 grid)
    for best, seconds in choices.values():
        assert set(seconds) == {"mask", "chunked", "folded"} and best == min(seconds, key=seconds.get)
    blocks = DeepEncoderConfig.tiny().sam_depth
    repeats = attention_module.AUTO_REPEATS
    assert first == 3 * repeats * 2 + (blocks - 2)  # every candidate timed per new shape, then the choice
    assert len(calls) - first == blocks  # the second page only runs the chosen paths


@pytest.mark.filterwarnings("ignore::UserWarning")  # eager FlexAttention on CPU warns that it is slow
def test_flex_attention_bias_equals_the_additive_mask():
    torch.manual_seed(0)
    attention = Attention(32, 2, rel_pos_len=2 * 8 - 1)
    with torch.no_grad():
        attention.rel_pos_h.normal_(0, 0.5)
        attention.rel_pos_w.normal_(0, 0.5)
    x = torch.randn(2, 8, 8, 32)
    with torch.inference_mode():
        masked = attention(x)
        attention.mode = "flex"
        flex = attention(x)
    torch.testing.assert_close(flex, masked, rtol=1e-5, atol=1e-5)


def test_unknown_attention_mode_is_rejected(tiny_model):
    with pytest.raises(ValueError, match="unknown SAM attention mode"):
        tiny_model.set_attention("fast")


def test_windowed_attention_equals_global_when_the_window_covers_the_grid():
    torch.manual_seed(0)
    windowed = Block(32, 2, 64, window=8, grid=8)
    global_ = Block(32, 2, 64, window=0, grid=8)
    with torch.no_grad():
        windowed.attn.rel_pos_h.normal_(0, 0.5)  # non-zero relative positions take part
        windowed.attn.rel_pos_w.normal_(0, 0.5)
    global_.load_state_dict(windowed.state_dict())  # same rel-pos length: 2*8-1 either way
    x = torch.randn(2, 8, 8, 32)
    torch.testing.assert_close(windowed(x), global_(x))


def test_windowed_attention_differs_from_global_when_windows_are_smaller():
    torch.manual_seed(0)
    windowed = Block(32, 2, 64, window=4, grid=8)
    x = torch.randn(1, 8, 8, 32)
    out = windowed(x)
    x2 = x.clone()
    x2[:, 0, 0] += 5.0  # only the first 4x4 window may change
    delta = (windowed(x2) - out).abs().amax(dim=-1)[0]
    assert delta[:4, :4].max() > 0 and delta[4:, :].max() == 0 and delta[:, 4:].max() == 0


def test_rel_pos_table_gathers_by_offset_and_resizes():
    table = torch.arange(15, dtype=torch.float32)[:, None].repeat(1, 4)  # length 2*8-1
    gathered = rel_pos_table(8, 8, table)
    assert gathered.shape == (8, 8, 4)
    for i, j in [(0, 0), (7, 0), (0, 7), (3, 5)]:
        assert gathered[i, j, 0] == i - j + 7
    constant = torch.full((127, 4), 0.5)
    resized = rel_pos_table(40, 40, constant)  # needs 79 rows: linear resize
    assert resized.shape == (40, 40, 4)
    torch.testing.assert_close(resized, torch.full_like(resized, 0.5))
    ramp = rel_pos_table(40, 40, torch.linspace(-1, 1, 127)[:, None])
    assert ramp[39, 0, 0] > ramp[20, 20, 0] > ramp[0, 39, 0]  # offsets keep their order


def test_positional_tables_resize():
    sam_pos = torch.randn(1, 64, 64, 8)
    assert resize_abs_pos(sam_pos, 64) is sam_pos
    assert resize_abs_pos(sam_pos, 40).shape == (1, 40, 40, 8)
    flat = torch.full((1, 64, 64, 8), 0.25)
    torch.testing.assert_close(resize_abs_pos(flat, 80), torch.full((1, 80, 80, 8), 0.25))
    clip_pos = torch.randn(257, 8)
    assert resize_clip_pos(clip_pos, 16, 16) is clip_pos
    resized = resize_clip_pos(clip_pos, 10, 10)
    assert resized.shape == (101, 8)
    torch.testing.assert_close(resized[0], clip_pos[0])  # CLS row kept


def test_random_init_and_forward_are_deterministic():
    cfg = DeepEncoderConfig.tiny()
    a, b = load_deepencoder(None, config=cfg, seed=3), load_deepencoder(None, config=cfg, seed=3)
    c = load_deepencoder(None, config=cfg, seed=4)
    pixels = torch.randn(1, 3, 512, 512)
    with torch.inference_mode():
        torch.testing.assert_close(a(pixels), b(pixels), rtol=0, atol=0)
        torch.testing.assert_close(a(pixels), a(pixels), rtol=0, atol=0)
        assert not torch.equal(a(pixels), c(pixels))


def test_layout_tokens_follow_the_official_arrangement(tiny_model):
    dim = 48
    global_view = torch.randn(256, dim)
    plain = tiny_model.arrange(None, (1, 1), global_view, layout_tokens=False)
    assert plain.shape == (256, dim)
    laid = tiny_model.arrange(None, (1, 1), global_view, layout_tokens=True)
    assert laid.shape == (16 * 17 + 1, dim)  # 273 for base
    torch.testing.assert_close(laid[16], tiny_model.image_newline)
    torch.testing.assert_close(laid[-1], tiny_model.view_seperator)
    torch.testing.assert_close(laid[17:33], global_view[16:32])
    # gundam: 3 columns x 2 rows of 10x10-token tiles stitched into a 20x30 map
    tiles = torch.arange(6)[:, None, None].float().expand(6, 100, dim).clone()
    out = tiny_model.arrange(tiles, (3, 2), global_view, layout_tokens=True)
    assert out.shape == (20 * 31 + 273, dim)
    first_row = out[:31, 0]
    assert first_row[:10].eq(0).all() and first_row[10:20].eq(1).all() and first_row[20:30].eq(2).all()
    assert out[10 * 31 : 10 * 31 + 30, 0].tolist() == [3.0] * 10 + [4.0] * 10 + [5.0] * 10
    unlaid = tiny_model.arrange(tiles, (3, 2), global_view, layout_tokens=False)
    assert unlaid.shape == (600 + 256, dim)
