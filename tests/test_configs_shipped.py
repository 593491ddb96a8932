"""Every YAML shipped under configs/ loads through its command's schema, so none can rot."""

from pathlib import Path

import pytest

from optical_cli.config import COMMANDS, CONFIG_DIR, command_for_file, load_config

ACCELERATE = CONFIG_DIR / "accelerate"  # accelerate's own launch configs, not a command's
SHIPPED = sorted(p for p in CONFIG_DIR.rglob("*.yaml") if ACCELERATE not in p.parents)


def test_configs_exist():
    assert SHIPPED, "configs/ holds no YAML files"
    for name, spec in COMMANDS.items():
        assert (CONFIG_DIR / spec.default_file).is_file(), f"{name} has no default config"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_shipped_config_validates(path: Path):
    command = command_for_file(path)
    assert command is not None, f"{path.name} matches no command's config file name"
    load_config(command, path)


@pytest.mark.parametrize("path", sorted(ACCELERATE.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_accelerate_config_loads_in_accelerate(path: Path):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(path))
    assert str(config.distributed_type).endswith("FSDP") and config.fsdp_config["fsdp_version"] == 2
