"""Batches and losses: chat examples of each page, page statistics, collate, the reconstruction and mse
objectives, and the loss of one batch of cached pages (``batch_loss``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.vlm import READ_INSTRUCTION, VisionLanguageReader, build_layout, splice
from .pages import PageSet

IGNORE = -100


@dataclass
class Example:
    input_ids: torch.Tensor  # [L]
    vision_mask: torch.Tensor  # [L]
    position_ids: torch.Tensor  # [4, L]
    answer_start: int
    answer_ids: torch.Tensor  # [A] page text tokens (+ <|im_end|>)
    text_tokens: int  # tokens of the whole page text, before the cut at max_text_tokens


def make_examples(reader: VisionLanguageReader, pages: PageSet, max_text_tokens: int) -> list[Example]:
    """Chat sequences 'vision page + instruction -> page text', text cut at ``max_text_tokens``."""
    tokens = int(pages.features.shape[1]) if len(pages) else 0
    examples = []
    for text in pages.texts:
        ids = reader.tokenizer.encode(text)
        if len(ids) > max_text_tokens:
            text = reader.tokenizer.decode(ids[:max_text_tokens])
        layout = build_layout(reader.tokenizer, READ_INSTRUCTION, [tokens], answer=text)
        examples.append(
            Example(
                layout.input_ids,
                layout.vision_mask,
                layout.position_ids,
                layout.answer_start,
                layout.input_ids[layout.answer_start :],
                len(ids),
            )
        )
    return examples


def page_statistics(pages: PageSet, examples: list[Example], max_text_tokens: int) -> dict:
    """How full the training pages are: characters and text tokens per page, text tokens per vision
    token (DeepSeek-OCR reads about 97% of the text back at 10, about 60% at 20), and the share of
    each page's text the reconstruction target covers."""
    if not examples:
        return {}
    vision = int(pages.features.shape[1])
    text_tokens = [e.text_tokens for e in examples]
    return {
        "characters_per_page": round(sum(len(t) for t in pages.texts) / len(examples), 1),
        "text_tokens_per_page": round(sum(text_tokens) / len(examples), 1),
        "text_tokens_per_vision_token": round(sum(text_tokens) / len(examples) / vision, 3),
        "target_coverage": round(sum(min(n, max_text_tokens) for n in text_tokens) / max(1, sum(text_tokens)), 4),
    }


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: ids, vision mask, attention mask, labels (answer only), position ids [4, B, L]."""
    length = max(e.input_ids.shape[0] for e in examples)
    batch = len(examples)
    ids = torch.full((batch, length), pad_id, dtype=torch.long)
    vision = torch.zeros(batch, length, dtype=torch.bool)
    attention = torch.zeros(batch, length, dtype=torch.long)
    labels = torch.full((batch, length), IGNORE, dtype=torch.long)
    positions = torch.zeros(4, batch, length, dtype=torch.long)
    for row, e in enumerate(examples):
        n = e.input_ids.shape[0]
        ids[row, :n] = e.input_ids
        vision[row, :n] = e.vision_mask
        attention[row, :n] = 1
        labels[row, e.answer_start : n] = e.input_ids[e.answer_start :]
        positions[:, row, :n] = e.position_ids
    return {
        "input_ids": ids,
        "vision_mask": vision,
        "attention_mask": attention,
        "labels": labels,
        "position_ids": positions,
    }


def reconstruction_loss(model, adapted: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy of the page text given its adapted vision tokens."""
    embed = model.get_input_embeddings()
    inputs = splice(embed, batch["input_ids"], batch["vision_mask"], adapted)
    hidden = model.model(
        inputs_embeds=inputs,
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        use_cache=False,
    ).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    logits = model.lm_head(hidden[:, :-1][keep])  # only where a label exists: the vocabulary is 152k wide
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep])


def mse_loss(model, adapted: torch.Tensor, examples: list[Example]) -> torch.Tensor:
    """The published objective: MSE between mean-pooled adapted tokens and mean-pooled text embeddings."""
    embed = model.get_input_embeddings()
    device = adapted.device
    text_means = torch.stack([embed(e.answer_ids[:-1].to(device)).float().mean(0) for e in examples])
    return torch.nn.functional.mse_loss(adapted.float().mean(1), text_means)


def batch_loss(
    objective: str,
    model,
    adapter,
    pages: PageSet,
    examples: list[Example],
    index: list[int],
    pad_id: int,
    device: torch.device,
    autocast: bool,
) -> torch.Tensor:
    """The ``objective``'s loss on the pages at ``index``: their cached features through the adapter,
    spliced into their chat examples and read by the frozen ``model`` (bf16 autocast when asked)."""
    features = pages.features[index].to(device)
    page_index = torch.tensor([pages.page_index[i] for i in index], device=device)
    multi_page = torch.tensor([pages.multi_page(i) for i in index], device=device)  # the published layout's
    chosen = [examples[i] for i in index]
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        adapted = adapter(features, page_index, multi_page)
        if objective == "mse":
            return mse_loss(model, adapted, chosen)
        batch = {k: v.to(device) for k, v in collate(chosen, pad_id).items()}
        return reconstruction_loss(model, adapted, batch)
