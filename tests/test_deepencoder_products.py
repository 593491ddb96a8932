"""Widened reduced-precision products (optical_cli/models/deepencoder/products.py): the same arithmetic
as PyTorch's own bfloat16/float16 kernels, float32 untouched, and the choice under the caller's control."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from optical_cli.models.deepencoder import products
from optical_cli.models.deepencoder.products import Linear, einsum, forced_widening, linear, widens

REDUCED = pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])


def _operands(dtype: torch.dtype, rows: int = 64, inner: int = 96, cols: int = 80):
    generator = torch.Generator().manual_seed(0)
    x, weight, bias = (torch.randn(*shape, generator=generator) for shape in ((rows, inner), (cols, inner), (cols,)))
    return x.to(dtype), weight.to(dtype), bias.to(dtype)


@REDUCED
def test_a_widened_product_is_the_reduced_kernels_arithmetic(dtype):
    x, weight, bias = _operands(dtype)
    with forced_widening(False):
        kernel = linear(x, weight, bias)
    with forced_widening(True):
        widened = linear(x, weight, bias)
    assert widened.dtype == kernel.dtype == dtype
    exact = F.linear(x.double(), weight.double(), bias.double())
    # each is the exact sum rounded once (float32 partial sums aside): within one unit in the last place
    # of the exact value, and mostly equal to each other
    ulp = torch.finfo(dtype).eps * exact.abs().clamp_min(1.0)
    assert ((widened.double() - exact).abs() <= ulp).all()
    assert ((kernel.double() - exact).abs() <= ulp).all()
    assert (widened == kernel).float().mean() > 0.9


@REDUCED
def test_a_widened_einsum_is_the_reduced_kernels_arithmetic(dtype):
    generator = torch.Generator().manual_seed(1)
    q = torch.randn(2, 3, 4, 5, 16, generator=generator).to(dtype)
    table = torch.randn(4, 7, 16, generator=generator).to(dtype)
    with forced_widening(True):
        widened = einsum("bnhwc,hkc->bnhwk", q, table)
    exact = torch.einsum("bnhwc,hkc->bnhwk", q.double(), table.double())
    assert widened.dtype == dtype
    assert ((widened.double() - exact).abs() <= torch.finfo(dtype).eps * exact.abs().clamp_min(1.0)).all()


def test_float32_is_never_widened_and_stays_bit_identical():
    x, weight, bias = _operands(torch.float32)
    with forced_widening(True):
        assert not widens(torch.float32, torch.device("cpu"))
        assert torch.equal(linear(x, weight, bias), F.linear(x, weight, bias))
    assert not widens(torch.bfloat16, torch.device("cuda"))  # GPUs have reduced-precision arithmetic


def test_the_cpu_decides_unless_forced_and_the_block_restores_it():
    cpu = torch.device("cpu")
    native = products._cpu_has_native(torch.bfloat16)
    assert widens(torch.bfloat16, cpu) is (not native)
    with forced_widening(native):
        assert widens(torch.bfloat16, cpu) is native
        with forced_widening(None):
            assert widens(torch.bfloat16, cpu) is (not native)
    assert widens(torch.bfloat16, cpu) is (not native)
    assert widens(torch.float16, cpu) is (not products._cpu_has_native(torch.float16))


def test_the_linear_layer_keeps_nn_linear_parameters_and_names():
    layer = Linear(6, 4)
    assert isinstance(layer, torch.nn.Linear)
    assert list(layer.state_dict()) == ["weight", "bias"]
    x = torch.randn(3, 6)
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
