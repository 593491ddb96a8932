"""Official DeepEncoder preprocessing: image -> normalised views for one mode.

tiny/small: resize to the square size (Lanczos). base/large: pad to a square with grey
(127,127,127), then resize (bicubic). gundam: tiles of the small size by best aspect ratio
(2..6 of them; none when the image fits in one tile) plus a base-size padded global view,
tiles first. Pixels: RGB, [0,1], then mean 0.5 / std 0.5 -> [-1,1].

``pixels="published"`` reproduces the published adapter's input instead (its pages went to
DeepEncoder as ``image.resize((1024, 1024))``, PIL's default bicubic, scaled to [0, 1] with no
normalisation): the page resized to the mode's square, [0, 1]. ``auto`` is ``official``
except where a published-layout adapter reads the features (``resolve_pixels``).

The geometry (resizing, padding, tiling) is ``optical_cli/views.py``'s, torch-free, so page workers
can prepare views as bytes; :func:`map_bytes` turns such bytes into these float32 views on any device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ...views import OFFICIAL_PIXELS, PUBLISHED_PIXELS, VIEW_MODES, to_rgb, view_images

ENCODE_MODES = VIEW_MODES


def resolve_pixels(setting: str, adapter_layout: str | None = None) -> str:
    """``deepencoder.pixels`` made concrete: ``auto`` follows the adapter that reads the features."""
    if setting != "auto":
        return setting
    return PUBLISHED_PIXELS if adapter_layout == PUBLISHED_PIXELS else OFFICIAL_PIXELS


@dataclass
class PreparedPage:
    """One page's views, tiles (row-major) first, the global view last: [3, S, S] float32, or the
    8-bit views of ``views.view_arrays`` ([S, S] or [S, S, 3] uint8, ``pixels`` saying how their
    bytes map) that the encoder maps on its device (:func:`map_bytes`)."""

    views: list[torch.Tensor]
    grid: tuple[int, int]  # tile columns, rows; (1, 1) when there are no tiles
    pixels: str = OFFICIAL_PIXELS

    @property
    def tiles(self) -> list[torch.Tensor]:
        return self.views[:-1]


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


def map_bytes(views: torch.Tensor, pixels: str) -> torch.Tensor:
    """8-bit views [N, S, S] (greyscale) or [N, S, S, 3], on any device, as the float32 views
    [N, 3, S, S] that :func:`prepare` makes on the CPU: the same 256-entry table, so the same bits."""
    table = torch.from_numpy(PUBLISHED_TABLE if pixels == PUBLISHED_PIXELS else OFFICIAL_TABLE).to(views.device)
    values = table[views.long()]
    if values.ndim == 3:
        return values.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    return values.permute(0, 3, 1, 2).contiguous()


def prepare(image: Image.Image, mode: str, pixels: str = OFFICIAL_PIXELS) -> PreparedPage:
    views, grid = view_images(to_rgb(image), mode, pixels)
    table = PUBLISHED_TABLE if pixels == PUBLISHED_PIXELS else OFFICIAL_TABLE
    return PreparedPage([to_tensor(view, table) for view in views], grid)
