#!/usr/bin/env python3
"""DeepEncoder throughput per dtype, SAM attention path and batch size, against the machine's own
matmul rate and the other implementations of the same encoder, all measured in the same run.

Every variant is the same network with the same (random) weights: our encoder with each SAM
attention path (mask: one additive mask, as the official code; chunked: the mask a few heads at a
time; folded: the bias folded into q/k for fused kernels; flex: FlexAttention, compiled on a GPU;
auto: whichever of these it measured fastest); with --official DIR, the official DeepSeek-OCR
encoder code (its deepencoder/ modules, imported from DIR at run time, never copied here); and with
--vllm-python PY, vLLM's own DeepEncoder (scripts/vllm_deepencoder.py run by that interpreter as a
worker process, the weights handed over in a temporary safetensors file). Variants run
alternately, round after round, so a busy machine slows them alike; pages/s is the median over
rounds, each ratio the median of the per-round ratios. The baseline of every ratio is the official
code when it is given, else our reference path (mask); the output says which.

Per row: pages/s; FLOPs per page (torch's FlopCounterMode over our encoder); achieved TFLOP/s; and
the share of the machine's matmul rate: before each batch size, the run times the matrix products
of the encoder's own shapes at that batch in that dtype (one base view: SAM's 4096x768 @ 768x2304
qkv, 4096x768 @ 768x3072 and 4096x3072 @ 3072x768 MLP, 4096x768 @ 768x768 projection; CLIP's
257-row ones; the projector; rows times the batch, at most 32,768), each through torch.matmul and
F.linear in that dtype with the weight stored as nn.Linear stores it, and for bfloat16/float16 on a
CPU also widened (the same values as one float32 product, as products.py runs them where the CPU has
no arithmetic in the type), keeping the fastest; the rate is their FLOPs over the time they take
together, weighted as a page uses them. The column kernel_tflop_s is the same rate through PyTorch's
kernels in the dtype alone (what the official code's products get).
The load average (/proc/loadavg) is recorded before and after each dtype.

    python scripts/bench_encoder.py --size tiny                                    # CPU, seconds
    python scripts/bench_encoder.py --size fullsize --mode base --batch-sizes 1 --dtype float32,bfloat16 \\
        --device cpu --official DIR --vllm-python .venv-vllm/bin/python --rounds 3
    python scripts/bench_encoder.py --mode base --batch-sizes 1,16,64 --dtype bfloat16 --device cuda \\
        --paths all --size fullsize --output results/bench/gpu/encoder.csv

Writes the CSV (default results/bench/encoder.csv).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch.utils.flop_counter import FlopCounterMode

from optical_cli.artifacts import atomic_write_csv
from optical_cli.devices import resolve_device, synchronize
from optical_cli.machine import load_text
from optical_cli.memory import peak_memory, reset_peak, resident_gib
from optical_cli.models.deepencoder import ATTENTION_MODES, AUTO, DeepEncoder, DeepEncoderConfig
from optical_cli.models.deepencoder.attention import AUTO_CHOICES
from optical_cli.models.deepencoder.products import forced_widening, linear, widens
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
    "matmul_tflop_s",
    "kernel_tflop_s",
    "matmul_share",
    "widened_products",
    "peak_extra_gib",
    "max_abs_diff",
    "baseline",
    "ratio_vs_baseline",
    "load_before",
    "load_after",
]
SIZES = {"tiny": "tiny", "fullsize": "official"}
VLLM_WORKER = REPO / "scripts" / "vllm_deepencoder.py"
WIDEN = {"auto": None, "always": True, "never": False}


def flops_per_page(cfg: DeepEncoderConfig, size: int) -> float:
    with torch.device("meta"):
        model = DeepEncoder(cfg)
    with FlopCounterMode(display=False) as counter:
        model(torch.empty(1, 3, size, size, device="meta"))
    return counter.get_total_flops()


MATMUL_ROWS_CAP = 32768  # past this many rows a larger product runs no faster (and takes long to time on a CPU)


def encoder_matmuls(cfg: DeepEncoderConfig, size: int, batch: int = 1) -> list[tuple[int, int, int, int]]:
    """(rows, inner, columns, times per page) of the encoder's dense layers on ``batch`` views of ``size``
    px (rows capped at MATMUL_ROWS_CAP)."""
    tokens = min(batch * (size // cfg.sam_patch_size) ** 2, MATMUL_ROWS_CAP)
    clip_tokens = min(batch * ((size // 64) ** 2 + 1), MATMUL_ROWS_CAP)
    mlp, d, c = int(cfg.sam_dim * cfg.sam_mlp_ratio), cfg.sam_dim, cfg.clip_dim
    return [
        (tokens, d, 3 * d, cfg.sam_depth),
        (tokens, d, d, cfg.sam_depth),
        (tokens, d, mlp, cfg.sam_depth),
        (tokens, mlp, d, cfg.sam_depth),
        (clip_tokens, c, 3 * c, cfg.clip_depth),
        (clip_tokens, c, c, cfg.clip_depth),
        (clip_tokens, c, cfg.clip_mlp_dim, cfg.clip_depth),
        (clip_tokens, cfg.clip_mlp_dim, c, cfg.clip_depth),
        (clip_tokens - batch, cfg.projector_in, cfg.out_dim, 1),
    ]


def _best_seconds(fn, device: torch.device, min_seconds: float) -> float:
    fn()  # warm-up (kernel choice, first-touch of memory)
    best, spent = float("inf"), 0.0
    while spent < min_seconds or best == float("inf"):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        elapsed = time.perf_counter() - start
        best, spent = min(best, elapsed), spent + elapsed
    return best


@torch.inference_mode()
def matmul_rate(
    shapes: list[tuple[int, int, int, int]], device: torch.device, dtype: torch.dtype, min_seconds: float
) -> tuple[float, float, list[dict]]:
    """The machine's matmul rate (FLOP/s) on these shapes, weighted by how often a page runs each: the
    fastest way to each product, and PyTorch's kernels in ``dtype`` alone; and each shape's rates by way."""
    generator = torch.Generator().manual_seed(0)
    total_flops = total_seconds = kernel_seconds = 0.0
    detail = []
    for rows, inner, cols, times in shapes:
        x = torch.randn(rows, inner, generator=generator).to(device, dtype)
        weight = torch.randn(cols, inner, generator=generator).to(device, dtype)  # as nn.Linear stores it
        flops = 2.0 * rows * inner * cols
        seconds = {
            "matmul": _best_seconds(lambda: torch.matmul(x, weight.t()), device, min_seconds),
            "linear": _best_seconds(lambda: F.linear(x, weight), device, min_seconds),
        }
        kernel = min(seconds.values())
        with forced_widening(True):
            if widens(dtype, device):
                seconds["widened"] = _best_seconds(lambda: linear(x, weight), device, min_seconds)
        total_flops, total_seconds = total_flops + flops * times, total_seconds + min(seconds.values()) * times
        kernel_seconds += kernel * times
        detail.append({"shape": f"{rows}x{inner}x{cols}", **{k: flops / s / 1e12 for k, s in seconds.items()}})
    return total_flops / total_seconds, total_flops / kernel_seconds, detail


def official_encoder(directory: Path, state: dict, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The official DeepEncoder (SAM ViT-B, CLIP-L, linear projector) from DeepSeek-OCR's
    ``deepencoder/`` modules in ``directory``, composed as its model does, with our weights."""
    if "flash_attn" not in sys.modules:  # imported at the top of its modules, never called on these paths
        try:
            import flash_attn  # noqa: F401 - is it installed? the official code needs it
        except ImportError:
            stub = types.ModuleType("flash_attn")
            stub.flash_attn_qkvpacked_func = stub.flash_attn_func = None
            sys.modules["flash_attn"] = stub
    if "easydict" not in sys.modules:  # its configs are attribute dicts; a stand-in when easydict is absent
        try:
            import easydict  # noqa: F401 - is it installed? the official code needs it
        except ImportError:
            stand_in = types.ModuleType("easydict")
            stand_in.EasyDict = type("EasyDict", (dict,), {"__getattr__": lambda self, key: self[key]})
            sys.modules["easydict"] = stand_in
    sys.path.insert(0, str(directory))
    try:
        from deepencoder.build_linear import MlpProjector
        from deepencoder.clip_sdpa import build_clip_l
        from deepencoder.sam_vary_sdpa import build_sam_vit_b
        from easydict import EasyDict
    except ImportError as exc:
        sys.exit(f"--official {directory}: cannot import the official encoder ({exc}); pass the folder of deepencoder/")

    def part(prefix: str) -> dict:
        return {name[len(prefix) :]: tensor for name, tensor in state.items() if name.startswith(prefix)}

    class Official(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.sam_model, self.vision_model = build_sam_vit_b(), build_clip_l()
            self.projector = MlpProjector(EasyDict(projector_type="linear", input_dim=2048, n_embed=1280))
            self.sam_model.load_state_dict(part("sam_model."))
            self.vision_model.load_state_dict(part("vision_model."), strict=False)  # position_ids is not stored
            self.projector.load_state_dict(part("projector."))

        def forward(self, pixels):
            sam_maps = self.sam_model(pixels)
            clip_tokens = self.vision_model(pixels, sam_maps)
            return self.projector(torch.cat([clip_tokens[:, 1:], sam_maps.flatten(2).permute(0, 2, 1)], dim=-1))

    return Official().to(device=device, dtype=dtype).eval()


class VllmWorker:
    """vLLM's DeepEncoder in a process of ``python`` (scripts/vllm_deepencoder.py), one forward per call."""

    def __init__(self, python: str, weights: Path, pixels: torch.Tensor, dtype: torch.dtype, device: torch.device):
        self.folder = Path(tempfile.mkdtemp(prefix="bench-encoder-vllm-"))
        torch.save(pixels.float().cpu(), self.folder / "pixels.pt")
        self.output = self.folder / "out.pt"
        dtype_name = str(dtype).removeprefix("torch.")
        command = [
            python,
            str(VLLM_WORKER),
            str(weights),
            str(self.folder / "pixels.pt"),
            dtype_name,
            str(device),
            str(self.output),
        ]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = ""
        for line in self.process.stdout:
            if line.startswith("ready"):
                return
            if line.startswith("error"):
                break
        self.process.kill()
        self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)
        raise RuntimeError(f"vLLM's DeepEncoder did not start ({' '.join(command)}): {line.strip()}")

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        self.process.stdin.write("forward\n")
        self.process.stdin.flush()
        json.loads(self.process.stdout.readline())  # the worker's own timing; the caller times the call
        return torch.load(self.output, weights_only=True)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.write("quit\n")
            self.process.stdin.close()
            self.process.wait(timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)  # the pixels and each output: ~14 MB a run at base


