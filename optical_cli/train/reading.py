"""Reading check: greedy transcription of held-out pages from their optical tokens, character error rate."""

from __future__ import annotations

import torch
from rapidfuzz.distance import Levenshtein
from torch import nn

from ..models.vlm import READ_INSTRUCTION, VisionLanguageReader, build_layout, splice
from .pages import PageSet


def character_error_rate(prediction: str, reference: str) -> float:
    """Character edits (insertions, deletions, substitutions) per reference character."""
    return Levenshtein.distance(prediction, reference) / max(1, len(reference))


def reading_check(
    reader: VisionLanguageReader, adapter: nn.Module, pages: PageSet, count: int, max_new_tokens: int
) -> dict:
    """Greedy transcription of held-out pages from their optical tokens (``adapter`` maps them); CER and
    compression ratio."""
    adapter_device = next(adapter.parameters()).device
    records = []
    for i in range(min(count, len(pages))):
        layout = build_layout(reader.tokenizer, READ_INSTRUCTION, [int(pages.features.shape[1])])
        page = torch.tensor([pages.page_index[i]], device=adapter_device)
        vision = adapter(pages.features[i : i + 1].to(adapter_device), page).to(reader.device)
        embeds = splice(
            reader.embed_tokens, layout.input_ids.to(reader.device), layout.vision_mask.to(reader.device), vision
        )
        reference = pages.texts[i]
        text_tokens = reader.count_tokens(reference)
        ids, _ = reader.generate_from_embeds(
            embeds[None], layout.position_ids, layout.rope_delta, min(max_new_tokens, text_tokens + 16)
        )
        prediction = reader.tokenizer.decode(ids)
        records.append(
            {
                "page": i,
                "text_tokens": text_tokens,
                "vision_tokens": int(pages.features.shape[1]),
                "compression": text_tokens / pages.features.shape[1],
                "cer": character_error_rate(prediction, reference),
                "reference": reference,
                "prediction": prediction,
            }
        )
    if not records:
        return {"pages": 0, "records": []}
    return {
        "pages": len(records),
        "cer": sum(r["cer"] for r in records) / len(records),
        "char_accuracy": max(0.0, 1 - sum(r["cer"] for r in records) / len(records)),
        "compression": sum(r["compression"] for r in records) / len(records),
        "records": records,
    }
