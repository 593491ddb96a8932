"""What every command shares: options, error handling, run directories, JSON and progress output.

Human output and progress go to stderr; ``--json`` prints one JSON document (or JSON lines
for streams) to stdout. Exit codes: 0 success, 1 failed run, 2 bad usage, config or input.
Under ``accelerate launch`` only the main process reports (tables, JSON, progress, the run
directory's manifest); every process prints its own errors.
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Iterator, Optional

import typer
from rich.markup import escape

from ..artifacts import FollowerRun, OutputDir, Run, claim_output_dir, start_run
from ..config import registry
from ..config.resume import check_same_settings
from ..config.validation import with_values
from ..errors import InputError, OpticalError, RunFailed
from ..launch import is_main_process, single_process_warning
from ..lists import split_list
from ..reports.console import emit_json, err, print_table, say, warn

if TYPE_CHECKING:  # the command layer imports torch (through distributed) only when a command runs
    from ..distributed import Processes


@functools.lru_cache(maxsize=None)
def _shipped_config(command: str) -> Any:
    return registry.load_config(command, None, [])


def config_default(command: str, key: str) -> str:
    """For ``--help``: where a flag's default comes from and its value in the command's shipped
    config, e.g. ``bench.num_samples=50 in the config``; --config and --set change it."""
    try:
        value = _shipped_config(command)
        for part in key.split("."):
            value = getattr(value, part)
    except Exception:  # noqa: BLE001 - a broken shipped config must not break --help
        return f"{key} in the config"
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value) or "none"
    return f"{key}={'null' if value is None else value} in the config"


def config_option(command: str, key: str, *names: str, help: str) -> Any:
    """A flag that sets config key ``key``: its --help names the default in the command's shipped config."""
    return typer.Option(*names, help=help, show_default=config_default(command, key))


# Options every command shares

ConfigOpt = Annotated[
    Optional[Path], typer.Option("--config", "-c", help="YAML config (default: the command's file in configs/).")
]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", metavar="KEY=VALUE", help="Override a config key: --set key.path=value (repeatable)."),
]
OutputDirOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--output-dir",
        "-o",
        help="Write artifacts directly into this directory instead of results/<command>/<run>/ (a new or empty one; "
        "see --overwrite).",
        show_default=False,
    ),
]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Replace the run already in --output-dir (its files are deleted first).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON to stdout.")]
DryRunOpt = Annotated[
    bool,
    typer.Option(
        "--dry-run",
        help="Build the models on the meta device and print the memory plan (parameters, weight bytes, KV cache, "
        "activations, peak per device per layout); reads no weights, writes nothing.",
    ),
]
DeviceMemoryOpt = Annotated[
    Optional[float],
    typer.Option(
        "--device-memory",
        metavar="GIB",
        min=0.001,
        help="With --dry-run: the memory of one device in GiB, for a fits / does-not-fit verdict per layout.",
    ),
]
DevicesOpt = Annotated[
    int,
    typer.Option(
        "--devices",
        min=1,
        help="With --dry-run: N, the number of devices for the DDP, FSDP and tensor-parallel layouts.",
    ),
]


@contextlib.contextmanager
def handled_errors() -> Iterator[None]:
    """One line and exit 2 for a user's mistake, one line and exit 1 for a failed run."""
    try:
        yield
    except OpticalError as exc:
        say("error", "bold red", str(exc))
        raise typer.Exit(exc.exit_code) from None
    except RunFailed as exc:
        say("run failed", "bold red", str(exc))
        raise typer.Exit(exc.exit_code) from None
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None
    except Exception as exc:
        if os.environ.get("OPTICAL_DEBUG"):
            raise
        say("run failed", "bold red", f"{type(exc).__name__}: {exc} (set OPTICAL_DEBUG=1 for the traceback)")
        raise typer.Exit(1) from None


def load(command: str, config: Optional[Path], sets: Optional[list[str]]) -> Any:
    return registry.load_config(command, config, sets or [])


ALL = object()  # a flag value meaning "no limit": the config's null (``--limit 0``)


def all_if_zero(value: Optional[int]) -> Any:
    """``--limit 0`` means every item: the one place that says so."""
    return ALL if value == 0 else value


def split_csv(value: Optional[str], option: str, example: str) -> Optional[list[str]]:
    """A comma-separated flag as a list (None when the flag was not given), by the one rule (lists.py)."""
    return None if value is None else split_list(value, option, example)


