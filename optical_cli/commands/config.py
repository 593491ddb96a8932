"""`optical config show|validate`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import config as config_mod
from ..errors import OpticalError
from .common import (
    ConfigOpt,
    JsonOpt,
    SetOpt,
    emit_json,
    handled_errors,
    load,
    say,
)

app = typer.Typer(help="Show and validate config files.", no_args_is_help=True)


@app.command("show")
def config_show(
    command: Annotated[
        list[str],
        typer.Argument(
            metavar="COMMAND",
            help="Command whose config to show, as the CLI names it: " + ", ".join(config_mod.CLI_NAMES) + ".",
        ),
    ],
    config: ConfigOpt = None,
    sets: SetOpt = None,
) -> None:
    """Print the resolved config of COMMAND (defaults + file + --set) as YAML.

    For example `optical config show bench longbench`.
    """
    with handled_errors():
        cfg = load(config_mod.schema_name(" ".join(command)), config, sets)
        sys.stdout.write(config_mod.dump_config(cfg))


@app.command("validate")
def config_validate(
    files: Annotated[list[Path], typer.Argument(metavar="FILES", help="Config files to check.")],
    command: Annotated[
        Optional[str],
        typer.Option(
            "--command",
            help="Command whose schema to check against, e.g. 'bench longbench' (default: judged by file name).",
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Check config files against their command's schema; exit 2 if any is invalid."""
    results = []
    for path in files:
        name = command
        try:
            name = config_mod.schema_name(command) if command else config_mod.command_for_file(path)
            if name is None:
                raise OpticalError(
                    f"{path}: cannot tell which command this config is for; pass --command "
                    f"({', '.join(config_mod.CLI_NAMES)})"
                )
            config_mod.load_config(name, path)
            results.append({"file": str(path), "command": name, "ok": True})
            say("ok", "green", f"{path} ({name})")
        except OpticalError as exc:
            results.append({"file": str(path), "command": name, "ok": False, "error": str(exc)})
            say("error", "red", str(exc))
    if json_out:
        emit_json(results)
    if not all(r["ok"] for r in results):
        raise typer.Exit(2)
