"""LoRA on the frozen language model (peft), trained together with the optical adapter.

The low-rank layers are injected in place (``peft.inject_adapter_in_model``), so the model keeps
its class, its parameter names and every call site; only the ``lora_A`` / ``lora_B`` weights
train. Saved as a PEFT adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``,
keys under ``base_model.model.``, as ``PeftModel.save_pretrained`` writes them), which
``PeftModel.from_pretrained`` and vLLM's LoRA support read as they are;
:func:`optical_cli.models.loading.load_lora` reads it back strictly. ``train-adapter`` writes it
as ``lora/`` beside ``adapter.safetensors`` (and in each checkpoint); ``bench longbench`` loads it from
beside the adapter, and the reading check reads with it.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from ..artifacts import atomic_path, atomic_write_json
from ..errors import InputError

LORA_DIR = "lora"
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."  # the key prefix PeftModel.save_pretrained writes


def lora_config(rank: int, alpha: float, dropout: float, target_modules: list[str]):
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules), bias="none")


def _check_targets(model: nn.Module, target_modules: list[str]) -> None:
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    missing = [t for t in target_modules if t not in names]
    if missing:
        raise InputError(
            f"train.lora.target_modules: {', '.join(missing)} name no linear layer of the language model; "
            f"choose from {', '.join(sorted(names - {'lm_head'}))}"
        )


def add_lora(model: nn.Module, config, seed: int = 0) -> list[nn.Parameter]:
    """Inject LoRA layers (seeded; B starts at zero, so the model's output is unchanged) and return
    the trainable LoRA parameters; everything else in the model stays frozen."""
    from peft import inject_adapter_in_model

    _check_targets(model, list(config.target_modules))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(config, model)
    model.requires_grad_(False)
    params = lora_parameters(model)
    for param in params:
        param.requires_grad_(True)
    return params


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for name, p in model.named_parameters() if ".lora_" in name]


def has_lora(model: nn.Module) -> bool:
    return any(".lora_" in name for name, _ in model.named_parameters())


def save_lora(model: nn.Module, config, directory: Path) -> Path:
    """The PEFT adapter directory: adapter_config.json and adapter_model.safetensors (atomic files)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    state = {
        PREFIX + name: tensor.detach().to("cpu").contiguous()
        for name, tensor in get_peft_model_state_dict(model).items()
    }
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    document = config.to_dict()
    document["target_modules"] = sorted(document["target_modules"])
    atomic_write_json(directory / CONFIG_FILE, json.loads(json.dumps(document, default=str)))
    return directory


def inject_lora(model: nn.Module, config) -> None:
    """Add (frozen) LoRA layers described by a LoraConfig, as a saved adapter directory needs them."""
    from peft import inject_adapter_in_model

    _check_targets(model, list(config.target_modules))
    inject_adapter_in_model(config, model)
    model.requires_grad_(False)


def set_lora_state(model: nn.Module, state: dict, directory: Path) -> None:
    """Put a saved LoRA state (keys as saved) into the injected layers, checking names and shapes."""
    from peft import set_peft_model_state_dict

    state = {name.removeprefix(PREFIX): tensor for name, tensor in state.items()}
    expected = {name.replace(".default.", ".") for name, _ in model.named_parameters() if ".lora_" in name}
    shapes = {
        name.replace(".default.", "."): tuple(p.shape) for name, p in model.named_parameters() if ".lora_" in name
    }
    if set(state) != expected or any(tuple(t.shape) != shapes[name] for name, t in state.items()):
        raise InputError(
            f"the LoRA adapter in {directory} does not fit this language model "
            f"({len(set(state) ^ expected)} tensor names differ); use the model and rank it was trained with"
        )
    set_peft_model_state_dict(model, state)


def lora_beside(adapter: str | Path) -> Path | None:
    """The ``lora/`` directory training wrote beside an adapter, if it wrote one: inside a run,
    checkpoint or export folder, or next to an adapter file."""
    path = Path(adapter)
    directory = (path if path.is_dir() else path.parent) / LORA_DIR
    return directory if (directory / CONFIG_FILE).is_file() else None


@contextlib.contextmanager
def lora_disabled(model: nn.Module) -> Iterator[None]:
    """The base model inside the block (the native conditions read text without the LoRA the
    optical reader was trained with)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    trainable = {name: p.requires_grad for name, p in model.named_parameters()}
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)
        for name, p in model.named_parameters():  # enable_adapters also flips requires_grad: put it back
            p.requires_grad_(trainable[name])
