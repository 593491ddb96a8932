#!/usr/bin/env python3
"""DeepEncoder throughput and memory per SAM attention path and batch size, against the fastest
existing implementation measured in the same run.

Every variant is the same network with the same (random) weights: our encoder with each SAM
attention path (mask: one additive mask, as the official code; chunked: the mask a few heads at
a time; folded: the bias folded into q/k for fused kernels; flex: FlexAttention, compiled on a
GPU; auto: whichever of these it measured fastest) and, with --official DIR, the official
DeepSeek-OCR encoder code (its deepencoder/ modules, imported from DIR at run time, never
copied here). Variants run alternately, round after round, so a busy machine slows them alike;
pages/s is the median over rounds, and each ratio the median of the per-round ratios (variants of
one round share the machine's load). The baseline of every ratio is the official code when it
is given, else our reference path (mask); the output says which. Peak memory per variant:
CUDA max allocated on a GPU, else the growth of the resident set during the forward.

    python scripts/bench_encoder.py --size tiny                                    # CPU, seconds
    python scripts/bench_encoder.py --size fullsize --mode base --batch-sizes 1 --dtype float32 \\
        --device cpu --official /tmp/official --rounds 3
    python scripts/bench_encoder.py --mode base --batch-sizes 1,16,64 --dtype bfloat16 --device cuda \\
        --paths all --size fullsize --output results/bench/gpu/encoder.csv

Writes the CSV (default results/bench/encoder.csv).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch
from torch.utils.flop_counter import FlopCounterMode

from optical_cli.artifacts import atomic_write_csv
from optical_cli.devices import resolve_device, synchronize
from optical_cli.memory import peak_memory, reset_peak, resident_gib
from optical_cli.models.deepencoder import (
    DeepEncoder,
    DeepEncoderConfig,
    sam,
)
from optical_cli.models.deepencoder.weights import load_deepencoder
from optical_cli.modes import MODES

FIELDS = [
    "device",
    "size",
    "mode",
    "batch",
    "variant",
    "dtype",
    "pages_per_s",
    "rounds",
    "spread",
    "tflops_per_page",
    "achieved_tflop_s",
    "peak_extra_gib",
    "max_abs_diff",
    "baseline",
    "ratio_vs_baseline",
]
SIZES = {"tiny": "tiny", "fullsize": "official"}


def flops_per_page(cfg: DeepEncoderConfig, size: int) -> float:
    with torch.device("meta"):
        model = DeepEncoder(cfg)
    with FlopCounterMode(display=False) as counter:
        model(torch.empty(1, 3, size, size, device="meta"))
    return counter.get_total_flops()


def official_encoder(directory: Path, state: dict, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The official DeepEncoder (SAM ViT-B, CLIP-L, linear projector) from DeepSeek-OCR's
    ``deepencoder/`` modules in ``directory``, composed as its model does, with our weights."""
    if "flash_attn" not in sys.modules:  # imported at the top of its modules, never called on these paths
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            stub = types.ModuleType("flash_attn")
            stub.flash_attn_qkvpacked_func = stub.flash_attn_func = None
            sys.modules["flash_attn"] = stub
    sys.path.insert(0, str(directory))
    try:
        from deepencoder.build_linear import MlpProjector
        from deepencoder.clip_sdpa import build_clip_l
        from deepencoder.sam_vary_sdpa import build_sam_vit_b
        from easydict import EasyDict
    except ImportError as exc:
        sys.exit(
            f"--official {directory}: cannot import the official encoder ({exc}); pass the directory holding "
            "deepencoder/ and pip install easydict"
        )

    def part(prefix: str) -> dict:
        return {name[len(prefix) :]: tensor for name, tensor in state.items() if name.startswith(prefix)}

    class Official(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.sam_model, self.vision_model = build_sam_vit_b(), build_clip_l()
            self.projector = MlpProjector(EasyDict(projector_type="linear", input_dim=2048, n_embed=1280))
            self.sam_model.load_state_dict(part("sam_model."))
            self.vision_model.load_state_dict(
                part("vision_model."), strict=False
            )  # its position_ids buffer is not stored
            self.projector.load_state_dict(part("projector."))

        def forward(self, pixels):
            sam_maps = self.sam_model(pixels)
            clip_tokens = self.vision_model(pixels, sam_maps)
            return self.projector(torch.cat([clip_tokens[:, 1:], sam_maps.flatten(2).permute(0, 2, 1)], dim=-1))

    return Official().to(device=device, dtype=dtype).eval()


def variants(args, device: torch.device, dtype: torch.dtype) -> tuple[dict, str]:
    """{name: forward} in the order they run, and the name of the baseline. Our paths share one
    encoder (one copy of the weights), switching its attention path before each forward."""
    ours = load_deepencoder(None, device, dtype, config=DeepEncoderConfig.named(SIZES[args.size]), seed=0)
    forwards = {}
    if args.official:
        forwards["official"] = official_encoder(args.official, ours.state_dict(), device, dtype)
    paths = args.paths.split(",") if args.paths != "all" else [*sam.ATTENTION_MODES, sam.AUTO]
    baseline = "official" if args.official else "mask"
    if baseline not in forwards and baseline not in paths:
        paths.insert(0, baseline)
    compiled = torch.compile(ours) if args.compile else ours
    for path in paths:
        if path == "flex" and device.type != "cuda" and args.paths == "all":
            print(
                "skipped: flex on CPU (eager FlexAttention materialises every score; ask --paths flex to force it)",
                file=sys.stderr,
            )
            continue
        forwards[path] = _forward_with(ours, compiled, path)
    return forwards, baseline


def _forward_with(encoder, forward, path: str):
    def run(pixels):
        encoder.set_attention(path)
        return forward(pixels)

    return run


@torch.inference_mode()
def forward_seconds(
    model, pixels: torch.Tensor, device: torch.device, min_seconds: float
) -> tuple[float, float, torch.Tensor]:
    """(seconds per forward, peak extra GiB, output): repeated until ``min_seconds`` have passed."""
    synchronize(device)
    resident = resident_gib() or 0.0
    reset_peak(device)
    runs, start = 0, time.perf_counter()
    while True:
        out = model(pixels)
        synchronize(device)
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            break
    peaks = peak_memory(device)
    extra = peaks["cuda_max_allocated_gib"] if device.type == "cuda" else peaks["cpu_rss_gib"] - resident
    return elapsed / runs, extra, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--size",
        choices=sorted(SIZES),
        default="tiny",
        help="tiny: seconds on CPU; fullsize: the official architecture",
    )
    parser.add_argument("--mode", default="base", help="DeepEncoder modes, comma-separated (tiny, small, base, large)")
    parser.add_argument("--batch-sizes", default="1", help="views per forward, comma-separated")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--paths",
        default="all",
        help="our SAM attention paths, comma-separated (mask, chunked, folded, flex, auto) or all",
    )
    parser.add_argument(
        "--official",
        type=Path,
        default=None,
        help="directory holding the official deepencoder/ package (DeepSeek-OCR-vllm)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; pages/s is the median")
    parser.add_argument(
        "--seconds", type=float, default=0.0, help="minimum timing window per variant per round (default: one forward)"
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile our variants")
    parser.add_argument("--output", type=Path, default=REPO / "results" / "bench" / "encoder.csv")
    args = parser.parse_args()
    if args.official and args.size != "fullsize":
        parser.error("--official needs --size fullsize: the official builders make the full-size encoder only")

    device = resolve_device(args.device)
    dtype = getattr(torch, args.dtype)
    models, baseline = variants(args, device, dtype)
    device_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    )
    print(
        f"DeepEncoder ({args.size}) on {device_name}, {args.dtype}; baseline: "
        + (
            "the official DeepSeek-OCR encoder code"
            if baseline == "official"
            else "our mask path (no --official given)"
        ),
        file=sys.stderr,
    )
    cfg = DeepEncoderConfig.named(SIZES[args.size])
    rows = []
    for mode in args.mode.split(","):
        size = MODES[mode].size
        flops = flops_per_page(cfg, size)
        for batch in [int(b) for b in args.batch_sizes.split(",")]:
            pixels = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device, dtype)
            seconds: dict[str, list[float]] = {name: [] for name in models}
            extra: dict[str, float] = {}
            outputs: dict[str, torch.Tensor] = {}
            for name, model in models.items():  # warm-up (and, for auto, the measurement of its choice)
                forward_seconds(model, pixels, device, 0.0)
            view_tokens = {(size // cfg.sam_patch_size) ** 2: "global", cfg.sam_window**2: "windowed"}
            chosen = ", ".join(
                f"{view_tokens[key[2][1]]}: {choice}"
                for key, (choice, _) in sam.AUTO_CHOICES.items()
                if key[2][1] in view_tokens
            )
            for _ in range(args.rounds):
                for name, model in models.items():
                    try:
                        spent, grew, outputs[name] = forward_seconds(model, pixels, device, args.seconds)
                    except torch.cuda.OutOfMemoryError:
                        torch.cuda.empty_cache()
                        spent, grew = float("nan"), float("nan")
                    seconds[name].append(spent)
                    extra[name] = max(extra.get(name, 0.0), grew)
            rates = {name: batch / statistics.median(s) for name, s in seconds.items()}
            # speed ratio per round (variants of one round ran back to back, under the same load), then the median
            ratios = {
                name: statistics.median(b / v for b, v in zip(seconds[baseline], s)) for name, s in seconds.items()
            }
            for name in models:
                spread = (max(seconds[name]) - min(seconds[name])) / statistics.median(seconds[name])
                diff = (
                    (outputs[name].float() - outputs[baseline].float()).abs().max().item()
                    if name in outputs
                    else float("nan")
                )
                rows.append(
                    {
                        "device": device_name,
                        "size": args.size,
                        "mode": mode,
                        "batch": batch,
                        "variant": name if name != "auto" else f"auto ({chosen})",
                        "dtype": args.dtype,
                        "pages_per_s": f"{rates[name]:.4g}",
                        "rounds": args.rounds,
                        "spread": f"{spread:.2f}",
                        "tflops_per_page": f"{flops / 1e12:.4g}",
                        "achieved_tflop_s": f"{rates[name] * flops / 1e12:.4g}",
                        "peak_extra_gib": f"{extra[name]:.3f}",
                        "max_abs_diff": f"{diff:.2e}",
                        "baseline": baseline,
                        "ratio_vs_baseline": f"{ratios[name]:.3f}",
                    }
                )
                print(
                    f"{mode} batch {batch:3d} {rows[-1]['variant']:45s} {rates[name]:8.4g} pages/s "
                    f"({1 / rates[name]:.3g} s/page, spread {spread:.0%})  x{ratios[name]:.2f} vs {baseline}  "
                    f"peak +{extra[name]:.2f} GiB  max|diff| {diff:.1e}",
                    file=sys.stderr,
                )
    atomic_write_csv(args.output, rows, FIELDS)
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