def variants(args, device: torch.device, dtype: torch.dtype) -> tuple[dict, str]:
    """{name: forward} in the order they run, and the baseline's name. Our paths share one encoder (one
    copy of the weights), switching its attention path before each forward."""
    ours = load_deepencoder(None, device, dtype, config=DeepEncoderConfig.named(SIZES[args.size]), seed=0)
    forwards = {}
    if args.official:
        forwards["official"] = official_encoder(args.official, ours.state_dict(), device, dtype)
    paths = args.paths.split(",") if args.paths != "all" else [*ATTENTION_MODES, AUTO]
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


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--size",
        choices=sorted(SIZES),
        default="tiny",
        help="tiny: seconds on CPU; fullsize: the official architecture",
    )
    parser.add_argument("--mode", default="base", help="DeepEncoder modes, comma-separated (tiny, small, base, large)")
    parser.add_argument("--batch-sizes", default="1", help="views per forward, comma-separated")
    parser.add_argument("--dtype", default="float32", help="comma-separated: float32, bfloat16, float16")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--paths",
        default="all",
        help="our SAM attention paths, comma-separated (mask, chunked, folded, flex, auto) or all",
    )
    parser.add_argument(
        "--official", type=Path, default=None, help="directory holding the official deepencoder/ package"
    )
    parser.add_argument(
        "--vllm-python",
        default=None,
        help="an interpreter with vLLM: adds vLLM's DeepEncoder (default: .venv-vllm/bin/python when it exists "
        "and --size fullsize; 'none' to skip)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; pages/s is the median")
    parser.add_argument(
        "--seconds", type=float, default=0.0, help="minimum timing window per variant per round (default: one forward)"
    )
    parser.add_argument("--matmul-seconds", type=float, default=0.5, help="timing window per matmul shape")
    parser.add_argument("--compile", action="store_true", help="torch.compile our variants")
    parser.add_argument(
        "--widen",
        choices=sorted(WIDEN),
        default="auto",
        help="our bfloat16/float16 CPU products as float32 ones: as the CPU calls for (auto), always, never",
    )
    parser.add_argument("--output", type=Path, default=REPO / "results" / "bench" / "encoder.csv")
    args = parser.parse_args()
    if args.official and args.size != "fullsize":
        parser.error("--official needs --size fullsize: the official builders make the full-size encoder only")
    default_vllm = REPO / ".venv-vllm" / "bin" / "python"
    if args.vllm_python is None:
        args.vllm_python = str(default_vllm) if args.size == "fullsize" and default_vllm.exists() else "none"
    if args.vllm_python != "none" and args.size != "fullsize":
        parser.error("--vllm-python needs --size fullsize: vLLM builds the full-size encoder only")
    return args


