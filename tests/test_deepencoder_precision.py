"""DeepEncoder in reduced precision: the accuracy contract against float32, and the matrix-product
formulation of SAM's convolutions that bfloat16 and float16 run (their products widened to float32 or not).

The contract (issue 27), on real rendered pages (the bundled sample document drawn at each mode's
page size), for every mode, gundam's tiles included: per page, the centred relative error

    || (y - mean_tokens y) - (y32 - mean_tokens y32) ||_F / || y32 - mean_tokens y32 ||_F  <=  2e-2

and every token's cosine with its float32 value >= 0.999. Here on the tiny architecture (CPU,
seconds); `scripts/check_bf16_parity.py --size fullsize` checks the official sizes.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from optical_cli.config.sections import RenderSection
from optical_cli.models.deepencoder import DeepEncoderConfig
from optical_cli.models.deepencoder.preprocess import ENCODE_MODES, prepare
from optical_cli.models.deepencoder.products import forced_widening
from optical_cli.models.deepencoder.runner import EncoderRunner
from optical_cli.models.deepencoder.sam import PatchEmbed, conv3x3_channels_last
from optical_cli.models.deepencoder.weights import load_deepencoder
from optical_cli.render.pages import iter_pages

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample" / "optical_compression.md"
MAX_CENTRED_ERROR, MIN_TOKEN_COSINE = 2e-2, 0.999


def centred_relative_error(y: torch.Tensor, reference: torch.Tensor) -> float:
    a, b = y - y.mean(dim=0, keepdim=True), reference - reference.mean(dim=0, keepdim=True)
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def float32_model():
    return load_deepencoder(None, config=DeepEncoderConfig.tiny(), seed=0)


@pytest.fixture(scope="module")
def pages_per_mode():
    """Two pages of the sample document per mode, drawn at the size the mode reads (gundam: base pages)."""
    text = SAMPLE.read_text(encoding="utf-8")
    pages = {}
    for mode in ENCODE_MODES:
        section = RenderSection(mode="base" if mode == "gundam" else mode, tokenizer="none")
        drawn = [page.image for _, page in zip(range(2), iter_pages(text, section))]
        pages[mode] = [prepare(image, mode) for image in drawn]
    return pages


@pytest.fixture(scope="module")
def float32_features(float32_model, pages_per_mode):
    reference = EncoderRunner(float32_model, torch.device("cpu"), torch.float32, batch_size=4)
    return {mode: reference.encode(pages) for mode, pages in pages_per_mode.items()}


@pytest.mark.parametrize("widened", [True, False], ids=["float32-products", "reduced-kernels"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_reduced_precision_keeps_the_accuracy_contract_in_every_mode(
    float32_model, pages_per_mode, float32_features, dtype, widened
):
    """Both ways a CPU may run the products (products.py): widened to float32, or PyTorch's own kernels."""
    reduced_model = copy.deepcopy(float32_model).to(dtype)
    reduced = EncoderRunner(reduced_model, torch.device("cpu"), dtype, batch_size=4)
    assert pages_per_mode["gundam"][0].grid != (1, 1)  # tiles take part
    for mode, pages in pages_per_mode.items():
        with forced_widening(widened):
            features = reduced.encode(pages)
        for page, expected, got in zip(pages, float32_features[mode], features):
            assert got.shape == expected.shape and torch.isfinite(got).all()
            error = centred_relative_error(got, expected)
            cosine = F.cosine_similarity(got, expected, dim=-1).min().item()
            assert error <= MAX_CENTRED_ERROR, f"{mode}: centred relative error {error:.3g}"
            assert cosine >= MIN_TOKEN_COSINE, f"{mode}: worst token cosine {cosine:.5f}"
            assert error > 0  # the reduced path did run in reduced precision


@pytest.mark.parametrize("stride,size", [(1, 12), (2, 12), (2, 7)])
def test_conv3x3_as_a_matrix_product_equals_the_convolution(stride, size):
    generator = torch.Generator().manual_seed(stride * size)
    x = torch.randn(2, 5, size, size, dtype=torch.float64, generator=generator)
    weight = torch.randn(6, 5, 3, 3, dtype=torch.float64, generator=generator)
    expected = F.conv2d(x, weight, stride=stride, padding=1)
    got = conv3x3_channels_last(x.permute(0, 2, 3, 1), weight, stride).permute(0, 3, 1, 2)
    torch.testing.assert_close(got, expected)


def test_patch_embedding_as_a_matrix_product_equals_the_convolution():
    embed = PatchEmbed(patch=4, dim=8)
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = embed.double()(pixels.double())  # float64 runs the convolution
        got = embed.half()(pixels.half())  # reduced precision runs the matrix product
    assert got.shape == expected.shape == (2, 4, 4, 8)
    torch.testing.assert_close(got.double(), expected, rtol=1e-2, atol=1e-2)
