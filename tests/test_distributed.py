"""Which process this is under a launcher, how a launched process ends, and the warning when
`accelerate launch --cpu` gives one."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from optical_cli.cli import app
from optical_cli.distributed import Processes
from optical_cli.launch import is_main_process, launched_count, single_process_warning

CPU_LAUNCH_OF_ONE = {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


@pytest.fixture
def plain(monkeypatch):
    for name in (
        "WORLD_SIZE",
        "RANK",
        "PMI_SIZE",
        "PMI_RANK",
        "OMPI_COMM_WORLD_SIZE",
        "OMPI_COMM_WORLD_RANK",
        "ACCELERATE_USE_CPU",
        "MASTER_ADDR",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_launcher_environment_names_the_processes(plain):
    assert launched_count() == 1 and is_main_process() and single_process_warning() is None
    plain.setenv("WORLD_SIZE", "4")
    plain.setenv("RANK", "3")
    assert launched_count() == 4 and not is_main_process()
    plain.delenv("WORLD_SIZE")
    plain.delenv("RANK")
    plain.setenv("OMPI_COMM_WORLD_SIZE", "2")  # mpirun, as accelerate launch --cpu drives it
    assert launched_count() == 2
    alone = Processes()
    assert alone.is_main and alone.broadcast("x") == "x" and alone.gather(5) == [5]


def test_a_cpu_launch_that_started_one_process_is_said(plain, tmp_path):
    for name, value in CPU_LAUNCH_OF_ONE.items():
        plain.setenv(name, value)
    assert "--multi_gpu --num_processes N" in single_process_warning()
    plain.setenv("WORLD_SIZE", "2")
    assert single_process_warning() is None
    plain.delenv("WORLD_SIZE")
    image = tmp_path / "p.png"
    from PIL import Image

    Image.new("RGB", (64, 64), "white").save(image)
    result = CliRunner().invoke(
        app,
        [
            "encode",
            "-i",
            str(image),
            "-c",
            str(Path(__file__).parent.parent / "configs" / "tiny" / "encode.yaml"),
            "-o",
            str(tmp_path / "run"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "warning: accelerate launch --cpu started one process" in result.stderr


def _launched_python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "1"}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


def test_a_launched_process_ends_with_its_status_after_every_exit_handler():
    """Under a launcher the CLI ends without the interpreter's teardown (where gloo's threads can
    abort a finished run) but after the atexit handlers, with the command's exit status."""
    handler = "import atexit; atexit.register(lambda: print('handler ran', flush=True)); "
    ended = _launched_python(handler + "from optical_cli.launch import end_launched_process as end; end('bye')")
    assert (ended.returncode, ended.stdout, ended.stderr.strip()) == (1, "handler ran\n", "bye")
    assert (
        _launched_python(handler + "from optical_cli.launch import end_launched_process as end; end(None)").returncode
        == 0
    )
    version = _launched_python(
        "import sys; sys.argv = ['optical', '--version']; from optical_cli.cli import main; main()"
    )
    assert version.returncode == 0 and version.stdout.startswith("optical")
    wrong = _launched_python(
        "import sys; sys.argv = ['optical', 'no-such-command']; from optical_cli.cli import main; main()"
    )
    assert wrong.returncode == 2 and "no-such-command" in wrong.stderr
