"""The one bootstrap: seeded percentile intervals of a ratio of sums over resampled units.

Every interval optical reports by resampling comes from here: the sweep's query and label-cluster
intervals (a unit's sum over its queries, its size the query count: the mean of whatever the drawn units
hold) and the render frontier's CER (a segment's edits over its characters). Units are drawn with
replacement ``n_boot`` times, in chunks that bound the count matrix to about 16 MB.
"""

from __future__ import annotations

import numpy as np


def resample_ratios(sums: np.ndarray, sizes: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """``n_boot`` resampled ratios sum(sums of the drawn units) / sum(sizes of the drawn units).

    ``sums`` is units x columns (or 1-D), ``sizes`` one per unit; returns n_boot x columns (or n_boot)."""
    rng = np.random.default_rng(seed)
    n = sums.shape[0]
    ratios = np.empty((n_boot,) + sums.shape[1:], dtype=np.float64)
    chunk = max(1, 2_000_000 // max(n, 1))
    flat = sums.reshape(n, -1).astype(np.float64)
    for start in range(0, n_boot, chunk):
        stop = min(start + chunk, n_boot)
        draws = rng.integers(0, n, size=(stop - start, n)) + n * np.arange(stop - start)[:, None]
        counts = np.bincount(draws.ravel(), minlength=(stop - start) * n).reshape(stop - start, n).astype(np.float64)
        totals = np.maximum(counts @ sizes, np.finfo(np.float64).tiny)
        ratios[start:stop] = (counts @ flat).reshape((stop - start,) + sums.shape[1:]) / totals[
            (slice(None),) + (None,) * (sums.ndim - 1)
        ]
    return ratios


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple:
    """(low, high): the central ``level`` share of the resampled values (resamples along the first axis: floats
    for 1-D samples, one bound per column otherwise)."""
    tail = 50.0 * round(1.0 - level, 12)  # 2.5 exactly for 0.95 ((1 - 0.95) is 0.050000000000000044 in floats)
    low, high = np.percentile(samples, [tail, 100.0 - tail], axis=0)
    return (float(low), float(high)) if np.ndim(samples) == 1 else (low, high)
