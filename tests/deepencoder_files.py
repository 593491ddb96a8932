"""DeepEncoder weights in our own file format, written for tests: the official tensor names and the
architecture as JSON metadata (what models/deepencoder/weights.py reads). No command writes this file; a
test needs one to load random weights back through the real loader."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_file

from optical_cli.artifacts import atomic_path
from optical_cli.models.deepencoder.weights import DEEPENCODER_CONFIG_KEY, OFFICIAL_PREFIX


def save_deepencoder(model, path: str | Path) -> Path:
    state = {OFFICIAL_PREFIX + name: t.detach().contiguous().cpu() for name, t in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={DEEPENCODER_CONFIG_KEY: model.cfg.to_json()})
    return Path(path)
