"""A real `optical serve` for the vLLM tests (make test-vllm): the tiny config on a free localhost
port, with an API key (from a variable, as an operator sets it) and the alias `glyph`. One server
for the whole session (conftest.py's ``optical_server``): the fault tests kill it and start it again
on the same port, and stop it last."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from conftest import REPO_ROOT

TINY = REPO_ROOT / "configs" / "tiny" / "serve.yaml"
OPTICAL = Path(sys.executable).with_name("optical")
KEY_VARIABLE = "OPTICAL_TEST_API_KEY"
KEY = "test-key-7f3a9c1e"  # what the variable holds; the tests check it appears in no log
NAMES = ["optical", "glyph"]
START_TIMEOUT_S = 900  # vLLM's API server and engine start in 1-2 minutes on 2 busy cores


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def config_sets() -> list[str]:
    """The server's settings beyond the tiny config, as ask and the scripts must read them too."""
    return [f"serve.api_key_env={KEY_VARIABLE}", f"serve.served_model_name=[{', '.join(NAMES)}]"]


def session_pids(sid: int) -> list[int]:
    """Every live process of the session ``sid`` (the server's: it starts a new one), wherever reparented."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:  # state, ppid, pgrp, session
            found.append(int(entry.name))
    return found


class ServerProcess:
    def __init__(self, folder: Path, port: int | None = None):
        self.folder = folder
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "OPTICAL_CACHE": str(folder / "cache"), KEY_VARIABLE: KEY}
        self.process: subprocess.Popen | None = None
        self.logs: list[Path] = []

    @property
    def log(self) -> Path:
        return self.logs[-1]

    def start(self, timeout_s: float = START_TIMEOUT_S) -> float:
        """Start and wait for /health; the seconds it took."""
        self.logs.append(self.folder / f"server-{len(self.logs) + 1}.log")
        sets = [arg for item in config_sets() for arg in ("--set", item)]
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [str(OPTICAL), "serve", "-c", str(TINY), "--port", str(self.port), *sets],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                env=self.env,
                start_new_session=True,  # its own session: every process of the server can be found by it
            )
        start = time.monotonic()
        while self.health() != 200:
            if self.process.poll() is not None or time.monotonic() - start > timeout_s:
                raise RuntimeError(f"the server did not come up:\n{self.log.read_text()[-4000:]}")
            time.sleep(1)
        return time.monotonic() - start

    def ensure_up(self) -> "ServerProcess":
        """Up, started again if a fault test stopped it (when the modules run in another order)."""
        if self.health() != 200:
            self.stop()
            self.start()
        return self

    def health(self) -> int | None:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None

    def pids(self) -> list[int]:
        return session_pids(self.process.pid) if self.process is not None else []

    def stop(self) -> None:
        """SIGTERM, then whatever is left of the session gets SIGKILL."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(120)
            except subprocess.TimeoutExpired:
                pass
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.process.poll() is None:
            self.process.wait(30)
