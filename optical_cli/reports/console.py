"""What the CLI prints and how: human output (tables, progress bars, warnings) to stderr, ``--json`` documents
and JSON lines to stdout. Under ``accelerate launch`` only the main process prints. The commands and the
report printers (:mod:`optical_cli.reports`) use this; domain modules never print."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from ..artifacts import to_json_line
from ..launch import is_main_process

err = Console(stderr=True, highlight=False)


def random_weights_banner(consequence: str) -> None:
    """The banner every command prints when its models are random: ``consequence`` says what its output is."""
    err.print(f"[bold yellow]RANDOM WEIGHTS: {escape(consequence)}[/]", soft_wrap=True)


def say(label: str, style: str, message: str) -> None:
    """One line on stderr: a styled label, then the message as plain text (user text such as
    paths, ids or ``pip install 'optical[dev]'`` must never be read as Rich markup)."""
    err.print(f"[{style}]{label}:[/] {escape(message)}", soft_wrap=True)


def warn(message: str) -> None:
    say("warning", "yellow", message)


def emit_json(document: Any) -> None:
    if is_main_process():
        sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False, default=str) + "\n")
        sys.stdout.flush()


def emit_json_line(record: dict) -> None:
    if is_main_process():
        sys.stdout.write(to_json_line(record) + "\n")
        sys.stdout.flush()


@contextlib.contextmanager
def progress_bar(description: str, total: int | None = None) -> Iterator[Callable[..., None]]:
    """A Rich progress bar on stderr; yields ``advance(n=1, total=None, description=None)``.

    The bar appears at the first ``advance``: work that fails before it has begun (a broken input
    file, say) prints its error alone, not under an empty bar."""
    if not is_main_process():
        yield lambda n=1, total=None, description=None: None
        return
    progress = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )
    task = None

    def advance(n: int = 1, total: int | None = None, description: str | None = None) -> None:
        nonlocal task
        if task is None:
            progress.start()
            task = progress.add_task(escape(description or first_description), total=first_total)
        fields = {}
        if total is not None:
            fields["total"] = total
        if description is not None:
            fields["description"] = escape(description)
        progress.update(task, advance=n, **fields)

    first_description, first_total = description, total
    try:
        yield advance
    finally:
        if task is not None:
            progress.stop()


def print_table(title: str, rows: list[tuple[str, Any]]) -> None:
    if not is_main_process():
        return
    table = Table(title=escape(title), show_header=False, title_justify="left")
    table.add_column("key", style="bold")
    table.add_column("value", justify="right")
    for key, value in rows:
        table.add_row(escape(key), escape(f"{value:.4g}" if isinstance(value, float) else str(value)))
    err.print(table)
