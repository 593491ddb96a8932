"""Real-derived test vectors for benchmarks at scale: the bundled CVE corpus's MiniLM embeddings
plus noisy copies that keep their record's labels.

The 20,000 embeddings come from the embedding cache (results/cache/embeddings; the first call
embeds the corpus, ~10 minutes on 2 cores). A copy is x + sigma * g / sqrt(dim), renormalised
(sigma 0.3: cosine ~0.96 to its original), so a larger corpus keeps the real one's geometry
and label structure. Used by bench_ann_cli.py and bench_sweep.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cve_corpus(seed: int = 0) -> tuple[np.ndarray, list[str], list[list[str]]]:
    """(vectors, ids, CWE labels) of every record of the bundled corpus, in file order."""
    from optical_cli.index.config import EnergyInputSection
    from optical_cli.index.embed import embed_corpus
    from optical_cli.index.inputs import read_items

    items = read_items(EnergyInputSection(limit=None), seed=seed)
    vectors, _ = embed_corpus(items.texts, "default", "cpu", 64, ROOT / "results" / "cache" / "embeddings")
    return vectors, items.ids, [list(record.get("cwe") or []) for record in items.records]


def noisy_copies(base: np.ndarray, rows: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    x = base[rows] + sigma * rng.standard_normal((len(rows), base.shape[1]), dtype=np.float32) / np.sqrt(base.shape[1])
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def derived(n: int, sigma: float = 0.3, seed: int = 0) -> tuple[np.ndarray, list[str], list[list[str]], np.ndarray]:
    """n vectors: the real ones first, then noisy copies of random records; also each row's source record."""
    base, ids, labels = cve_corpus(seed)
    rng = np.random.default_rng(seed)
    source = np.concatenate([np.arange(min(n, len(base))), rng.integers(len(base), size=max(0, n - len(base)))])
    vectors = np.concatenate([base[source[: len(base)]], noisy_copies(base, source[len(base) :], sigma, rng)])
    names = [ids[s] if row < len(base) else f"{ids[s]}~{row}" for row, s in enumerate(source)]
    return vectors, names, [labels[s] for s in source], source
