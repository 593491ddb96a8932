"""Official DeepEncoder preprocessing: image -> normalised views for one mode.

tiny/small: resize to the square size (Lanczos). base/large: pad to a square with grey
(127,127,127), then resize (bicubic). gundam: tiles of the small size by best aspect ratio
(2..6 of them; none when the image fits in one tile) plus a base-size padded global view,
tiles first. Pixels: RGB, [0,1], then mean 0.5 / std 0.5 -> [-1,1].

``pixels="published"`` reproduces the published adapter's input instead (its pages went to
DeepEncoder as ``image.resize((1024, 1024))``, PIL's default bicubic, scaled to [0, 1] with no
normalisation): the page resized to the mode's square, [0, 1]. ``auto`` is ``official``
except where a published-layout adapter reads the features (``resolve_pixels``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

from ...modes import GUNDAM_GLOBAL, GUNDAM_TILE, MODES, PAD_COLOUR, tile_grid

ENCODE_MODES = (*MODES, "gundam")
OFFICIAL_PIXELS, PUBLISHED_PIXELS = "official", "published"


def resolve_pixels(setting: str, adapter_layout: str | None = None) -> str:
    """``deepencoder.pixels`` made concrete: ``auto`` follows the adapter that reads the features."""
    if setting != "auto":
        return setting
    return PUBLISHED_PIXELS if adapter_layout == PUBLISHED_PIXELS else OFFICIAL_PIXELS


@dataclass
class PreparedPage:
    views: list[torch.Tensor]  # [3,S,S] each; tiles (row-major) first, the global view last
    grid: tuple[int, int]  # tile columns, rows; (1, 1) when there are no tiles

    @property
    def tiles(self) -> list[torch.Tensor]:
        return self.views[:-1]


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode (RGBA, L, P, I;16, CMYK...) as RGB, upright per EXIF."""
    image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "F"):  # 16/32-bit greyscale: scale to 8 bit first
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() or 1.0
        image = Image.fromarray((array / peak * 255.0).round().astype(np.uint8), "L")
    return image.convert("RGB")


def _pixel_table(normalised: bool) -> np.ndarray:
    """The float32 value of each of the 256 byte values, computed by the same float32 operations as the
    per-pixel formula (ToTensor: /255; then mean 0.5 / std 0.5 when ``normalised``)."""
    values = torch.arange(256, dtype=torch.uint8).float() / 255.0
    return ((values - 0.5) / 0.5 if normalised else values).numpy()


# a byte has 256 values: looking each pixel's value up is one pass over the page, where the formula
# took four over a strided [3,H,W] view (~110 of the producer's ~160 ms for a 1024 px page, measured)
OFFICIAL_TABLE, PUBLISHED_TABLE = _pixel_table(True), _pixel_table(False)


def to_tensor(image: Image.Image, table: np.ndarray) -> torch.Tensor:
    """RGB image -> [3,H,W] float32, each byte mapped through ``table``."""
    channels_first = np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))
    return torch.from_numpy(table[channels_first])


def normalise(image: Image.Image) -> torch.Tensor:
    """RGB image -> [3,H,W] float32 in [-1,1] (ToTensor then mean 0.5 / std 0.5)."""
    return to_tensor(image, OFFICIAL_TABLE)


def pad_square(image: Image.Image, size: int) -> Image.Image:
    """Scale to fit a size x size square keeping the aspect ratio, centred on grey."""
    return ImageOps.pad(image, (size, size), method=Image.Resampling.BICUBIC, color=PAD_COLOUR)


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


def prepare(image: Image.Image, mode: str, pixels: str = OFFICIAL_PIXELS) -> PreparedPage:
    image = to_rgb(image)
    if pixels == PUBLISHED_PIXELS:
        if mode not in MODES:
            raise ValueError(
                f"pixels=published has one square view per page; mode {mode!r} has several, use one of "
                f"{', '.join(MODES)}"
            )
        size = MODES[mode].size
        return PreparedPage([to_tensor(image.resize((size, size), Image.Resampling.BICUBIC), PUBLISHED_TABLE)], (1, 1))
    if pixels not in ("auto", OFFICIAL_PIXELS):
        raise ValueError(f"unknown pixels {pixels!r}; use auto, {OFFICIAL_PIXELS} or {PUBLISHED_PIXELS}")
    if mode == "gundam":
        tiles, grid = gundam_tiles(image)
        views = tiles + [pad_square(image, GUNDAM_GLOBAL)]
        return PreparedPage([normalise(v) for v in views], grid)
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(ENCODE_MODES)}")
    spec = MODES[mode]
    if spec.pad_to_square:
        view = pad_square(image, spec.size)
    else:
        view = image.resize((spec.size, spec.size), Image.Resampling.LANCZOS)
    return PreparedPage([normalise(view)], (1, 1))
