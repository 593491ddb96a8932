"""``optical serve`` as the parent of vLLM's server: what an operator can rely on.

:func:`supervise` replaces the ``optical serve`` process (same pid, the one the operator holds)
with a small Python process that imports nothing heavy (this module runs as ``python -m``; the
launch comes in :data:`LAUNCH_ENV`) and runs vLLM's API server as its child:

- **Nothing outlives it.** The child dies with it, its engine core and workers with the child
  (``optical_cli/lifeline.py``): ``kill -9`` of ``optical serve`` leaves no process holding memory
  or the port, and a new ``optical serve`` on the same port starts at once.
- **SIGTERM drains.** On SIGTERM, SIGINT or SIGHUP a flag file appears (the middleware then answers
  new requests and ``/health`` with 503, so a load balancer looks elsewhere) and vLLM gets one
  SIGTERM: it lets the requests in flight finish for up to ``serve.shutdown_timeout_s`` (its
  ``--shutdown-timeout``), then exits; so do we, with its status (0). A second signal, or a child
  still running ``GRACE_S`` after that time, is killed, and the exit status is 1.
- **The key stays out of sight.** It is read from the variable ``serve.api_key_env`` names and goes
  to the child in ``VLLM_API_KEY``, its environment only: never a command line, never a log.
- **One metrics registry.** Counters of every process of the server (the plugin's, in the engine
  core; the middleware's and the processor's, in the API server) reach ``/metrics`` through
  prometheus_client's multiprocess directory, a fresh one a run (``PROMETHEUS_MULTIPROC_DIR``,
  unless set). It and the drain flag live in a temporary directory of the run, removed at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

from .. import lifeline
from ..errors import InputError
from ..models import loop_guard
from .middleware import DRAIN_ENV

GRACE_S = 30.0  # past the drain time, before the child is killed
LAUNCH_ENV = "OPTICAL_SERVER_LAUNCH"  # the launch, as JSON, for the supervising process
API_KEY_VARIABLE = "VLLM_API_KEY"  # where vLLM's server reads a key that is not on its command line
METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
DRAIN_FLAG = "draining"
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
OURS = (lifeline.LIFELINE_ENV, loop_guard.LOOP_GUARD_ENV)  # set from the config even when the environment has them


@dataclass
class ServerLaunch:
    argv: list[str]
    environment: dict[str, str]  # set for vLLM (a variable already in the environment wins, but OURS)
    model_dir: Path
    url: str
    lora_model: str | None  # the served name of the LoRA module, when one is served
    names: list[str] = field(default_factory=list)  # every name the server answers to (the first: its own)
    api_key_env: str | None = None  # the variable holding the key (its value is read only when starting)
    shutdown_timeout_s: int = 0  # SIGTERM: how long requests in flight may take to finish
    warnings: list[str] = field(default_factory=list)  # what an operator should know before clients arrive

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "model_dir": str(self.model_dir)})

    @classmethod
    def from_json(cls, text: str) -> "ServerLaunch":
        values = json.loads(text)
        return cls(**{**values, "model_dir": Path(values["model_dir"])})


def api_key(variable: str | None, setting: str = "serve.api_key_env") -> str | None:
    """The key held by ``variable`` (what ``setting`` names), or None when no variable is named."""
    if not variable:
        return None
    value = os.environ.get(variable, "")
    if not value.strip():
        raise InputError(
            f"{setting}={variable} names the variable that holds the API key, but {variable} is not set "
            f"in this environment; export {variable}=... (never put the key itself in a config), or unset "
            f"{setting} to go without a key"
        )
    return value.strip()


def child_environment(server: ServerLaunch, state_dir: str) -> dict[str, str]:
    """Our environment, the launch's defaults under it (a variable already set wins; the lifeline and
    the loop guard are ours and always set), the key, the drain flag's path and (unless set) a fresh
    metrics directory, both under ``state_dir``."""
    environment = dict(os.environ)
    environment.pop(LAUNCH_ENV, None)
    for name, value in server.environment.items():
        if name in OURS or name not in environment:
            environment[name] = value
    key = api_key(server.api_key_env)
    if key is not None:
        environment[API_KEY_VARIABLE] = key
    environment[DRAIN_ENV] = os.path.join(state_dir, DRAIN_FLAG)
    if METRICS_DIR_VARIABLE not in environment:
        environment[METRICS_DIR_VARIABLE] = os.path.join(state_dir, "metrics")
        os.makedirs(environment[METRICS_DIR_VARIABLE], exist_ok=True)
    return environment


class Supervisor:
    """Runs ``server`` as a child; :meth:`run` returns the exit status for ``optical serve``."""

    def __init__(self, server: ServerLaunch, report: Callable[[str], None] = lambda line: None):
        self.server = server
        self.report = report
        self.child: subprocess.Popen | None = None
        self.stopping_since: float | None = None
        self.forced = False
        self.state_dir = ""

    def run(self) -> int:
        self.state_dir = tempfile.mkdtemp(prefix="optical-serve-")
        previous = {number: signal.getsignal(number) for number in FORWARDED}
        try:
            environment = child_environment(self.server, self.state_dir)
            for number in FORWARDED:
                signal.signal(number, self._on_signal)
            self.child = subprocess.Popen(
                self.server.argv, env=environment, preexec_fn=partial(lifeline.die_with_parent, os.getpid())
            )
            return self._wait()
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
            if self.child is not None and self.child.poll() is None:
                self.child.kill()
                self.child.wait()
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def _on_signal(self, number: int, frame) -> None:
        if self.child is None or self.child.poll() is not None:
            return
        if self.stopping_since is not None:
            self._kill("a second signal")
            return
        self.stopping_since = time.monotonic()
        self.report(
            f"{signal.Signals(number).name}: new requests are refused; draining the requests in flight "
            f"(up to {self.server.shutdown_timeout_s} s), then stopping"
        )
        with open(os.path.join(self.state_dir, DRAIN_FLAG), "w"):
            pass
        self.child.send_signal(signal.SIGTERM)

    def _kill(self, why: str) -> None:
        self.report(f"{why}: stopping the server now (requests in flight are cut)")
        self.forced = True
        self.child.kill()

    def _wait(self) -> int:
        limit = self.server.shutdown_timeout_s + GRACE_S
        while True:
            try:
                code = self.child.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                late = self.stopping_since is not None and time.monotonic() - self.stopping_since > limit
                if late and not self.forced:
                    self._kill(f"still running {limit:.0f} s after SIGTERM")
        if self.forced:
            return 1
        return 128 - code if code < 0 else code  # killed by a signal we did not send: 128 + its number


def supervise(server: ServerLaunch) -> None:
    """Become the supervising process of ``server`` (this process is replaced; never returns)."""
    api_key(server.api_key_env)  # fails here, in the caller, with one line
    environment = {**os.environ, LAUNCH_ENV: server.to_json()}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", __name__], environment)


def supervise_from_environment() -> int:
    if LAUNCH_ENV not in os.environ:
        print("this module is run by `optical serve` (it supervises the server it prepared)", file=sys.stderr)
        return 2
    server = ServerLaunch.from_json(os.environ.pop(LAUNCH_ENV))

    def report(line: str) -> None:
        print(f"optical serve: {line}", file=sys.stderr, flush=True)

    try:
        return Supervisor(server, report).run()
    except InputError as exc:
        report(f"error: {exc}")
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(supervise_from_environment())
