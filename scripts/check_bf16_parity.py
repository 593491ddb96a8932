#!/usr/bin/env python3
"""DeepEncoder in reduced precision against float32: how far do the vision tokens move?

The reference is float32 with the additive-mask attention path (the one that follows the
official code); every attention path runs in each reduced dtype (and, as a control, in float32)
with the same weights on the same pages: real text pages, the bundled sample document rendered at
each mode's page size (gundam: base pages, tiled), encoded as `optical encode` encodes them
(models/deepencoder/runner.py, the page's views laid out in order). Per page, the centred relative
error

    || (y - mean_tokens y) - (y_ref - mean_tokens y_ref) ||_F  /  || y_ref - mean_tokens y_ref ||_F

(centred so a large shared offset across tokens cannot hide the error), reported as the worst page,
with the worst token's cosine beside it. The contract (tests/test_deepencoder_precision.py holds
it on the tiny architecture): centred error <= 2e-2 and worst-token cosine >= 0.999; float32 paths
must agree to 1e-3. Weights: the full-size architecture with seeded random values (no hub here),
or the tiny one for --size tiny. Writes a CSV (default results/bench/gpu/parity.csv); exit 1 when
a run breaks its contract.

    python scripts/check_bf16_parity.py --size fullsize --device cuda --mode all --pages 8 --dtype bfloat16,float16
    python scripts/check_bf16_parity.py --size tiny --device cpu --pages 2          # seconds
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch
import torch.nn.functional as F

from optical_cli.artifacts import atomic_write_csv
from optical_cli.config.sections import RenderSection
from optical_cli.devices import resolve_device, synchronize
from optical_cli.models.deepencoder import ATTENTION_MODES, DeepEncoderConfig
from optical_cli.models.deepencoder.preprocess import ENCODE_MODES, PreparedPage, prepare
from optical_cli.models.deepencoder.runner import EncoderRunner
from optical_cli.models.deepencoder.weights import load_deepencoder
from optical_cli.render.pages import iter_pages

# on a CPU the flex path runs FlexAttention eagerly (unfused): slow, correct, and torch says so once per process
warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
SAMPLE = REPO / "data" / "sample" / "optical_compression.md"
# float32 paths differ only in summation order: ~1e-6 on a CPU, 1.2-2.3e-4 on an H200 (its fused kernels)
MAX_CENTRED_ERROR = {torch.bfloat16: 2e-2, torch.float16: 2e-2, torch.float32: 1e-3}
MIN_TOKEN_COSINE = {torch.bfloat16: 0.999, torch.float16: 0.999, torch.float32: 0.999999}


def sample_pages(mode: str, count: int) -> list[PreparedPage]:
    """The first ``count`` pages of the bundled sample document, drawn for ``mode`` and preprocessed."""
    section = RenderSection(mode="base" if mode == "gundam" else mode, tokenizer="none")
    return [prepare(page.image, mode) for _, page in zip(range(count), iter_pages(SAMPLE.read_text(), section))]


def centred_relative_error(y: torch.Tensor, reference: torch.Tensor) -> float:
    """|| centred(y) - centred(ref) || / || centred(ref) ||, centring over tokens ([tokens, D] each)."""
    a, b = y - y.mean(dim=0, keepdim=True), reference - reference.mean(dim=0, keepdim=True)
    return ((a - b).norm() / b.norm()).item()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["fullsize", "tiny"], default="fullsize")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--mode", default="base", help=f"comma list of {', '.join(ENCODE_MODES)}, or all")
    parser.add_argument("--pages", type=int, default=8)
    parser.add_argument("--paths", default="all", help="attention paths, comma list or all")
    parser.add_argument("--dtype", default="bfloat16", help="reduced dtypes, comma list (bfloat16, float16)")
    parser.add_argument("--batch-size", type=int, default=8, help="views per forward")
    parser.add_argument("--output", type=Path, default=REPO / "results" / "bench" / "gpu" / "parity.csv")
    args = parser.parse_args()

    device = resolve_device(args.device)
    paths = list(ATTENTION_MODES) if args.paths == "all" else args.paths.split(",")
    modes = list(ENCODE_MODES) if args.mode == "all" else args.mode.split(",")
    architecture = DeepEncoderConfig.named("official" if args.size == "fullsize" else "tiny")
    model = load_deepencoder(None, device, torch.float32, config=architecture, seed=0)
    dtypes = [torch.float32] + [getattr(torch, name.strip()) for name in args.dtype.split(",")]
    runners = {
        dtype: EncoderRunner(
            model if dtype == torch.float32 else copy.deepcopy(model).to(dtype), device, dtype, args.batch_size
        )
        for dtype in dtypes
    }  # same weights
    rows = []
    for mode in modes:
        pages = sample_pages(mode, args.pages)
        runners[torch.float32].model.set_attention("mask")
        reference = runners[torch.float32].encode(pages)
        for dtype, runner in runners.items():
            for path in paths:
                runner.model.set_attention(path)
                start = time.perf_counter()
                features = runner.encode(pages)
                synchronize(device)
                seconds = time.perf_counter() - start
                error = max(centred_relative_error(y, ref) for y, ref in zip(features, reference))
                cosine = min(F.cosine_similarity(y, ref, dim=-1).min().item() for y, ref in zip(features, reference))
                passed = error <= MAX_CENTRED_ERROR[dtype] and cosine >= MIN_TOKEN_COSINE[dtype]
                rows.append(
                    {
                        "device": str(device),
                        "size": args.size,
                        "mode": mode,
                        "pages": len(pages),
                        "views": sum(len(p.views) for p in pages),
                        "dtype": str(dtype).removeprefix("torch."),
                        "attention": path,
                        "centred_rel_error": f"{error:.3e}",
                        "max_abs_error": f"{max((y - r).abs().max().item() for y, r in zip(features, reference)):.3e}",
                        "min_token_cosine": f"{cosine:.6f}",
                        "max_centred_error": MAX_CENTRED_ERROR[dtype],
                        "min_cosine": MIN_TOKEN_COSINE[dtype],
                        "passed": passed,
                        "seconds": f"{seconds:.2f}",
                    }
                )
                print(
                    f"{mode:6s} {rows[-1]['dtype']:8s} {path:7s} centred relative error {error:.2e} (worst page; "
                    f"at most {MAX_CENTRED_ERROR[dtype]:g}), worst token cosine {cosine:.5f} "
                    f"(at least {MIN_TOKEN_COSINE[dtype]:g}) {'ok' if passed else 'FAILED'}",
                    flush=True,
                )
    atomic_write_csv(args.output, rows)
    print(
        f"reference: float32, mask path; {args.pages} pages of {SAMPLE.name} per mode; {args.size} random weights "
        f"on {device}"
    )
    print(f"wrote {args.output}")
    return 0 if all(row["passed"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