def main() -> None:
    args = parse_args()
    device = resolve_device(args.device)
    device_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    )
    cfg = DeepEncoderConfig.named(SIZES[args.size])
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-encoder-") as tmp:
        weights = None
        if args.vllm_python != "none":  # the same weights for vLLM's process
            weights = Path(tmp) / "weights.safetensors"
            model = load_deepencoder(None, "cpu", torch.float32, config=cfg, seed=0)
            save_file({name: t.contiguous() for name, t in model.state_dict().items()}, str(weights))
            del model
        with forced_widening(WIDEN[args.widen]):
            for dtype_name in args.dtype.split(","):
                rows += bench_dtype(args, cfg, device, device_name, getattr(torch, dtype_name.strip()), weights)
    atomic_write_csv(args.output, rows, FIELDS)
    print(f"wrote {args.output}", file=sys.stderr)


def bench_dtype(args, cfg, device, device_name: str, dtype: torch.dtype, weights: Path | None) -> list[dict]:
    load_before = load_text()
    forwards, baseline = variants(args, device, dtype)
    dtype_name = str(dtype).removeprefix("torch.")
    print(
        f"DeepEncoder ({args.size}) on {device_name}, {dtype_name}; load {load_before}; baseline: "
        + ("the official DeepSeek-OCR encoder code" if baseline == "official" else "our mask path (no --official)"),
        file=sys.stderr,
    )
    rows = []
    for mode in args.mode.split(","):
        size = MODES[mode].size
        flops = flops_per_page(cfg, size)
        for batch in [int(b) for b in args.batch_sizes.split(",")]:
            rate, kernel_rate, detail = matmul_rate(
                encoder_matmuls(cfg, size, batch), device, dtype, args.matmul_seconds
            )
            for item in detail:
                widened = f", widened to float32 {item['widened']:.3g}" if "widened" in item else ""
                print(
                    f"  matmul {dtype_name} {item['shape']:>18}: torch.matmul {item['matmul']:.3g}, "
                    f"F.linear {item['linear']:.3g}{widened} TFLOP/s",
                    file=sys.stderr,
                )
            print(
                f"  the machine's matmul rate on the shapes of {batch} {mode} view(s): {rate / 1e12:.3g} TFLOP/s "
                f"({kernel_rate / 1e12:.3g} through PyTorch's {dtype_name} kernels)",
                file=sys.stderr,
            )
            pixels = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device, dtype)
            models, worker = dict(forwards), None
            if args.vllm_python != "none":
                worker = VllmWorker(args.vllm_python, weights, pixels, dtype, device)
                models["vllm"] = worker
            try:
                rows += bench_batch(args, cfg, models, baseline, pixels, device, flops, rate)
            finally:
                if worker is not None:
                    worker.close()
            widened = str(widens(dtype, device)).lower()
            for row in rows[-len(models) :]:
                ours = row["variant"] not in ("official", "vllm")
                row.update(device=device_name, size=args.size, mode=mode, dtype=dtype_name, load_before=load_before)
                row.update(kernel_tflop_s=f"{kernel_rate / 1e12:.4g}", widened_products=widened if ours else "")
    load_after = load_text()
    for row in rows:
        row["load_after"] = load_after
    print(f"  load after {dtype_name}: {load_after}", file=sys.stderr)
    return rows


