"""Server processes that die with their parent: no engine left holding memory or a port.

``optical serve`` stays as the parent of vLLM's API server, which starts its engine core (and that
its workers). If a parent is killed with ``kill -9`` it cannot clean up, and its children live on,
reparented to init (measured before this module: the engine core still held 1.39 GB four minutes
after its API server was killed). Linux lets a process ask the kernel to kill it when its parent
dies (``prctl(PR_SET_PDEATHSIG)``); the setting survives ``exec`` but not ``fork``, so:

- the supervisor sets it in its child between fork and exec (:func:`die_with_parent` as
  ``preexec_fn``): the API server dies with ``optical serve``;
- every vLLM process runs the package's plugin entry point (``engines/vllm_plugin.py``), which calls
  :func:`arm` when :data:`LIFELINE_ENV` is set (the supervisor sets it): the process itself dies with its
  parent, and each child it forks does too (an at-fork hook; vLLM forks its engine core and workers
  by default; a spawned child runs the plugin itself).

A parent that died before its child asked is caught by comparing the parent pid with the one the
child was started by. Elsewhere than Linux this is a no-op (the supervisor still stops its child
on SIGTERM). Imports nothing heavy: the supervisor and the plugin both use it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

LIFELINE_ENV = "OPTICAL_DIE_WITH_PARENT"  # "1": every vLLM process of this server dies with its parent
PR_SET_PDEATHSIG = 1

_forking_parent: int | None = None  # the pid that forked us (set just before a fork)
_armed = False


def die_with_parent(parent: int | None = None) -> bool:
    """Ask the kernel to SIGKILL this process when its parent dies; if ``parent`` (the pid that
    started us) is already gone, die now. False where the kernel has no such call."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)  # the parent died before we asked: go as it would have made us
    return True


def _before_fork() -> None:
    global _forking_parent
    _forking_parent = os.getpid()


def _after_fork_in_child() -> None:
    die_with_parent(_forking_parent)


def arm() -> None:
    """In a process of the server (:data:`LIFELINE_ENV` set): die with the parent, and make every child
    forked from here do the same. Idempotent."""
    global _armed
    if os.environ.get(LIFELINE_ENV) != "1" or _armed:
        return
    _armed = True
    die_with_parent(_started_by())
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


def _started_by() -> int | None:
    """The pid that started this process, when it is a multiprocessing child (spawned); else None."""
    module = sys.modules.get("multiprocessing")
    process = module.parent_process() if module is not None else None
    return process.pid if process is not None else None
