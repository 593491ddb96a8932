"""DeepEncoder preprocessing: sizes, grey padding, [-1,1] pixels, colour modes, gundam tiling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from optical_cli.models.deepencoder.preprocess import PUBLISHED_TABLE, normalise, prepare, to_rgb, to_tensor
from optical_cli.modes import PAD_COLOUR, tile_grid

GREY = (PAD_COLOUR[0] / 255 - 0.5) / 0.5


def test_normalisation_maps_black_and_white_to_minus_one_and_one():
    image = Image.new("RGB", (4, 2))
    image.putpixel((1, 0), (255, 255, 255))
    pixels = normalise(image)
    assert pixels.shape == (3, 2, 4) and pixels.dtype == torch.float32
    assert pixels[:, 0, 1].tolist() == [1.0, 1.0, 1.0]
    assert pixels[:, 0, 0].tolist() == [-1.0, -1.0, -1.0]


@pytest.mark.parametrize("mode,size", [("tiny", 512), ("small", 640), ("base", 1024), ("large", 1280)])
def test_single_view_modes_give_one_square_view(mode, size):
    page = prepare(Image.new("RGB", (300, 200), "white"), mode)
    assert len(page.views) == 1 and page.tiles == [] and page.grid == (1, 1)
    assert page.views[0].shape == (3, size, size)


def test_base_pads_with_grey_and_keeps_the_aspect_ratio():
    view = prepare(Image.new("RGB", (200, 100), "white"), "base").views[0]
    assert view[:, 0, :].sub(GREY).abs().max() < 1e-6  # top band: grey padding
    assert view[:, -1, :].sub(GREY).abs().max() < 1e-6  # bottom band
    assert view[:, 512, :].eq(1.0).all()  # middle row: the white image, full width
    assert abs(GREY) < 0.01  # grey is (almost) zero after normalisation


def test_tiny_and_small_stretch_without_padding():
    view = prepare(Image.new("RGB", (200, 100), "white"), "small").views[0]
    assert view.eq(1.0).all()


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "LA", "CMYK", "I;16", "1"])
def test_colour_modes_become_rgb(mode):
    if mode == "I;16":  # built directly: Pillow 10.0 cannot convert RGB to I;16
        image = Image.fromarray(np.full((30, 40), 1000, dtype=np.uint16))
    else:
        image = Image.new("RGB", (40, 30), (200, 200, 200)).convert(mode)
    if mode == "P":  # converting would dither; a palette image with a grey entry instead
        image = Image.new("P", (40, 30), 3)
        image.putpalette([0, 0, 0] * 3 + [200, 200, 200] + [0, 0, 0] * 252)
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == (40, 30)
    view = prepare(image, "tiny").views[0]
    assert view.shape == (3, 512, 512)
    assert torch.equal(view[0], view[1]) and torch.equal(view[1], view[2])  # grey stays grey


def test_rgba_drops_alpha_like_the_official_conversion():
    image = Image.new("RGBA", (20, 20), (255, 0, 0, 0))
    assert to_rgb(image).getpixel((0, 0)) == (255, 0, 0)


@pytest.mark.parametrize(
    "size,grid",
    [
        ((1500, 600), (3, 1)),
        ((700, 900), (2, 3)),
        ((2000, 1000), (2, 1)),
        ((1000, 2000), (1, 2)),
        ((900, 900), (2, 2)),
        ((5000, 700), (6, 1)),
    ],
)
def test_gundam_grid_follows_the_aspect_ratio(size, grid):
    assert tile_grid(*size) == grid


def test_gundam_tiles_come_first_in_row_major_order():
    image = Image.new("RGB", (1280, 640))
    image.paste((255, 255, 255), (640, 0, 1280, 640))  # right half white
    page = prepare(image, "gundam")
    assert page.grid == (2, 1) and len(page.views) == 3
    left, right, global_view = page.views
    assert left.shape == right.shape == (3, 640, 640) and global_view.shape == (3, 1024, 1024)
    assert left.mean() < -0.99 and right.mean() > 0.99
    assert global_view[:, 0, :].sub(GREY).abs().max() < 1e-6  # the global view is grey-padded


def test_gundam_small_image_has_only_the_global_view():
    page = prepare(Image.new("RGB", (600, 500), "white"), "gundam")
    assert len(page.views) == 1 and page.views[0].shape == (3, 1024, 1024)


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="unknown mode"):
        prepare(Image.new("RGB", (20, 20)), "huge")


def test_published_pixels_are_the_published_adapters_input():
    """Its pages went in as np.array(image.resize((1024, 1024))) / 255: PIL's default resampling,
    no padding, no normalisation. Ours at base mode must be the same tensor."""
    import numpy as np
    from PIL import Image

    from optical_cli.models.deepencoder.preprocess import prepare, resolve_pixels

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (700, 900, 3), dtype=np.uint8))
    theirs = torch.from_numpy(np.array(image.resize((1024, 1024)))).float().permute(2, 0, 1) / 255.0
    ours = prepare(image, "base", "published")
    assert len(ours.views) == 1 and torch.equal(ours.views[0], theirs)
    assert not torch.equal(prepare(image, "base").views[0], theirs)  # official: padded, in [-1, 1]
    assert resolve_pixels("auto", "published") == "published" and resolve_pixels("auto", "optical") == "official"
    assert resolve_pixels("auto") == "official" and resolve_pixels("published") == "published"
    with pytest.raises(ValueError, match="gundam"):
        prepare(image, "gundam", "published")


def test_pixel_tables_give_the_per_pixel_formula_bit_for_bit():
    """normalise() looks each byte up in a 256-entry table: the same float32 values as ToTensor then
    mean 0.5 / std 0.5 computed per pixel (the official formula), for every byte value and layout."""
    rng = np.random.default_rng(0)
    every_byte = np.arange(256 * 3, dtype=np.uint16).astype(np.uint8).reshape(16, 16, 3)
    for array in (every_byte, rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)):
        image = Image.fromarray(array)
        pixels = torch.from_numpy(array.copy()).permute(2, 0, 1).float()
        assert torch.equal(normalise(image), (pixels / 255.0 - 0.5) / 0.5)
        assert torch.equal(to_tensor(image, PUBLISHED_TABLE), pixels / 255.0)
        assert normalise(image).is_contiguous() and normalise(image).shape == (3, *array.shape[:2])
