"""Which schema each command reads, under one name: the command's config key is its own name on the command
line (the last word: ``bench longbench`` reads ``longbench``; the four ``index`` commands share ``index``;
``serve``, ``ask`` and ``export-model`` share ``serve``), and its default file is ``configs/<key>.yaml``.
A variant file (``configs/tiny/``, ``configs/fullsize/``, a user's own) is recognised by the same stem.

The names of earlier versions (``energy``, ``sweep``, ``sweep-render``, ``qwen3_vl``) still resolve, with
a note saying the new name, so old scripts and files keep working for a while.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel

from ..bench.config import LongBenchConfig, LongBenchV1Config, MrcrConfig, RulerConfig
from ..encode.config import EncodeConfig
from ..errors import ConfigError
from ..index.config import IndexConfig
from ..paths import CONFIG_DIR
from ..render.config import FrontierConfig, RenderConfig
from ..serving.config import ServeConfig
from ..sweep.config import DiffusionConfig
from ..train.config import TrainAdapterConfig
from .files import parse_yaml
from .schema import Section
from .validation import apply_overrides, validate


@dataclass(frozen=True)
class CommandSpec:
    schema: type[Section]
    commands: tuple[str, ...]  # the CLI commands that read this schema

    def default_file(self, key: str) -> str:
        return f"{key}.yaml"  # relative to configs/


COMMANDS: dict[str, CommandSpec] = {
    "render": CommandSpec(RenderConfig, ("render",)),
    "encode": CommandSpec(EncodeConfig, ("encode",)),
    "train-adapter": CommandSpec(TrainAdapterConfig, ("train-adapter", "export-adapter")),
    "longbench": CommandSpec(LongBenchConfig, ("bench longbench",)),
    "ruler": CommandSpec(RulerConfig, ("bench ruler",)),
    "mrcr": CommandSpec(MrcrConfig, ("bench mrcr",)),
    "longbench-v1": CommandSpec(LongBenchV1Config, ("bench longbench-v1",)),
    "index": CommandSpec(
        IndexConfig,
        (
            "index build-energy",
            "index search",
            "index add",
            "index delete",
            "index add-documents",
            "index remove-documents",
        ),
    ),
    "diffusion": CommandSpec(DiffusionConfig, ("sweep diffusion",)),
    "frontier": CommandSpec(FrontierConfig, ("sweep frontier",)),
    "serve": CommandSpec(ServeConfig, ("serve", "ask", "export-model")),
}

# Names of earlier versions (schema names and default-file stems) -> today's key.
DEPRECATED_NAMES: dict[str, str] = {
    "qwen3_vl": "train-adapter",
    "energy": "index",
    "sweep": "diffusion",
    "sweep-render": "frontier",
    "sweep_render": "frontier",
    "sweep render": "frontier",
}


@dataclass(frozen=True)
class Resolved:
    """A config key, and the note to show when it was reached through an old name (None otherwise)."""

    key: str
    note: str | None = None


def _cli_names() -> dict[str, str]:
    return {command: key for key, spec in COMMANDS.items() for command in spec.commands}


def known_names() -> list[str]:
    """Every name ``resolve`` takes today: config keys and the CLI's command names."""
    return list(dict.fromkeys([*COMMANDS, *_cli_names()]))


def _deprecation(old: str, key: str) -> str:
    return f"'{old}' is the old name of the '{key}' config (configs/{key}.yaml); use '{key}'"


def resolve(name: str) -> Resolved:
    """The config key behind a name as the CLI or a file names it (``bench longbench``, ``longbench``, or an
    old name such as ``energy``, with its note)."""
    name = " ".join(name.split())
    if name in COMMANDS:
        return Resolved(name)
    cli = _cli_names()
    if name in cli:
        return Resolved(cli[name])
    if name in DEPRECATED_NAMES:
        key = DEPRECATED_NAMES[name]
        return Resolved(key, _deprecation(name, key))
    raise ConfigError(f"no config for '{name}'; use one of: {', '.join(known_names())}")


def resolve_file(path: Path) -> Resolved | None:
    """Which command's schema a config file belongs to: its stem is the config key (in any folder). Files of
    earlier versions (``qwen3_vl.yaml``, ``qwen3_vl_8b.yaml``, ``energy.yaml``) resolve with a note."""
    path = Path(path)
    if path.suffix not in (".yaml", ".yml"):
        return None
    if path.stem in COMMANDS:
        return Resolved(path.stem)
    old = [name for name in DEPRECATED_NAMES if path.stem == name or path.stem.startswith(name + "_")]
    if old:
        name = max(old, key=len)  # sweep_render_x.yaml is sweep_render's, not sweep's
        return Resolved(DEPRECATED_NAMES[name], _deprecation(path.name, DEPRECATED_NAMES[name]))
    variants = [key for key in COMMANDS if path.stem.startswith(key.replace("-", "_") + "_")]
    if variants:  # longbench_8b.yaml: a variant named the way of earlier versions
        key = max(variants, key=len)
        note = f"{path.name}: read as a '{key}' config; name a variant {key}.yaml, in a folder of its own"
        return Resolved(key, note)
    return None


def default_config_path(key: str) -> Path:
    return CONFIG_DIR / COMMANDS[key].default_file(key)


def load_config(key: str, path: str | Path | None = None, overrides: list[str] | None = None) -> Section:
    """Load the ``key`` command's config from ``path`` (default: its file in configs/) plus overrides."""
    if key not in COMMANDS:
        raise ConfigError(f"unknown config '{key}'; known: {', '.join(sorted(COMMANDS))}")
    schema = COMMANDS[key].schema
    if path is None:
        default = default_config_path(key)
        path = default if default.exists() else None
    data: dict = {}
    source = "<defaults>"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}; pass an existing YAML file to --config")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read config: {exc}") from None
        data = parse_yaml(text, source)
    overridden: dict[tuple, str] = {}
    if overrides:
        data = apply_overrides(schema, data, list(overrides), overridden)
    return validate(schema, data, source, overridden)


def dump_config(config: BaseModel) -> str:
    """The resolved config as YAML, the form written to each run's ``config.yaml``."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