def bench_batch(args, cfg, models: dict, baseline: str, pixels, device, flops: float, rate: float) -> list[dict]:
    batch = len(pixels)
    seconds: dict[str, list[float]] = {name: [] for name in models}
    extra: dict[str, float] = {}
    outputs: dict[str, torch.Tensor] = {}
    for model in models.values():  # warm-up (and, for auto, the measurement of its choice)
        forward_seconds(model, pixels, device, 0.0)
    view_tokens = {(pixels.shape[-1] // cfg.sam_patch_size) ** 2: "global", cfg.sam_window**2: "windowed"}
    chosen = ", ".join(
        f"{view_tokens[key[2][1]]}: {choice}"
        for key, (choice, _) in AUTO_CHOICES.items()
        if key[2][1] in view_tokens and key[1] == pixels.dtype
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
    ratios = {name: statistics.median(b / v for b, v in zip(seconds[baseline], s)) for name, s in seconds.items()}
    rows = []
    for name in models:
        spread = (max(seconds[name]) - min(seconds[name])) / statistics.median(seconds[name])
        diff = (
            (outputs[name].float().cpu() - outputs[baseline].float().cpu()).abs().max().item()
            if name in outputs
            else float("nan")
        )
        achieved = rates[name] * flops
        rows.append(
            {
                "batch": batch,
                "variant": name if name != "auto" else f"auto ({chosen})",
                "pages_per_s": f"{rates[name]:.4g}",
                "rounds": args.rounds,
                "spread": f"{spread:.2f}",
                "tflops_per_page": f"{flops / 1e12:.4g}",
                "achieved_tflop_s": f"{achieved / 1e12:.4g}",
                "matmul_tflop_s": f"{rate / 1e12:.4g}",
                "matmul_share": f"{achieved / rate:.3f}",
                "peak_extra_gib": f"{extra[name]:.3f}",
                "max_abs_diff": f"{diff:.2e}",
                "baseline": baseline,
                "ratio_vs_baseline": f"{ratios[name]:.3f}",
            }
        )
        print(
            f"{pixels.dtype} batch {batch:3d} {rows[-1]['variant']:40s} {rates[name]:8.4g} pages/s "
            f"({1 / rates[name]:.3g} s/page, spread {spread:.0%})  {achieved / 1e12:.3g} TFLOP/s = "
            f"{achieved / rate:.0%} of matmul  x{ratios[name]:.2f} vs {baseline}  peak +{extra[name]:.2f} GiB  "
            f"max|diff| {diff:.1e}",
            file=sys.stderr,
        )
    return rows


if __name__ == "__main__":
    main()
