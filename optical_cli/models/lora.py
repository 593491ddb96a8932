"""LoRA on the frozen language model (peft), trained together with the optical adapter.

The low-rank layers are injected in place (``peft.inject_adapter_in_model``), so the model keeps
its class, its parameter names and every call site; only the ``lora_A`` / ``lora_B`` weights
train. Saved as a PEFT adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``,
keys under ``base_model.model.``, as ``PeftModel.save_pretrained`` writes them), which
``PeftModel.from_pretrained`` and vLLM's LoRA support read as they are;
:func:`load_lora` reads it back strictly. ``train-adapter`` writes it
as ``lora/`` beside ``adapter.safetensors`` (and in each checkpoint); ``bench longbench`` loads it from
beside the adapter, and the reading check reads with it.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..artifacts import atomic_path, atomic_write_json
from ..errors import InputError

LORA_DIR = "lora"
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."  # the key prefix PeftModel.save_pretrained writes


def _peft():
    """peft, imported only where a LoRA is used: the import costs seconds (10 s on 2 busy cores) that a run
    without LoRA never pays."""
    import peft  # noqa: PLC0415 - peft's one import, deferred (above)
    import peft.tuners.tuners_utils  # noqa: PLC0415 - the same import: loads BaseTunerLayer's module

    return peft


def lora_config(rank: int, alpha: float, dropout: float, target_modules: list[str]):
    return _peft().LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules), bias="none"
    )


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
    _check_targets(model, list(config.target_modules))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _peft().inject_adapter_in_model(config, model)
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
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        PREFIX + name: tensor.detach().to("cpu").contiguous()
        for name, tensor in _peft().get_peft_model_state_dict(model).items()
    }
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    document = config.to_dict()
    document["target_modules"] = sorted(document["target_modules"])
    atomic_write_json(directory / CONFIG_FILE, json.loads(json.dumps(document, default=str)))
    return directory


def inject_lora(model: nn.Module, config) -> None:
    """Add (frozen) LoRA layers described by a LoraConfig, as a saved adapter directory needs them."""
    _check_targets(model, list(config.target_modules))
    _peft().inject_adapter_in_model(config, model)
    model.requires_grad_(False)


def set_lora_state(model: nn.Module, state: dict, directory: Path) -> None:
    """Put a saved LoRA state (keys as saved) into the injected layers, checking names and shapes."""
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
    _peft().set_peft_model_state_dict(model, state)


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
    layers = [m for m in model.modules() if isinstance(m, _peft().tuners.tuners_utils.BaseTunerLayer)]
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


def load_lora(model, directory: str | Path, resume: bool = False) -> None:
    """A PEFT LoRA adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``, as
    ``train-adapter`` writes ``lora/``) into ``model``: its layers injected (frozen) and its
    weights loaded with names and shapes checked. ``resume``: the layers are there already
    (training), only the weights load."""

    directory = Path(directory)
    if not (directory / CONFIG_FILE).is_file() or not (directory / WEIGHTS_FILE).is_file():
        raise InputError(f"{directory} is not a PEFT adapter directory (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        state = load_file(str(directory / WEIGHTS_FILE))
        if not resume:
            inject_lora(model, _peft().LoraConfig.from_pretrained(str(directory)))
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(f"could not read the LoRA adapter in {directory}: {exc}") from None
    set_lora_state(model, state, directory)
