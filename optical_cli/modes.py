"""DeepEncoder resolution modes: the one table that render, encode and the benchmarks share.

Source: DeepSeek-OCR (see ../shared specs, deepencoder.md). ``tokens`` is the number of
vision tokens one view of that size becomes: (size / 64) ** 2.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    name: str
    size: int  # square input size in pixels
    tokens: int  # vision tokens per view
    pad_to_square: bool  # grey-pad to a square before resizing (base, large, gundam's global view)


MODES: dict[str, Mode] = {
    "tiny": Mode("tiny", 512, 64, False),
    "small": Mode("small", 640, 100, False),
    "base": Mode("base", 1024, 256, True),
    "large": Mode("large", 1280, 400, True),
}

PATCH_SIZE = 16  # SAM patch size in pixels
PAD_COLOUR = (127, 127, 127)  # int(0.5 * 255): the normalisation mean, so padding becomes ~0


def page_size(mode: str) -> int:
    """Rendered page side in pixels for a mode (gundam pages are rendered at base size)."""
    return MODES["base" if mode == "gundam" else mode].size
