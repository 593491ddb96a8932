"""Atomic writes, run directories and manifests."""

import json

import pytest

from optical_cli import artifacts
from optical_cli.artifacts import atomic_path, atomic_write_json, atomic_write_text, start_run


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "a.txt"
    atomic_write_text(path, "old")
    atomic_write_text(path, "new")
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_interrupted_write_leaves_old_file_and_no_temp(tmp_path):
    path = tmp_path / "a.json"
    atomic_write_json(path, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text('{"v": 2, "partial')
            raise RuntimeError("crash mid-write")
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_interrupted_first_write_leaves_nothing(tmp_path):
    path = tmp_path / "new.bin"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_keeps_suffix_for_format_sniffing(tmp_path):
    with atomic_path(tmp_path / "x.png") as tmp:
        assert tmp.suffix == ".png"
        assert tmp.parent == tmp_path and tmp.name != "x.png"  # same directory, so the rename is atomic
        assert not (tmp_path / "x.png").exists()  # nothing at the final name until the block ends
        tmp.write_bytes(b"png")
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"] and (tmp_path / "x.png").read_bytes() == b"png"


def test_run_dir_layout_and_manifest(tmp_path):
    with start_run("render", "a: 1\n", seed=3, device="cpu") as run:
        atomic_write_text(run.file("out.txt"), "x")
    assert run.path.parent == artifacts.RESULTS_DIR / "render"
    manifest = json.loads((run.path / "manifest.json").read_text())
    assert manifest["status"] == "ok" and manifest["seed"] == 3 and manifest["device"] == "cpu"
    assert manifest["artifacts"] == ["out.txt"] and manifest["ended_at"]
    assert "torch" in manifest["versions"] and "argv" in manifest
    assert (run.path / "config.yaml").read_text() == "a: 1\n"


def test_failed_run_still_writes_manifest(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError):
        with start_run("render", "", output_dir=out):
            raise ValueError("boom")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "boom" in manifest["error"]


def test_two_runs_in_the_same_second_get_distinct_dirs():
    with start_run("x", "") as first, start_run("x", "") as second:
        assert first.path != second.path


def test_atomic_write_gives_usual_permissions(tmp_path):
    import os
    import stat

    path = atomic_write_text(tmp_path / "a.txt", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask


def test_user_jsonl_names_the_bad_line(tmp_path):
    from optical_cli.artifacts import iter_jsonl_objects
    from optical_cli.errors import InputError

    path = tmp_path / "in.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert list(iter_jsonl_objects(path)) == [(1, {"a": 1}), (3, {"a": 2})]
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(InputError, match=r"in.jsonl:2: each line must be a JSON object, got list"):
        list(iter_jsonl_objects(path))
    path.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(InputError, match=r"in.jsonl:2: invalid JSON"):
        list(iter_jsonl_objects(path))
    path.write_bytes(b'{"a": 1}\n{"a": "\xff"}\n')
    with pytest.raises(InputError, match="not UTF-8"):
        list(iter_jsonl_objects(path))


def test_atomic_write_csv_header_from_first_row(tmp_path):
    import csv

    from optical_cli.artifacts import atomic_write_csv

    path = atomic_write_csv(tmp_path / "rows.csv", [{"a": 1, "b": "x,y"}, {"a": 2.5, "b": ""}])
    with open(path, newline="") as handle:
        assert list(csv.DictReader(handle)) == [{"a": "1", "b": "x,y"}, {"a": "2.5", "b": ""}]
    assert [p.name for p in tmp_path.iterdir()] == ["rows.csv"]  # no temporary left behind
