"""DeepEncoder's weights: reading every layout it is published in, and writing our own.

Layouts accepted by :func:`load_deepencoder` (all strict: missing, unexpected and mis-shaped
tensors are reported by name):
  - the official DeepSeek-OCR safetensors (hub id, its directory or the file): tensors under
    model.sam_model. / model.vision_model. / model.projector. plus model.image_newline and
    model.view_seperator are taken, everything else (the language model) is ignored;
  - the community layout: a directory with sam_encoder.pth, clip_encoder.pth, projector.pth
    (float32 pickles, names without those prefixes; no layout vectors);
  - our own format, written by :func:`save_deepencoder`: one safetensors file with the official
    names and the architecture as JSON in its metadata (key DEEPENCODER_CONFIG_KEY);
  - None or "random": a seeded random initialisation of the configured architecture.
Tensors are read one at a time into an encoder built on the meta device and assigned in the
target dtype, so peak memory stays near one copy of the weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from ...errors import InputError, ModelNotFoundError
from ..loading import resolve_local_or_hub
from .config import DeepEncoderConfig
from .encoder import DeepEncoder

DEEPENCODER_HUB_FILE = "model-00001-of-000001.safetensors"
DEEPENCODER_CONFIG_KEY = "optical.deepencoder.config"
OFFICIAL_PREFIX = "model."  # the official checkpoint names every encoder tensor under model.
_ENCODER_PARTS = ("sam_model.", "vision_model.", "projector.")
_LAYOUT_VECTORS = ("image_newline", "view_seperator")
_COMMUNITY_FILES = {"sam_encoder.pth": "sam_model.", "clip_encoder.pth": "vision_model.", "projector.pth": "projector."}


def _is_encoder_name(name: str) -> bool:
    return name.startswith(_ENCODER_PARTS) or name in _LAYOUT_VECTORS


def _safetensors_encoder_tensors(path: Path, device: torch.device) -> tuple[dict, DeepEncoderConfig | None]:
    """Encoder tensors of one safetensors file, keyed by our names, plus its stored config."""

    tensors: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as handle:
            meta = handle.metadata() or {}
            for name in handle.keys():
                short = name[len(OFFICIAL_PREFIX) :] if name.startswith(OFFICIAL_PREFIX) else name
                if _is_encoder_name(short):
                    tensors[short] = handle.get_tensor(name)
    except Exception as exc:  # noqa: BLE001 - header or data errors: truncated, not safetensors, ...
        raise InputError(
            f"cannot read DeepEncoder weights {path}: {type(exc).__name__}: {exc}; the file is corrupt or truncated, "
            "download it again"
        ) from None
    config = None
    if DEEPENCODER_CONFIG_KEY in meta:
        try:
            config = DeepEncoderConfig.from_json(meta[DEEPENCODER_CONFIG_KEY])
        except (ValueError, TypeError) as exc:
            raise InputError(f"{path}: invalid DeepEncoder config in its metadata: {exc}") from None
    return tensors, config


def _community_tensors(directory: Path) -> dict:
    tensors: dict[str, torch.Tensor] = {}
    for filename, prefix in _COMMUNITY_FILES.items():
        path = directory / filename
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - truncated zip, pickle errors, disallowed globals
            raise InputError(
                f"cannot read DeepEncoder weights {path}: {type(exc).__name__}: {exc}; the file is corrupt or truncated"
            ) from None
        if not isinstance(state, dict):
            raise InputError(f"{path}: expected a dict of tensors, found {type(state).__name__}")
        tensors.update({prefix + name: tensor for name, tensor in state.items()})
    return tensors


def _read_deepencoder_source(source: str, device: torch.device) -> tuple[dict, DeepEncoderConfig | None, str]:
    """(tensors by our names, config stored with them or None, layout name)."""
    path = resolve_local_or_hub(source, [DEEPENCODER_HUB_FILE])
    if path.is_dir():
        present = [name for name in _COMMUNITY_FILES if (path / name).is_file()]
        if len(present) == len(_COMMUNITY_FILES):
            return _community_tensors(path), None, "community"
        if present:
            absent = [name for name in _COMMUNITY_FILES if name not in present]
            raise ModelNotFoundError(f"incomplete community DeepEncoder layout in {path}: {', '.join(absent)} missing")
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise ModelNotFoundError(
                f"no DeepEncoder weights in {path}: expected *.safetensors (official or ours) or "
                f"{', '.join(_COMMUNITY_FILES)}"
            )
        tensors, config = {}, None
        for file in files:  # sharded checkpoints: gather the encoder tensors of every shard
            part, part_config = _safetensors_encoder_tensors(file, device)
            tensors.update(part)
            config = config or part_config
        return tensors, config, "safetensors"
    if path.suffix == ".safetensors":
        tensors, config = _safetensors_encoder_tensors(path, device)
        return tensors, config, "safetensors"
    if path.name in _COMMUNITY_FILES:
        return _read_deepencoder_source(str(path.parent), device)
    raise InputError(f"unsupported DeepEncoder weights file {path}: use a .safetensors file, a directory, or a hub id")


def _check_state(expected: dict, found: dict, optional: tuple[str, ...], source: str) -> None:
    missing = [n for n in expected if n not in found and n not in optional]
    unexpected = [n for n in found if n not in expected]
    misshaped = [
        f"{n} {tuple(found[n].shape)} (expected {tuple(expected[n].shape)})"
        for n in expected
        if n in found and tuple(found[n].shape) != tuple(expected[n].shape)
    ]
    problems = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped)):
        if names:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            problems.append(f"{len(names)} {label}: {shown}")
    if problems:
        raise InputError(f"DeepEncoder weights {source} do not match the architecture: " + "; ".join(problems))


def load_deepencoder(
    source: str | None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    config: DeepEncoderConfig | None = None,
    seed: int = 0,
):
    """A DeepEncoder in eval mode on ``device``/``dtype`` with weights from ``source`` (see above).

    ``config`` defaults to the config stored with our own format, else the official sizes.
    """

    device = torch.device(device)
    if source is None or source == "random":
        torch.manual_seed(seed)
        model = DeepEncoder(config or DeepEncoderConfig())
        _init_random(model)
        return model.to(device=device, dtype=dtype).eval()
    # safetensors can place tensors straight on the GPU; dtype conversion happens per tensor
    tensors, stored_config, layout = _read_deepencoder_source(source, device)
    config = config or stored_config or DeepEncoderConfig()
    with torch.device("meta"):
        model = DeepEncoder(config)
    expected = model.state_dict()
    optional = _LAYOUT_VECTORS if layout == "community" else ()
    _check_state(expected, tensors, optional, source)
    has_layout_vectors = all(name in tensors for name in _LAYOUT_VECTORS)
    state = {}
    for name in list(tensors):
        state[name] = tensors.pop(name).to(device=device, dtype=dtype)  # drop each source tensor as we go
    for name in optional:
        if name not in state:
            state[name] = torch.zeros(expected[name].shape, device=device, dtype=dtype)
    model.load_state_dict(state, strict=True, assign=True)
    model.layout_vectors_loaded = has_layout_vectors
    return model.eval()


def _init_random(model) -> None:
    """Small random values everywhere (the zero-initialised tables and layout vectors included),
    so a random encoder's outputs depend on every tensor."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(
                ("rel_pos_h", "rel_pos_w", "pos_embed", "class_embedding", "image_newline", "view_seperator")
            ):
                param.normal_(0.0, 0.02)
