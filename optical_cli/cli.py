"""The `optical` command line: the Typer app and its command groups.

Each command lives in :mod:`optical_cli.commands` (one module per group: parse the flags,
call the domain, report); the options and error handling they share are in
:mod:`optical_cli.commands.common`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from .commands import bench, config, encode, index, render, serve, sweep, train
from .launch import end_launched_process, launched_count

app = typer.Typer(
    name="optical",
    help="Compress information before a model sees it: optical context compression and energy-informed vector search.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"optical {version('optical')}")
        except PackageNotFoundError:  # run from a source tree that was never installed
            typer.echo("optical (not installed: version unknown)")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Compress information before a model sees it: optical context compression and energy-informed vector search."""


app.command("render")(render.render)
app.command("encode")(encode.encode)
app.command("train-adapter")(train.train_adapter_command)
app.command("export-adapter")(train.export_adapter_command)
app.add_typer(bench.app, name="bench")
app.command("serve", context_settings=serve.PASSTHROUGH)(serve.serve_command)
app.command("ask")(serve.ask_command)
app.command("export-model")(serve.export_model_command)
app.add_typer(index.app, name="index")
app.add_typer(sweep.app, name="sweep")
app.add_typer(config.app, name="config")


def main() -> None:
    if launched_count() == 1:
        app()
        return
    try:
        app()
    except SystemExit as finished:
        end_launched_process(finished.code)
    end_launched_process(0)


if __name__ == "__main__":
    main()
