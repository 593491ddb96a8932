"""Every YAML shipped under configs/ loads through its command's schema, so none can rot."""

from pathlib import Path

import pytest

from optical_cli.config import CONFIG_DIR, COMMANDS, command_for_file, load_config

SHIPPED = sorted(CONFIG_DIR.rglob("*.yaml"))


def test_configs_exist():
    assert SHIPPED, "configs/ holds no YAML files"
    for name, spec in COMMANDS.items():
        assert (CONFIG_DIR / spec.default_file).is_file(), f"{name} has no default config"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_shipped_config_validates(path: Path):
    command = command_for_file(path)
    assert command is not None, f"{path.name} matches no command's config file name"
    load_config(command, path)
