#!/usr/bin/env python3
"""DeepEncoder throughput: pages/s and achieved TFLOP/s per mode and batch size.

For every (mode, batch size) runs of the same network with the same weights:
  baseline           - eager, float32, SAM relative-position bias as an additive attention mask;
  optimised-<attn>   - bf16 on a GPU (float32 on CPU), the bias folded into q/k so fused SDPA
                       kernels apply (folded, the encode default) or added by FlexAttention
                       (flex), torch.compile with --compile.
FLOPs per page are counted once per mode (torch FlopCounterMode on the meta device, baseline
graph), so TFLOP/s of both runs are comparable. Prints the ratio optimised/baseline and
writes results/bench/encoder.csv. On CPU the default is the tiny architecture so it finishes
in under a minute; on a GPU the official one.

    python scripts/bench_encoder.py                                   # CPU: tiny config
    python scripts/bench_encoder.py --size official --modes base --batch-sizes 1,16,64 --compile
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from optical_cli.artifacts import atomic_write_text  # noqa: E402
from optical_cli.models.deepencoder import DeepEncoder, DeepEncoderConfig  # noqa: E402
from optical_cli.models.loading import load_deepencoder, resolve_device, resolve_dtype  # noqa: E402
from optical_cli.modes import MODES  # noqa: E402

FIELDS = ["device", "size", "mode", "batch", "variant", "dtype", "attention", "compile",
          "pages_per_s", "tflops_per_page", "achieved_tflop_s", "speedup_vs_baseline"]


def flops_per_page(cfg: DeepEncoderConfig, size: int) -> float:
    with torch.device("meta"):
        model = DeepEncoder(cfg)
    with FlopCounterMode(display=False) as counter:
        model(torch.empty(1, 3, size, size, device="meta"))
    return counter.get_total_flops()


def _sig(value: float) -> float:
    return float(f"{value:.4g}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def pages_per_second(model, batch: int, size: int, device: torch.device, dtype: torch.dtype, seconds: float) -> float:
    pixels = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
    model(pixels)  # warm-up (and compilation)
    sync(device)
    runs, start = 0, time.perf_counter()
    while True:
        model(pixels)
        runs += 1
        sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and runs >= 2:
            return runs * batch / elapsed


def variant(base: DeepEncoder, dtype: torch.dtype, attention: str, compile_: bool, device: torch.device):
    model = load_deepencoder(None, device, dtype, config=base.cfg)
    model.load_state_dict(base.state_dict())
    model.set_attention(attention)
    return torch.compile(model) if compile_ else model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="optimised runs' dtype (auto: bf16 on GPU, float32 on CPU)")
    parser.add_argument("--size", choices=["tiny", "official"], default=None, help="default: official on GPU, tiny on CPU")
    parser.add_argument("--modes", default=None, help="comma list (default: tiny,small on CPU; tiny,small,base,large on GPU)")
    parser.add_argument("--batch-sizes", default=None, help="comma list (default: 1,4 on CPU; 1,16,64 on GPU)")
    parser.add_argument("--attention", default=None, help="optimised runs' SAM attention modes, comma list (default: folded on CPU; folded,flex on GPU)")
    parser.add_argument("--seconds", type=float, default=None, help="timing window per run (default 1 on CPU, 3 on GPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the optimised runs")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "encoder.csv")
    args = parser.parse_args()

    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    dtype = resolve_dtype(args.dtype, device)
    size_name = args.size or ("official" if gpu else "tiny")
    modes = (args.modes or ("tiny,small,base,large" if gpu else "tiny,small")).split(",")
    batches = [int(b) for b in (args.batch_sizes or ("1,16,64" if gpu else "1,4")).split(",")]
    attentions = (args.attention or ("folded,flex" if gpu else "folded")).split(",")
    seconds = args.seconds or (3.0 if gpu else 1.0)
    device_name = torch.cuda.get_device_name(device) if gpu else f"cpu ({torch.get_num_threads()} threads)"

    base = load_deepencoder(None, "cpu", torch.float32, config=DeepEncoderConfig.named(size_name), seed=0)
    runs = [("baseline", variant(base, torch.float32, "mask", False, device), torch.float32, "mask", False)]
    for attention in attentions:
        runs.append((f"optimised-{attention}", variant(base, dtype, attention, args.compile, device), dtype, attention, args.compile))
    rows = []
    print(f"DeepEncoder ({size_name}) on {device_name}; baseline = eager float32, mask rel-pos; "
          f"optimised = {str(dtype)[6:]}{', compiled' if args.compile else ''}, rel-pos {'/'.join(attentions)}")
    for mode in modes:
        size = MODES[mode].size
        flops = flops_per_page(base.cfg, size)
        for batch in batches:
            line, baseline_rate = [], None
            for name, model, run_dtype, attention, compiled in runs:
                try:
                    rate = pages_per_second(model, batch, size, device, run_dtype, seconds)
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    rate = float("nan")
                baseline_rate = baseline_rate or rate
                rows.append({
                    "device": device_name, "size": size_name, "mode": mode, "batch": batch, "variant": name,
                    "dtype": str(run_dtype)[6:], "attention": attention, "compile": compiled,
                    "pages_per_s": _sig(rate), "tflops_per_page": _sig(flops / 1e12),
                    "achieved_tflop_s": _sig(rate * flops / 1e12),
                    "speedup_vs_baseline": round(rate / baseline_rate, 3),
                })
                line.append(f"{name} {rate:.3g} pages/s ({rate * flops / 1e12:.3g} TFLOP/s, x{rate / baseline_rate:.2f})")
            print(f"{mode:6s} batch {batch:3d}: " + " | ".join(line))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(args.out, buffer.getvalue())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
