"""Every YAML shipped under configs/ loads through its command's schema, so none can rot."""

from pathlib import Path

import pytest

from optical_cli.config.registry import COMMANDS, default_config_path, load_config, resolve_file
from optical_cli.paths import CONFIG_DIR

ACCELERATE = CONFIG_DIR / "accelerate"  # accelerate's own launch configs, not a command's
SHIPPED = sorted(p for p in CONFIG_DIR.rglob("*.yaml") if ACCELERATE not in p.parents)


def test_configs_exist():
    assert SHIPPED, "configs/ holds no YAML files"
    for name, spec in COMMANDS.items():
        assert default_config_path(name).is_file(), f"{name} has no default config"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_shipped_config_validates(path: Path):
    resolved = resolve_file(path)
    assert resolved is not None and resolved.note is None, f"{path.name}: its stem names no command's config"
    load_config(resolved.key, path)


@pytest.mark.parametrize("path", sorted(ACCELERATE.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_accelerate_config_loads_in_accelerate(path: Path):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(path))
    assert str(config.distributed_type).endswith("FSDP") and config.fsdp_config["fsdp_version"] == 2
