"""DeepEncoder's views of a page as 8-bit images: the official preprocessing's geometry without torch.

tiny/small: resize to the square size (Lanczos). base/large: pad to a square with grey
(127,127,127), then resize (bicubic). gundam: tiles of the small size by best aspect ratio
(2..6 of them; none when the image fits in one tile) plus a base-size padded global view,
tiles first. ``pixels="published"``: the page resized (bicubic) to the mode's square.

What is left for ``models/deepencoder/preprocess.py`` is arithmetic: each byte mapped to its
float32 value (and to [-1, 1] for the official pixels). Doing the geometry here, in numpy and PIL
only, lets ``optical encode``'s page workers (``encode/feed.py``) prepare pages in processes that
never import torch and send them as bytes; the encoder's device maps the bytes.

A greyscale (``L``) page stays one channel: the RGB conversion the official code makes copies
its one channel three times, and every resize and pad treats channels alike, so the three
channels are made from the one on the device (tested equal, byte for byte).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

from .modes import GUNDAM_GLOBAL, GUNDAM_TILE, MAX_TILES, MODES, PAD_COLOUR, tile_grid

VIEW_MODES = (*MODES, "gundam")
OFFICIAL_PIXELS, PUBLISHED_PIXELS = "official", "published"


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode (RGBA, L, P, I;16, CMYK...) as RGB, upright per EXIF."""
    return _upright_8bit(image, keep_grey=False)


def grey_or_rgb(image: Image.Image) -> Image.Image:
    """``L`` stays ``L`` (one channel: the three RGB ones are copies of it); anything else as RGB."""
    return _upright_8bit(image, keep_grey=True)


def _upright_8bit(image: Image.Image, keep_grey: bool) -> Image.Image:
    image = ImageOps.exif_transpose(image)
    if image.mode == "RGB" or (keep_grey and image.mode == "L"):
        return image
    if image.mode in ("I", "I;16", "F"):  # 16/32-bit greyscale: scale to 8 bit first
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() or 1.0
        image = Image.fromarray((array / peak * 255.0).round().astype(np.uint8), "L")
        if keep_grey:
            return image
    return image.convert("RGB")


def pad_square(image: Image.Image, size: int) -> Image.Image:
    """Scale to fit a size x size square keeping the aspect ratio, centred on grey."""
    colour = PAD_COLOUR[0] if image.mode == "L" else PAD_COLOUR
    return ImageOps.pad(image, (size, size), method=Image.Resampling.BICUBIC, color=colour)


def gundam_tiles(image: Image.Image) -> tuple[list[Image.Image], tuple[int, int]]:
    if image.width <= GUNDAM_TILE and image.height <= GUNDAM_TILE:
        return [], (1, 1)
    cols, rows = tile_grid(image.width, image.height)
    resized = image.resize((cols * GUNDAM_TILE, rows * GUNDAM_TILE), Image.Resampling.BICUBIC)
    tiles = [
        resized.crop((c * GUNDAM_TILE, r * GUNDAM_TILE, (c + 1) * GUNDAM_TILE, (r + 1) * GUNDAM_TILE))
        for r in range(rows)
        for c in range(cols)
    ]
    return tiles, (cols, rows)


def view_images(
    image: Image.Image, mode: str, pixels: str = OFFICIAL_PIXELS
) -> tuple[list[Image.Image], tuple[int, int]]:
    """The views of an 8-bit image (``L`` or ``RGB``: see :func:`grey_or_rgb`) for ``mode``, tiles
    first, and the tile grid ((1, 1) without tiles)."""
    if pixels == PUBLISHED_PIXELS:
        if mode not in MODES:
            raise ValueError(
                f"pixels=published has one square view per page; mode {mode!r} has several, use one of "
                f"{', '.join(MODES)}"
            )
        size = MODES[mode].size
        return [image.resize((size, size), Image.Resampling.BICUBIC)], (1, 1)
    if pixels not in ("auto", OFFICIAL_PIXELS):
        raise ValueError(f"unknown pixels {pixels!r}; use auto, {OFFICIAL_PIXELS} or {PUBLISHED_PIXELS}")
    if mode == "gundam":
        tiles, grid = gundam_tiles(image)
        return tiles + [pad_square(image, GUNDAM_GLOBAL)], grid
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(VIEW_MODES)}")
    spec = MODES[mode]
    if image.size == (spec.size, spec.size):  # a page drawn at the mode's size: padding and resizing copy it
        return [image], (1, 1)
    if spec.pad_to_square:
        return [pad_square(image, spec.size)], (1, 1)
    return [image.resize((spec.size, spec.size), Image.Resampling.LANCZOS)], (1, 1)


def view_arrays(
    image: Image.Image, mode: str, pixels: str = OFFICIAL_PIXELS
) -> tuple[list[np.ndarray], tuple[int, int]]:
    """The views as uint8 arrays: [S, S] for a greyscale page, [S, S, 3] otherwise."""
    views, grid = view_images(grey_or_rgb(image), mode, pixels)
    return [np.array(view, dtype=np.uint8) for view in views], grid  # writable: torch takes them as they are


def max_view_bytes(mode: str) -> int:
    """The most bytes one page's views can take in ``mode`` (three channels)."""
    if mode == "gundam":
        return 3 * (MAX_TILES * GUNDAM_TILE * GUNDAM_TILE + GUNDAM_GLOBAL * GUNDAM_GLOBAL)
    return 3 * MODES[mode].size ** 2
