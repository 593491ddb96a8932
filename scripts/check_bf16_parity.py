#!/usr/bin/env python3
"""DeepEncoder in bfloat16 against float32: how far do the vision tokens move?

The reference is float32 with the additive-mask attention path (the one that follows the
official code); every attention path runs in bfloat16 (and, as a control, in float32) with
the same weights on the same pages: real text pages, the bundled sample document rendered at
the mode's size. The figure is the centred relative error

    || (y - mean_tokens y) - (y_ref - mean_tokens y_ref) ||_F  /  || y_ref - mean_tokens y_ref ||_F

per page (centred so a large shared offset across tokens cannot hide the error), reported as
the worst page, with the worst-token cosine similarity beside it. Weights are the full-size
architecture with seeded random values (no hub here), or the tiny one for --size tiny.
Writes a CSV (default results/bench/gpu/parity.csv); exit 1 when a run exceeds its threshold.

    python scripts/check_bf16_parity.py --size fullsize --device cuda --pages 8
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

from optical_cli.artifacts import atomic_write_csv
from optical_cli.config import RenderSection
from optical_cli.devices import resolve_device, synchronize
from optical_cli.models.deepencoder import DeepEncoderConfig
from optical_cli.models.deepencoder.preprocess import prepare
from optical_cli.models.deepencoder.sam import ATTENTION_MODES
from optical_cli.models.deepencoder.weights import load_deepencoder
from optical_cli.render import iter_pages

# on a CPU the flex path runs FlexAttention eagerly (unfused): slow, correct, and torch says so once per process
warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
SAMPLE = REPO / "data" / "sample" / "optical_compression.md"
# bfloat16 keeps 8 bits of mantissa (unit roundoff 2^-9); through SAM's 12 blocks, CLIP's 24 and the
# projector a few per cent of drift is the expected scale. Paths in float32 must agree to rounding.
THRESHOLDS = {torch.bfloat16: 0.05, torch.float32: 1e-4}


def sample_pages(mode: str, count: int) -> torch.Tensor:
    """The first ``count`` pages of the bundled sample document, preprocessed for ``mode``."""
    section = RenderSection(mode=mode, tokenizer="none")
    pages = [
        prepare(page.image, mode).views[-1] for _, page in zip(range(count), iter_pages(SAMPLE.read_text(), section))
    ]
    return torch.stack(pages)


def centred_relative_error(y: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per page: || centred(y) - centred(ref) || / || centred(ref) ||, centring over tokens."""
    y, reference = y.float(), reference.float()
    a, b = y - y.mean(dim=1, keepdim=True), reference - reference.mean(dim=1, keepdim=True)
    return (a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["fullsize", "tiny"], default="fullsize")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--mode", default="base", choices=["tiny", "small", "base", "large"])
    parser.add_argument("--pages", type=int, default=8)
    parser.add_argument("--paths", default="all", help="attention paths, comma list or all")
    parser.add_argument("--output", type=Path, default=REPO / "results" / "bench" / "gpu" / "parity.csv")
    args = parser.parse_args()

    device = resolve_device(args.device)
    paths = list(ATTENTION_MODES) if args.paths == "all" else args.paths.split(",")
    architecture = DeepEncoderConfig.named("official" if args.size == "fullsize" else "tiny")
    model = load_deepencoder(None, device, torch.float32, config=architecture, seed=0).eval()
    pixels = sample_pages(args.mode, args.pages).to(device)
    models = {torch.float32: model, torch.bfloat16: copy.deepcopy(model).to(torch.bfloat16)}  # same weights
    with torch.inference_mode():
        model.set_attention("mask")
        reference = model(pixels)
        rows = []
        for dtype, model in models.items():
            for path in paths:
                model.set_attention(path)
                start = time.perf_counter()
                y = model(pixels.to(dtype))
                synchronize(device)
                seconds = time.perf_counter() - start
                error = centred_relative_error(y, reference).max().item()
                cosine = torch.nn.functional.cosine_similarity(y.float(), reference, dim=-1).min().item()
                rows.append(
                    {
                        "device": str(device),
                        "size": args.size,
                        "mode": args.mode,
                        "pages": len(pixels),
                        "dtype": str(dtype).removeprefix("torch."),
                        "attention": path,
                        "centred_rel_error": f"{error:.3e}",
                        "max_abs_error": f"{(y.float() - reference).abs().max().item():.3e}",
                        "min_token_cosine": f"{cosine:.6f}",
                        "threshold": THRESHOLDS[dtype],
                        "passed": error <= THRESHOLDS[dtype],
                        "seconds": f"{seconds:.2f}",
                    }
                )
                print(
                    f"{rows[-1]['dtype']:8s} {path:7s} centred relative error {error:.2e} (max page; threshold "
                    f"{THRESHOLDS[dtype]:g}), worst token cosine {cosine:.5f}"
                )
    atomic_write_csv(args.output, rows)
    print(
        f"reference: float32, mask path; {len(pixels)} {args.mode} pages of {SAMPLE.name}; {args.size} random weights "
        f"on {device}"
    )
    print(f"wrote {args.output}")
    return 0 if all(row["passed"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
