"""`optical config show|validate`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..config import registry
from ..errors import OpticalError
from ..reports.console import emit_json, say, warn
from .common import ConfigOpt, JsonOpt, SetOpt, handled_errors, load

app = typer.Typer(help="Show and validate config files.", no_args_is_help=True)


@app.command("show")
def config_show(
    command: Annotated[
        list[str],
        typer.Argument(
            metavar="COMMAND",
            help="Command whose config to show, by its config key or as the CLI names it: "
            + ", ".join(registry.known_names())
            + ".",
        ),
    ],
    config: ConfigOpt = None,
    sets: SetOpt = None,
) -> None:
    """Print the resolved config of COMMAND (defaults + file + --set) as YAML.

    For example `optical config show bench longbench` (or `optical config show longbench`).
    """
    with handled_errors():
        resolved = registry.resolve(" ".join(command))
        if resolved.note:
            warn(resolved.note)
        sys.stdout.write(registry.dump_config(load(resolved.key, config, sets)))


@app.command("validate")
def config_validate(
    files: Annotated[list[Path], typer.Argument(metavar="FILES", help="Config files to check.")],
    command: Annotated[
        Optional[str],
        typer.Option(
            "--command",
            help="Command whose schema to check against, e.g. 'bench longbench' (default: the file's stem, which "
            "names its command's config: index.yaml, tiny/longbench.yaml).",
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Check config files against their command's schema; exit 2 if any is invalid."""
    results = [_validate_one(path, command) for path in files]
    if json_out:
        emit_json(results)
    if not all(r["ok"] for r in results):
        raise typer.Exit(2)


def _validate_one(path: Path, command: Optional[str]) -> dict:
    name = command
    try:
        resolved = registry.resolve(command) if command else registry.resolve_file(path)
        if resolved is None:
            raise OpticalError(
                f"{path}: its name names no command's config; name the file after its command "
                f"({', '.join(f'{key}.yaml' for key in registry.COMMANDS)}) or pass --command"
            )
        if resolved.note:
            warn(resolved.note)
        name = resolved.key
        registry.load_config(name, path)
        say("ok", "green", f"{path} ({name})")
        return {"file": str(path), "command": name, "ok": True}
    except OpticalError as exc:
        say("error", "red", str(exc))
        return {"file": str(path), "command": name, "ok": False, "error": str(exc)}
