"""Text measurements shared by render, encode and the benchmarks.

Text tokens are counted with the Qwen vocabulary (the byte-level BPE Qwen2.5/Qwen3 and
Qwen3-VL share, :mod:`optical_cli.models.qwen_bpe`), a special token's spelling counted as text.
"""

from __future__ import annotations

import math
from collections import Counter

from .models.qwen_bpe import qwen_bpe


def count_text_tokens(text: str) -> int:
    if not text:
        return 0
    return len(qwen_bpe().encode(text))


def count_words(text: str) -> int:
    return len(text.split())


def entropy_of_counts(counts: Counter) -> float:
    """Shannon entropy, in bits per character, of a character histogram (so documents can sum
    their pages' histograms instead of holding their text)."""
    total = sum(counts.values())
    if not total:
        return 0.0
    return -sum((n / total) * math.log2(n / total) for n in counts.values() if n)
