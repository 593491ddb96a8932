"""The one record log (records.py): a torn last line is skipped on reading and cut off before the next
append, so a run torn and resumed any number of times holds every record exactly once."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from optical_cli.errors import InputError
from optical_cli.records import KeyedLog, RecordLog, count_done, read_records


def tear(path, keep: int = 7) -> None:
    """What a crash mid-write leaves: the last record cut after ``keep`` bytes, with no newline."""
    data = path.read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    path.write_bytes(data[: start + keep])


def test_a_torn_last_line_is_not_a_record(tmp_path):
    log = RecordLog(tmp_path / "log.jsonl")
    for i in range(3):
        log.append({"i": i, "text": "line one\nline two"})  # newlines inside values stay escaped
    tear(log.path)
    assert [r["i"] for r in RecordLog(log.path).read()] == [0, 1]


def test_a_torn_line_resumed_twice_gives_every_record_once_and_no_error(tmp_path):
    path = tmp_path / "log.jsonl"
    RecordLog(path).append({"i": 0})
    RecordLog(path).append({"i": 1})
    for attempt in (2, 3):  # each attempt: killed mid-write, then resumed by a new process (a new log object)
        tear(path)
        resumed = RecordLog(path)
        done = [r["i"] for r in resumed.read()]
        resumed.append({"i": attempt - 1})  # the torn record is written again
        resumed.append({"i": attempt})
        assert [r["i"] for r in read_records(path)] == sorted(set(done + [attempt - 1, attempt]))
    assert [r["i"] for r in read_records(path)] == [0, 1, 2, 3]
    assert path.read_bytes().endswith(b"\n") and path.read_bytes().count(b"\n") == 4


def test_repair_cuts_a_torn_multibyte_character(tmp_path):
    path = tmp_path / "log.jsonl"
    log = RecordLog(path)
    log.append({"text": "café"})
    path.write_bytes(path.read_bytes() + '{"text": "naïve'.encode()[:-1])  # torn inside the 2-byte ï
    assert RecordLog(path).repair() > 0 and read_records(path) == [{"text": "café"}]


def test_damage_before_the_last_line_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"i": 1}\nnot json\n{"i": 3}\n')
    with pytest.raises(InputError, match=r"log.jsonl:2: damaged record"):
        RecordLog(path).read()


def test_keyed_log_resumes_keeps_the_last_record_of_a_cell_and_refuses_another_setup(tmp_path):
    path = tmp_path / "cells.jsonl"
    log = KeyedLog(path, lambda r: r["cell"], resume=False, fingerprint="a")
    log.add({"cell": 1, "v": 0.1})
    log.add({"cell": 2, "v": 0.2})
    tear(path)
    resumed = KeyedLog(path, lambda r: r["cell"], resume=True, fingerprint="a")
    assert resumed.done(1) and not resumed.done(2)
    resumed.add({"cell": 2, "v": 0.2})
    assert count_done(path, lambda r: r["cell"], [1, 2, 3]) == 2
    with pytest.raises(InputError, match="different setup"):
        KeyedLog(path, lambda r: r["cell"], resume=True, fingerprint="b")
    KeyedLog(path, lambda r: r["cell"], resume=False, fingerprint="b")  # a fresh run starts from nothing
    assert not path.exists()


WRITER = """
import sys, time
from optical_cli.records import RecordLog
log = RecordLog(sys.argv[1])
i = len(log.read())
while True:
    log.append({"i": i, "pad": "x" * 200_000})  # large records: a kill lands inside a write now and then
    i += 1
"""


def test_a_writer_killed_twice_and_torn_leaves_every_record_once(tmp_path):
    path = tmp_path / "log.jsonl"
    for _ in range(2):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)])
        deadline = time.monotonic() + 60
        while (not path.exists() or path.stat().st_size < 1_000_000) and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        tear(path, keep=100_000)  # whether or not the kill tore a write, the last record is torn now
    resumed = RecordLog(path)
    resumed.append({"i": len(resumed.read()), "pad": ""})
    numbers = [r["i"] for r in read_records(path)]
    assert numbers == list(range(len(numbers))) and len(numbers) >= 3
    assert all(json.loads(line) for line in path.read_text().splitlines())
