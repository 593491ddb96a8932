"""Run directories, atomic writes, append-only records and the run manifest.

Every write of a finished artifact goes through a temporary file in the same directory
followed by ``os.replace``, so a reader (or a crash) sees the old file or the new one,
never half of one. Long runs append one JSON line per finished item; ``read_jsonl``
ignores a torn last line, so an interrupted run loses at most the item in flight.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from .distributed import launched_count

RESULTS_DIR = Path("results")
KEY_PACKAGES = (
    "optical", "torch", "transformers", "accelerate", "numpy", "scipy", "pandas",
    "Pillow", "pydantic", "safetensors", "sentence-transformers",
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
    import csv
    import io

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


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one record and flush it to disk before returning."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(to_json_line(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read records written by ``append_jsonl``; a torn final line (a crash mid-write) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    lines = path.read_text(encoding="utf-8").split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number >= len(lines) - 1:  # only the last line may be torn
                break
            raise
    return records


def iter_jsonl_objects(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a user's JSONL file.

    Unlike ``read_jsonl`` (our own append-only records), every line must parse: a bad one
    is an ``InputError`` naming the file and line.
    """
    from .errors import InputError

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
                    raise InputError(f"{path}:{number}: invalid JSON ({exc.msg}); each line must be one JSON object") from None
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
    """``results/<command>/<timestamp>-<name>/``, made unique if two runs start in the same second."""
    root = RESULTS_DIR if root is None else root
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = root / _slug(command) / f"{stamp}-{_slug(name or command)}"
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
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    revision = out.stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
        timeout=5, cwd=Path(__file__).resolve().parent,
    )
    return revision + ("-dirty" if dirty.stdout.strip() else "")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class Run:
    """One run's directory and manifest. Use through :func:`start_run`."""

    def __init__(self, command: str, path: Path, config_yaml: str, seed: int | None, device: str | None):
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
            "processes": launched_count(),
            "git_revision": git_revision(),
            "versions": package_versions(),
            "artifacts": [],
        }
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
    output_dir: str | Path | None = None,
    name: str | None = None,
    seed: int | None = None,
    device: str | None = None,
    root: Path | None = None,
) -> Iterator[Run]:
    """Create the run directory, write config and manifest, and close the manifest on exit.

    With ``output_dir`` the files go directly into that directory. On an exception the
    manifest gets status ``failed`` and the error, then the exception propagates.
    """
    path = Path(output_dir) if output_dir is not None else new_run_dir(command, name, root)
    path.mkdir(parents=True, exist_ok=True)
    run = Run(command, path, config_yaml, seed, device)
    try:
        yield run
    except KeyboardInterrupt:
        run.finish("interrupted", "interrupted by the user")
        raise
    except BaseException as exc:  # noqa: BLE001 - recorded, then re-raised
        run.manifest["traceback"] = traceback.format_exc(limit=20)
        run.finish("failed", f"{type(exc).__name__}: {exc}")
        raise
    else:
        if run.manifest["status"] == "running":
            run.finish("ok")
