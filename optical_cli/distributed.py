"""The processes of one run under ``accelerate launch`` (or torchrun), joined, and the few
collectives the commands need.

accelerate's ``PartialState`` joins the process group: gloo when the run's device is the CPU, NCCL
on GPUs, each process on its own GPU. A plain run is one process and touches none of this. Which
process this is, read from the launcher's environment alone, is :mod:`optical_cli.launch`.
"""

from __future__ import annotations

import atexit
from dataclasses import dataclass
from typing import Any

import torch.distributed as dist
from accelerate import PartialState

from .launch import launched_count


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
            dist.barrier()

    def broadcast(self, value: Any) -> Any:
        """The main process's ``value``, on every process."""
        if self.count == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every process's ``value``, in process order, on every process."""
        if self.count == 1:
            return [value]
        out: list[Any] = [None] * self.count
        dist.all_gather_object(out, value)
        return out


def _leave_group() -> None:
    """Close the process group while the interpreter is still whole (the CLI then ends a launched
    process without the interpreter's teardown: :func:`optical_cli.launch.end_launched_process`)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def join(device) -> Processes:
    """This run's processes; joins the process group through accelerate when launched with more
    than one (``device``: the run's resolved torch.device, CPU -> gloo, CUDA -> NCCL)."""
    if launched_count() == 1:
        return Processes()
    state = PartialState(cpu=device.type == "cpu")
    atexit.register(_leave_group)
    gpu = state.device if state.device.type == "cuda" else None
    return Processes(state.process_index, state.num_processes, gpu)
