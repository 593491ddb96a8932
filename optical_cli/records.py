"""One append-only record log for every long run: bench items, both sweeps' cells, training metrics.

A log is a JSON-lines file written one record at a time: the record, then its newline, then an fsync.
The newline is the commit point. JSON escapes every newline inside a value, so a line holds exactly one
record, and whatever follows the last newline is a record a crash tore mid-write. One repair rule:

- reading skips that torn tail (the run that was killed had not finished that record);
- the first append of a process cuts it off first, so the new record starts on a line of its own and a
  resumed run never writes onto the torn one.

A line before the tail that does not parse is damage nobody should paper over: an ``InputError`` that
names the file and line. :class:`KeyedLog` adds what resumable grids need on top: records keyed by
their cell, an optional fingerprint of the setup, and a refusal to mix setups.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable

from .artifacts import atomic_write_text, to_json_line
from .errors import InputError

_RESTORE = "something other than optical changed the log: restore it, or start the run again in a new --output-dir"


class RecordLog:
    """Records in a JSON-lines file, appended one at a time and read back whatever a crash left."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._repaired = False

    def read(self) -> list[dict[str, Any]]:
        """Every committed record in order; a torn last line is not one."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        try:
            committed = data[: data.rfind(b"\n") + 1].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"{self.path}: damaged log (not UTF-8 at byte {exc.start}); {_RESTORE}") from None
        records = []
        for number, line in enumerate(committed.split("\n")[:-1], start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{self.path}:{number}: damaged record ({exc.msg}); {_RESTORE}") from None
            records.append(record)
        return records

    def append(self, record: dict[str, Any]) -> None:
        """Commit one record: on disk (fsynced) when this returns."""
        if not self._repaired:
            self.repair()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as handle:
            handle.write((to_json_line(record) + "\n").encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())

    def repair(self) -> int:
        """Cut off a torn last line; returns the bytes removed (0 when the log was whole)."""
        self._repaired = True
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return 0
        with open(self.path, "rb+") as handle:
            keep = _committed_size(handle, size)
            if keep < size:
                handle.truncate(keep)
                handle.flush()
                os.fsync(handle.fileno())
        return size - keep

    def rewrite(self, records: Iterable[dict[str, Any]]) -> None:
        """Replace the whole log at once (atomically): a log cut back to a checkpoint, or merged parts."""
        atomic_write_text(self.path, "".join(to_json_line(record) + "\n" for record in records))
        self._repaired = True

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
        self._repaired = True


def _committed_size(handle, size: int, block: int = 1 << 16) -> int:
    """Bytes up to and including the last newline of an open file of ``size`` bytes."""
    end = size
    while end > 0:
        start = max(0, end - block)
        handle.seek(start)
        chunk = handle.read(end - start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end = start
    return 0


class KeyedLog:
    """A :class:`RecordLog` of a grid's cells: ``key(record)`` names a record's cell, the last record of a
    cell wins, and with a ``fingerprint`` (a digest of everything the numbers depend on) a resume
    against another setup is refused. A fresh (not resumed) run starts from an empty log."""

    def __init__(
        self,
        path: str | Path,
        key: Callable[[dict], Hashable],
        *,
        resume: bool,
        fingerprint: str | None = None,
    ):
        self.log = RecordLog(path)
        self.key = key
        self.fingerprint = fingerprint
        self.records: dict[Hashable, dict] = {}
        if not resume:
            self.log.clear()
            return
        for record in self.log.read():
            if fingerprint is not None and record.get("fingerprint") != fingerprint:
                raise InputError(
                    f"--resume: {self.log.path} holds results of a different setup (corpus, queries, weights or "
                    "seed changed); use a new --output-dir or run without --resume"
                )
            self.records[key(record)] = record

    def done(self, key: Hashable) -> bool:
        return key in self.records

    def add(self, record: dict) -> dict:
        if self.fingerprint is not None:
            record = {**record, "fingerprint": self.fingerprint}
        self.log.append(record)
        self.records[self.key(record)] = record
        return record


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The committed records of any JSON-lines file optical writes (a log, layout.jsonl, pages.jsonl)."""
    return RecordLog(path).read()


def count_done(path: str | Path, key: Callable[[dict], Hashable], wanted: Iterable[Hashable]) -> int:
    """How many of ``wanted`` cells a log already holds (what a resume reports before it starts)."""
    return len(set(wanted) & {key(record) for record in RecordLog(path).read()})
