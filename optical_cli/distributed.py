"""The processes of one run under ``accelerate launch`` (or torchrun): which one this is, how many.

We launch nothing ourselves. A launcher names the world in the environment (``WORLD_SIZE`` and
``RANK`` from torchrun, which ``accelerate launch --multi_gpu`` runs; ``PMI_*``/``OMPI_*`` from
mpirun, which ``accelerate launch --cpu`` needs for several processes), and accelerate's
``PartialState`` joins the process group: gloo when the run's device is the CPU, NCCL on GPUs,
each process on its own GPU. A plain run is one process and touches none of this.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

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


@dataclass
class Processes:
    """This process's place among the run's processes, and the few collectives the commands need."""

    index: int = 0
    count: int = 1
    gpu: Any = None  # this process's GPU (torch.device) when the run is on GPUs

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def place(self, device):
        """The device this process should use: its own GPU under a multi-GPU launch."""
        return self.gpu if self.count > 1 and device.type == "cuda" and self.gpu is not None else device

    def wait(self) -> None:
        """Barrier: every process reaches this point before any goes on."""
        if self.count > 1:
            import torch.distributed as dist

            dist.barrier()

    def broadcast(self, value: Any) -> Any:
        """The main process's ``value``, on every process."""
        if self.count == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every process's ``value``, in process order, on every process."""
        if self.count == 1:
            return [value]
        import torch.distributed as dist

        out: list[Any] = [None] * self.count
        dist.all_gather_object(out, value)
        return out


def _leave_group() -> None:
    """Close the process group while the interpreter is still whole: left to the exit-time
    destructors, gloo's worker threads are torn down joinable and the process aborts
    ("terminate called without an active exception", exit -6) after a run that succeeded."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def join(device) -> Processes:
    """This run's processes; joins the process group through accelerate when launched with more
    than one (``device``: the run's resolved torch.device, CPU -> gloo, CUDA -> NCCL)."""
    if launched_count() == 1:
        return Processes()
    import atexit

    from accelerate import PartialState

    state = PartialState(cpu=device.type == "cpu")
    atexit.register(_leave_group)
    gpu = state.device if state.device.type == "cuda" else None
    return Processes(state.process_index, state.num_processes, gpu)
