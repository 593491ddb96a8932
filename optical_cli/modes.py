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


# gundam: a page as 2-6 tiles of the small mode's size plus one global view of the base size
GUNDAM_TILE = MODES["small"].size
GUNDAM_GLOBAL = MODES["base"].size
MIN_TILES, MAX_TILES = 2, 6


def tile_grid(width: int, height: int, tile: int = GUNDAM_TILE) -> tuple[int, int]:
    """(columns, rows) of 2..6 tiles whose aspect ratio is closest to the image's; on a tie
    the larger grid wins when the image has more than half its area."""
    aspect = width / height
    # Candidates ordered by tile count only; equal counts keep Python's (deterministic) set
    # order of small-int tuples, the order the official preprocessing iterates them in.
    candidates = sorted(
        {
            (c, r)
            for n in range(MIN_TILES, MAX_TILES + 1)
            for c in range(1, n + 1)
            for r in range(1, n + 1)
            if MIN_TILES <= c * r <= MAX_TILES
        },
        key=lambda cr: cr[0] * cr[1],
    )
    best, best_diff = (1, 1), float("inf")
    for cols, rows in candidates:
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and width * height > 0.5 * tile * tile * cols * rows:
            best = (cols, rows)
    return best