def with_flags(cfg: Any, flags: dict[str, tuple[str, Any]]) -> Any:
    """The command's flags folded into its config, the one way every command does it:
    ``{"--num-samples": ("bench.num_samples", 5)}``; a flag not given (None) changes nothing, ``ALL``
    sets null. Validated like the file, so config.yaml records what ran and a bad value names its flag."""
    given = {flag: (key, value) for flag, (key, value) in flags.items() if value is not None}
    values = {key: None if value is ALL else value for key, value in given.values()}
    where = {key: f"{flag} {_shown(value)}" for flag, (key, value) in given.items()}
    return with_values(cfg, values, where)


def _shown(value: Any) -> str:
    if value is ALL:
        return "0"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def claim_output(
    command: str, output_dir: Optional[Path], *, resume: bool = False, overwrite: bool = False, resumable: bool = True
) -> OutputDir:
    """Check --output-dir (with --resume / --overwrite) before any work: see artifacts.claim_output_dir."""
    return claim_output_dir(command, output_dir, resume=resume, overwrite=overwrite, resumable=resumable)


def check_resumable(claim: OutputDir, cfg: Any, schema: str, allowed: set[str]) -> None:
    """--resume continues the run in --output-dir under the same settings but for ``allowed`` keys
    (``schema``: the config's command name, e.g. longbench)."""
    if not claim.resuming:
        return
    saved = claim.path / "config.yaml"
    if not saved.is_file():
        raise InputError(
            f"--resume: {saved} is missing, so the settings of the run cannot be checked; "
            "choose another --output-dir, or --overwrite to start over there"
        )
    finished = (claim.previous or {}).get("status") == "ok"
    check_same_settings(load(schema, saved, None), cfg, allowed, finished=finished)


def report_resume(found: str) -> None:
    """What a resume found, e.g. '8 of 18 cells done'."""
    if is_main_process():
        err.print(f"[cyan]resuming:[/] {escape(found)}")


def reuse_attention_choices(claim: OutputDir, attention: str, more: list[dict] | None = None) -> int:
    """On --resume with ``deepencoder.attention: auto``, take the paths the earlier run chose (its
    manifest, plus ``more`` records found elsewhere, e.g. shard headers) so its features are
    reproduced exactly; before the encoder first runs. Returns how many view shapes were taken."""
    if attention != "auto" or not claim.resuming:
        return 0
    from ..models.deepencoder import seed_auto_choices

    return seed_auto_choices(((claim.previous or {}).get("attention_auto") or []) + (more or []))


def attention_record(attention: str) -> dict[str, Any]:
    """For the manifest: what ``auto`` chose per view shape (nothing when a path is pinned)."""
    if attention != "auto":
        return {}
    from ..models.deepencoder import auto_choices

    return {"attention_auto": auto_choices()}


def join_processes(device: str) -> Processes:
    """This run's processes (several under ``accelerate launch``), joined on ``runtime.device``."""
    from ..devices import resolve_device
    from ..distributed import join

    warning = single_process_warning()
    if warning:
        warn(warning)
    return join(resolve_device(device))


@contextlib.contextmanager
def run_dir(
    command: str,
    cfg: Any,
    claim: OutputDir,
    name: str | None = None,
    procs: Processes | None = None,
    device: str | None = None,
) -> Iterator[Run | FollowerRun]:
    """The run directory of ``command`` (e.g. ``bench longbench``) as ``claim`` decided: the main
    process creates it and keeps its manifest; under a launcher the other processes get its path
    and write their artifacts into it. ``device``: the device the run uses (default: the config's
    ``runtime.device``, resolved)."""
    if procs is not None and not procs.is_main:
        yield FollowerRun(Path(procs.broadcast(None)))
        return
    runtime = getattr(cfg, "runtime", None)
    if device is None and runtime is not None:
        from ..devices import resolve_device

        device = str(resolve_device(runtime.device))
    with start_run(
        command,
        registry.dump_config(cfg),
        output_dir=claim,
        name=name,
        seed=getattr(runtime, "seed", None),
        device=device,
    ) as run:
        if procs is not None:
            procs.broadcast(str(run.path))
        yield run
    err.print(f"[dim]artifacts: {escape(str(run.path))}[/]")


def report_plan(plan: dict, json_out: bool) -> None:
    """A --dry-run memory plan: a table on stderr, the JSON document on stdout with --json."""
    from ..plan import plan_rows

    print_table(f"memory plan: {plan['command']} (no weights read, {plan['seconds']:.1f} s)", plan_rows(plan))
    for note in plan["notes"]:
        err.print(escape(note), soft_wrap=True)
    if json_out:
        emit_json(plan)
