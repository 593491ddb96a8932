"""Which process of a run this is, and how many there are, as the launcher says.

We launch nothing ourselves. A launcher names the world in the environment (``WORLD_SIZE`` and
``RANK`` from torchrun, which ``accelerate launch --multi_gpu`` runs; ``PMI_*``/``OMPI_*`` from
mpirun, which ``accelerate launch --cpu`` needs for several processes). Reading it needs no torch,
so run directories and reporting can ask before any model library loads; joining the processes
and talking between them is :mod:`optical_cli.distributed`. How a launched process ends:
:func:`end_launched_process`.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import NoReturn

_SIZE_ENV = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_RANK_ENV = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")


def _env_int(names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return default


def launched_count() -> int:
    """How many processes the launcher started (1 without a launcher)."""
    return max(1, _env_int(_SIZE_ENV, 1))


def is_main_process() -> bool:
    """True in the process that reports (rank 0), and in any run without a launcher."""
    return _env_int(_RANK_ENV, 0) == 0


def single_process_warning() -> str | None:
    """Why ``accelerate launch --cpu --num_processes N`` gave one process, when it did.

    Its CPU launcher starts a single process unless mpirun drives it (``--mpirun_hostfile``);
    it still sets MASTER_ADDR for the group it expected.
    """
    asked_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    if asked_cpu and "MASTER_ADDR" in os.environ and launched_count() == 1:
        return (
            "accelerate launch --cpu started one process: its CPU launcher needs mpirun (--mpirun_hostfile) "
            "for more; on one machine use `accelerate launch --multi_gpu --num_processes N` with "
            "--set runtime.device=cpu (the processes talk over gloo) or torchrun --nproc_per_node N"
        )
    return None


def end_launched_process(code: object) -> NoReturn:
    """End a process that a launcher started, with ``code`` (a ``SystemExit`` code), without
    finalizing the interpreter.

    gloo's worker threads release each finished collective's tensors themselves, and releasing a
    tensor made in Python takes the GIL. When that release comes late (a descheduled thread on a
    busy machine) and the interpreter is already finalizing, the thread is cancelled inside C++ and
    the process aborts after a run that succeeded ("terminate called without an active
    exception", exit -6: 1 two-process FSDP train-adapter in 20-40 did). Every atexit handler
    still runs here, the process group's closing among them; only the interpreter's teardown,
    which nothing of ours needs, is skipped."""
    atexit._run_exitfuncs()
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message"): the message on stderr and status 1, as the interpreter does it
        print(code, file=sys.stderr)
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
