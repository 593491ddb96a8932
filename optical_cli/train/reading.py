"""Reading check: greedy transcription of held-out pages from their optical tokens, character error rate."""

from __future__ import annotations

from rapidfuzz.distance import Levenshtein
from torch import nn

from ..engines.hf import HFReader
from ..models.vlm import VisionLanguageReader
from .pages import PageSet


def character_error_rate(prediction: str, reference: str) -> float:
    """Character edits (insertions, deletions, substitutions) per reference character."""
    return Levenshtein.distance(prediction, reference) / max(1, len(reference))


def reading_check(
    reader: VisionLanguageReader, adapter: nn.Module, pages: PageSet, count: int, max_new_tokens: int
) -> dict:
    """Greedy transcription of held-out pages from their optical tokens (``adapter`` maps them), through
    the engine seam; CER and compression ratio."""
    optical = VisionLanguageReader(reader.model, reader.tokenizer, adapter)
    engine = HFReader(optical, random_weights=False, description="reading check")
    records = []
    for i in range(min(count, len(pages))):
        reference = pages.texts[i]
        text_tokens = reader.count_tokens(reference)
        prediction = engine.transcribe(
            pages.features[i : i + 1], pages.page_index[i], min(max_new_tokens, text_tokens + 16), pages.multi_page(i)
        )
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
