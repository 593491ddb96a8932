"""One rule for --output-dir, --resume and --overwrite, the same for every command (artifacts.claim_output_dir)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from optical_cli.artifacts import claim_output_dir, start_run
from optical_cli.cli import app
from optical_cli.config.registry import dump_config, load_config
from optical_cli.errors import InputError

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def render_run(tmp_path):
    out = tmp_path / "render-run"
    result = invoke("render", "-o", out, "--set", "render.mode=tiny", "--set", "render.tokenizer=none")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def no_embedding(monkeypatch):
    """Any command that got as far as reading (and embedding) its corpus fails the test: refusals come first."""
    from optical_cli.index import pipeline
    from optical_cli.sweep import diffusion

    def refuse(*args, **kwargs):
        raise AssertionError("the command read its corpus before checking --output-dir")

    monkeypatch.setattr(diffusion, "read_sweep_inputs", refuse)
    monkeypatch.setattr(pipeline, "corpus_vectors", refuse)


def test_another_commands_run_is_refused_and_left_byte_identical(render_run, no_embedding):
    before = snapshot(render_run)
    for command in (["sweep", "diffusion"], ["index", "build-energy"], ["sweep", "diffusion", "--resume"]):
        result = invoke(*command, "-o", render_run)
        assert result.exit_code == 2, result.output
        assert "holds an `optical render` run" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    encoded = invoke("encode", "--config", "configs/tiny/encode.yaml", "-i", render_run, "-o", render_run)
    assert encoded.exit_code == 2 and "`optical render` run, not `optical encode`" in encoded.stderr
    assert snapshot(render_run) == before


def finished_sweep(path, **changes):
    """A finished `sweep diffusion` run directory as the CLI leaves one (its cells need not be real here)."""
    cfg = load_config("diffusion", "configs/tiny/diffusion.yaml")
    with start_run("sweep diffusion", dump_config(cfg), output_dir=path) as run:
        (run.path / "cells.jsonl").write_text(
            json.dumps({"method": "energy", "eta": 0.1, "steps": 4, "fingerprint": "x"}) + "\n"
        )
    return path


def test_resume_with_changed_settings_is_refused_before_the_corpus_is_read(tmp_path, no_embedding):
    run = finished_sweep(tmp_path / "sweep")
    before = snapshot(run)
    result = invoke(
        "sweep", "diffusion", "-c", "configs/tiny/diffusion.yaml", "-o", run, "--resume", "--set", "build.neighbor_k=5"
    )
    assert result.exit_code == 2 and "build.neighbor_k" in result.stderr, result.output
    plain = invoke("sweep", "diffusion", "-c", "configs/tiny/diffusion.yaml", "-o", run)
    assert plain.exit_code == 2 and "finished `optical sweep diffusion` run; pass --resume" in plain.stderr
    assert snapshot(run) == before


@pytest.mark.parametrize(
    "command",
    [
        ["encode", "--config", "configs/tiny/encode.yaml", "--text", "data/sample/optical_compression.md"],
        ["sweep", "diffusion", "--config", "configs/tiny/diffusion.yaml"],
        ["bench", "longbench", "--config", "configs/tiny/longbench.yaml"],
    ],
)
@pytest.mark.parametrize("state", ["missing", "empty"])
def test_resume_with_nothing_to_resume_is_exit_2(tmp_path, command, state, no_embedding):
    out = tmp_path / "out"
    if state == "empty":
        out.mkdir()
    result = invoke(*command, "--resume", "-o", out)
    assert result.exit_code == 2 and "nothing to resume" in result.stderr, result.output
    assert (out.exists() and not any(out.iterdir())) if state == "empty" else not out.exists()


def test_train_adapter_resume_of_a_directory_without_a_run(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.yaml").write_text(dump_config(load_config("train-adapter", "configs/tiny/train-adapter.yaml")))
    result = invoke("train-adapter", "--resume", out)
    assert result.exit_code == 2 and "holds no optical run" in result.stderr


def test_overwrite_replaces_another_commands_run(render_run):
    run = finished_sweep(render_run.parent / "sweep")
    result = invoke("render", "-o", run, "--set", "render.mode=tiny", "--set", "render.tokenizer=none", "--overwrite")
    assert result.exit_code == 0, result.output
    assert not (run / "cells.jsonl").exists() and json.loads((run / "manifest.json").read_text())["command"] == "render"


def test_foreign_files_are_never_deleted(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    for extra in ([], ["--overwrite"]):
        result = invoke("render", "-o", folder, "--set", "render.tokenizer=none", *extra)
        assert result.exit_code == 2 and "holds no optical run" in result.stderr
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_a_live_run_is_never_touched(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with start_run("render", "", output_dir=tmp_path / "run") as run:
            pass
        manifest = json.loads((run.path / "manifest.json").read_text())
        (run.path / "manifest.json").write_text(json.dumps({**manifest, "status": "running", "pid": live.pid}))
        for flag in ([], ["--overwrite"]):
            result = invoke("render", "-o", run.path, "--set", "render.tokenizer=none", *flag)
            assert result.exit_code == 2 and f"pid {live.pid}" in result.stderr and "still writing" in result.stderr
    finally:
        live.kill()
        live.wait()


def test_usage_mistakes_about_the_directory_are_exit_2(tmp_path):
    afile = tmp_path / "a-file"
    afile.write_text("x")
    under = invoke("render", "-o", afile / "sub", "--set", "render.tokenizer=none")
    assert under.exit_code == 2 and "is a file, so no directory can be made under it" in under.stderr
    itself = invoke("render", "-o", afile, "--set", "render.tokenizer=none")
    assert itself.exit_code == 2 and "is a file, not a directory" in itself.stderr
    both = invoke(
        "encode",
        "--config",
        "configs/tiny/encode.yaml",
        "--text",
        afile,
        "-o",
        tmp_path / "x",
        "--resume",
        "--overwrite",
    )
    assert both.exit_code == 2 and "contradict" in both.stderr


def test_claim_reads_earlier_versions_command_names(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"command": "longbench", "status": "ok", "started_at": "then"}))
    assert claim_output_dir("bench longbench", folder, resume=True).mode == "resume"
    with pytest.raises(InputError, match="`optical bench longbench` run, not `optical sweep diffusion`"):
        claim_output_dir("sweep diffusion", folder)
