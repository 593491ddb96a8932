"""The encoder's matrix products in bfloat16 and float16 on CPUs without arithmetic in those types.

Depends on: torch only.

A reduced-precision matrix product, as PyTorch's CPU kernels compute it, multiplies the rounded
inputs, sums in float32 and rounds the sum once to the input type. The product of two bfloat16
values (8-bit significands) or two float16 values (11-bit) is exact in float32 (24-bit), so a
float32 matrix product over the same values is the same arithmetic; only the order of the float32
sums differs, as it does between any two kernels (measured: 1 element in 10^4 differs, by one unit
in the last place). On a CPU with bfloat16 or float16 instructions (AVX512-BF16, AMX) PyTorch's own
kernels are the fast way; on one without, they emulate the type element by element: on an AVX2 EPYC,
a 4096x768 @ 768x3072 product ran at 0.020 TFLOP/s in bfloat16 and 0.156 in float32. There, each
product is *widened*: inputs converted to float32, one float32 product, the result rounded back.
The tensors between products stay in the reduced type (its memory and its rounding).

float32 never goes through here differently: ``linear`` is ``F.linear`` for it, bit for bit.
"""

from __future__ import annotations

import platform
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

REDUCED = (torch.bfloat16, torch.float16)

# the torch.cpu probes that say a CPU has fast kernels for the type (absent from older torch: then none)
_NATIVE_PROBES = {
    torch.bfloat16: ("_is_avx512_bf16_supported", "_is_amx_tile_supported"),
    torch.float16: ("_is_amx_fp16_supported",),
}
_forced: bool | None = None


def _cpu_has_native(dtype: torch.dtype) -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return True  # the probes are x86's; elsewhere PyTorch's own kernels are trusted
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in _NATIVE_PROBES[dtype])


# probed once at import: ``widens`` is then plain lookups, which torch.compile traces without a break
_CPU_WIDENS = {dtype: not _cpu_has_native(dtype) for dtype in REDUCED}


def widens(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether products in ``dtype`` on ``device`` run as float32 products of the same values."""
    if dtype not in REDUCED or device.type != "cpu":
        return False
    return _CPU_WIDENS[dtype] if _forced is None else _forced


@contextmanager
def forced_widening(enabled: bool | None):
    """Widen reduced-precision CPU products always (True), never (False) or as the CPU calls for
    (None) inside the block: for tests and for benchmarks of PyTorch's own reduced kernels."""
    global _forced
    before, _forced = _forced, enabled
    try:
        yield
    finally:
        _forced = before


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``, widened where ``widens`` says so."""
    if not widens(x.dtype, x.device):
        return F.linear(x, weight, bias)
    wide_bias = None if bias is None else bias.float()
    return F.linear(x.float(), weight.float(), wide_bias).to(x.dtype)


def einsum(equation: str, *operands: torch.Tensor) -> torch.Tensor:
    """``torch.einsum``, widened where ``widens`` says so (every operand in the first one's type)."""
    first = operands[0]
    if not widens(first.dtype, first.device):
        return torch.einsum(equation, *operands)
    return torch.einsum(equation, *(t.float() for t in operands)).to(first.dtype)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state-dict names) whose product widens where ``widens`` says so."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
