"""Which process of a run this is, and how many there are, as the launcher says.

We launch nothing ourselves. A launcher names the world in the environment (``WORLD_SIZE`` and
``RANK`` from torchrun, which ``accelerate launch --multi_gpu`` runs; ``PMI_*``/``OMPI_*`` from
mpirun, which ``accelerate launch --cpu`` needs for several processes). Reading it needs no torch,
so run directories and reporting can ask before any model library loads; joining the processes
and talking between them is :mod:`optical_cli.distributed`.
"""

from __future__ import annotations

import os

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
