"""`optical serve` as the parent of vLLM's server, without vLLM (serving/supervisor.py, lifeline.py):
a fake server stands in for vLLM's API server and forks an "engine" as vLLM does. kill -9 of the
supervisor leaves no process behind; SIGTERM drains (the flag file first, then one SIGTERM) and
exits 0; the child's own failure is the exit status. The real server: tests/test_vllm_operations.py."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from optical_cli import lifeline
from optical_cli.serving.supervisor import LAUNCH_ENV, ServerLaunch

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux's")

# The fake server: arms the lifeline as our vLLM plugin does, forks an "engine" that sleeps, writes
# both pids, and on SIGTERM notes whether the drain flag existed, "drains" for a second, exits CODE.
FAKE_SERVER = textwrap.dedent(
    """
    import os, signal, sys, time
    from optical_cli import lifeline
    out, code = sys.argv[1], int(sys.argv[2])
    lifeline.arm()
    engine = os.fork()
    if engine == 0:
        time.sleep(120)
        os._exit(0)
    def stop(number, frame):
        flag = os.environ.get("OPTICAL_DRAIN_FILE", "")
        open(out + ".term", "w").write("flag" if flag and os.path.exists(flag) else "no flag")
        time.sleep(1)
        os.kill(engine, signal.SIGKILL)
        os._exit(0)
    signal.signal(signal.SIGTERM, stop)
    open(out, "w").write(f"{os.getpid()} {engine}")
    if code:
        os.kill(engine, signal.SIGKILL)
        os._exit(code)
    time.sleep(120)
    """
)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def start(tmp_path, code=0, drain_s=5) -> tuple[subprocess.Popen, Path]:
    out = tmp_path / "pids"
    script = tmp_path / "fake_server.py"
    script.write_text(FAKE_SERVER)
    launch = ServerLaunch(
        argv=[sys.executable, str(script), str(out), str(code)],
        environment={lifeline.LIFELINE_ENV: "1"},
        model_dir=tmp_path,
        url="http://127.0.0.1:1",
        lora_model=None,
        shutdown_timeout_s=drain_s,
    )
    env = {**os.environ, LAUNCH_ENV: launch.to_json()}
    process = subprocess.Popen(
        [sys.executable, "-m", "optical_cli.serving.supervisor"],
        env=env,
        start_new_session=True,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not (out.is_file() and len(out.read_text().split()) == 2) and process.poll() is None:
        assert time.monotonic() < deadline, "the fake server did not start"
        time.sleep(0.1)
    return process, out


def pids(out: Path) -> list[int]:
    return [int(p) for p in out.read_text().split()]


def wait_gone(processes: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while any(alive(p) for p in processes) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [p for p in processes if alive(p)]


def test_kill_9_of_the_supervisor_takes_the_server_and_its_engine_with_it(tmp_path):
    process, out = start(tmp_path)
    server, engine = pids(out)
    assert alive(server) and alive(engine)
    process.kill()
    process.wait(10)
    assert wait_gone([server, engine], 5) == []


def test_sigterm_raises_the_drain_flag_then_stops_the_server_and_exits_0(tmp_path):
    process, out = start(tmp_path)
    server, engine = pids(out)
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    assert Path(str(out) + ".term").read_text() == "flag"  # 503s began before vLLM was told to stop
    assert wait_gone([server, engine], 5) == []
    assert "draining" in process.stderr.read().decode()


def test_the_servers_own_failure_is_the_exit_status(tmp_path):
    process, out = start(tmp_path, code=3)
    assert process.wait(30) == 3


def test_a_process_armed_before_its_parent_died_goes_too(tmp_path):
    """The at-fork hook: a child forked after arm() dies with its parent, as vLLM's engine core does
    when its API server is killed (spawned children arm themselves in the plugin)."""
    out = tmp_path / "child"
    code = textwrap.dedent(
        f"""
        import os, time
        from optical_cli import lifeline
        lifeline.arm()
        child = os.fork()
        if child == 0:
            time.sleep(120)
            os._exit(0)
        open({str(out)!r}, "w").write(str(child))
        time.sleep(120)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, lifeline.LIFELINE_ENV: "1"})
    deadline = time.monotonic() + 30
    while not (out.is_file() and out.read_text()):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    child = int(out.read_text())
    parent.kill()
    parent.wait(10)
    assert wait_gone([child], 5) == []


def test_the_launch_travels_without_the_key(tmp_path, monkeypatch):
    launch = ServerLaunch(["x"], {}, tmp_path, "u", None, names=["a", "b"], api_key_env="SOME_VARIABLE")
    assert ServerLaunch.from_json(launch.to_json()) == launch
    assert json.loads(launch.to_json())["api_key_env"] == "SOME_VARIABLE"
