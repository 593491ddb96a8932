"""A language model saved in Hugging Face layout, for tests that need a checkpoint on disk to load
by path (as a real ``vlm.source`` directory is: linked into vLLM's model directory, converted tokenizer).

A hub id or local directory is used as it is; ``vlm.source: random`` is built exactly as
:func:`optical_cli.models.language_model.load_qwen3_vl` builds it (same dims, same seed, so the
same weights) and saved once, atomically, in Hugging Face layout under the cache of derived
models (:func:`optical_cli.models.loading.cache_dir`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

from optical_cli.errors import ConfigError, ModelNotFoundError
from optical_cli.models.language_model import build_random_qwen3_vl
from optical_cli.models.loading import RANDOM_SOURCE, cache_dir, resolve_local_or_hub
from optical_cli.models.tokenizers import save_chat_tokenizer_files, tokenizer_dir

ENGINE_CHECKPOINT_VERSION = 3  # bump when what is saved changes: old cache entries are then not reused


def engine_model_dir(
    source: str, tokenizer: str, random_dims: dict | None = None, seed: int = 0
) -> tuple[Path, Path | None]:
    """(model directory, tokenizer directory or None when the model directory holds it) for an
    engine that loads Hugging Face checkpoints by path.

    ``vlm.source: random`` is built exactly as :func:`load_qwen3_vl` builds it (same dims, same
    seed, so the same weights) and saved once as a ``Qwen3VLForConditionalGeneration``
    checkpoint: the language model's tensors, a small random vision tower that no condition runs
    (engines insist on every declared tensor), and the tokenizer files (the ``qwen-tiktoken``
    BPE converted to ``tokenizer.json``). The directory is keyed by dims, seed and format."""

    if source != RANDOM_SOURCE:
        path = resolve_local_or_hub(source, ["*.json", "*.safetensors", "*.txt", "*.tiktoken", "*.model"])
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"{path} has no config.json; point vlm.source at a Qwen3-VL model directory or hub id"
            )
        tok = None if tokenizer in ("auto", source) else tokenizer_dir(tokenizer)
        return path, tok
    if not random_dims:
        raise ConfigError("vlm.source=random needs a vlm.random section with the text dims")
    key_data = {"dims": random_dims, "seed": seed, "tokenizer": tokenizer, "version": ENGINE_CHECKPOINT_VERSION}
    key = hashlib.sha256(json.dumps(key_data, sort_keys=True).encode()).hexdigest()[:16]
    target = cache_dir() / "engine-models" / f"qwen3-vl-random-{key}"
    if (target / "model.safetensors").is_file():
        return target, None
    _save_random_qwen3_vl(target, random_dims, seed, tokenizer, key_data)
    return target, None


def _save_random_qwen3_vl(target: Path, dims: dict, seed: int, tokenizer: str, key_data: dict) -> None:
    """Write the checkpoint into a temporary sibling and rename it into place (atomic)."""

    model = build_random_qwen3_vl(dims, seed)
    config = model.config
    text = config.text_config
    # a small vision tower: never run (pages arrive as embeddings), but declared by the architecture
    vision = dict(
        depth=1,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=text.hidden_size,
        deepstack_visual_indexes=[0],
    )
    full = type(config)(
        text_config=text.to_dict(), vision_config=vision, tie_word_embeddings=config.tie_word_embeddings
    )
    full.architectures = ["Qwen3VLForConditionalGeneration"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        tower = Qwen3VLVisionModel._from_config(full.vision_config)
    tensors = {name: value.detach().contiguous() for name, value in model.state_dict().items()}
    if full.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    tensors.update({f"model.visual.{name}": value.detach().contiguous() for name, value in tower.state_dict().items()})
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        full.save_pretrained(staging)
        save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})
        save_chat_tokenizer_files(tokenizer, staging)
        _save_qwen3_vl_processor(staging, full.vision_config)
        (staging / "optical-random.json").write_text(json.dumps(key_data, indent=2, sort_keys=True) + "\n")
        try:
            staging.rename(target)
        except OSError:  # another process saved it first: theirs is the same model
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _save_qwen3_vl_processor(directory: Path, vision) -> None:
    """Qwen3-VL's processor files (image and video preprocessing at the vision config's patch and
    merge sizes, Qwen3-VL's [0.5] normalisation): engines build the processor even when every
    image arrives as embeddings. Written as JSON, so no image library is needed to write them."""

    common = {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "merge_size": vision.spatial_merge_size,
        "patch_size": vision.patch_size,
        "temporal_patch_size": vision.temporal_patch_size,
        "resample": 3,
        "rescale_factor": 1 / 255,
    }
    image = {
        **common,
        "image_processor_type": "Qwen2VLImageProcessor",
        "size": {"longest_edge": 1003520, "shortest_edge": 3136},
    }
    video = {
        **common,
        "video_processor_type": "Qwen3VLVideoProcessor",
        "do_sample_frames": True,
        "fps": 2,
        "max_frames": 768,
        "min_frames": 4,
        "return_metadata": False,
        "size": {"longest_edge": 786432, "shortest_edge": 131072},
    }
    files = {
        "preprocessor_config.json": image,
        "video_preprocessor_config.json": video,
        "processor_config.json": {
            "image_processor": image,
            "video_processor": video,
            "processor_class": "Qwen3VLProcessor",
        },
    }
    for name, content in files.items():
        (directory / name).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")
