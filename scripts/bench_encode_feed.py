#!/usr/bin/env python3
"""Does `optical encode --text` feed the encoder at its own speed? The command's pages/s against the
encoder module's pages/s at the same batch, dtype and weights, in the same run (issue 38: on a GPU,
encode --text at >= 80% of the module at batch 64; the feed had given 13.8-18.9 pages/s against 220).

  module  - the encoder alone (models/deepencoder/runner.py's EncoderRunner), on preprocessed views of
            real rendered pages already on the device, --batch views a forward, timed to the end of
            the device's work (the median of --rounds forwards after one warm-up);
  encode  - `optical encode --text` on --pages dense pages of the bundled CVE text in a fresh process
            (random weights of the same architecture, --batch pinned, runtime.workers --workers), its
            summary's steady_pages_per_s (pages after its first batch over the time since: worker
            start, kernel choices and the auto attention timing behind) and pages_per_s (wall).

Prints both and the ratio (target >= 0.8); writes results/bench/encode_feed.csv.

    python scripts/bench_encode_feed.py --device cuda --dtype bfloat16 --batch 64 --pages 2048   # on the GPU host
    python scripts/bench_encode_feed.py --size tiny --mode tiny --device cpu --batch 2 --pages 16 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch

from optical_cli.artifacts import atomic_write_csv
from optical_cli.config.sections import DeepEncoderSection, RenderSection, RuntimeConfig
from optical_cli.devices import resolve_device, synchronize
from optical_cli.models.deepencoder.preprocess import prepare
from optical_cli.models.deepencoder.runner import EncoderRunner
from optical_cli.render.pages import PageRenderer

CORPUS = REPO / "data" / "cve" / "cves.jsonl"
TARGET = 0.8


def corpus_text(pages: int, section: RenderSection) -> str:
    """At least ``pages`` pages of CVE descriptions, as the renderer lays them out."""
    with open(CORPUS, encoding="utf-8") as handle:
        text = "\n\n".join(json.loads(line)["description"] for line in handle)
    laid_out = PageRenderer(section).layout(text)[0]
    laid_out = (laid_out * -(-pages // len(laid_out)))[:pages]
    return "\n\n".join("\n".join(lines) for lines in laid_out)


def module_rate(args, section: DeepEncoderSection, runtime: RuntimeConfig, render: RenderSection) -> float:
    """Pages a second of the encoder alone at ``args.batch`` views a forward."""
    runner = EncoderRunner.build(section, runtime, args.batch, resolve_device(args.device))
    renderer = PageRenderer(render)
    pages = renderer.layout(corpus_text(args.batch, render))[0][: args.batch]
    views = torch.stack([prepare(renderer.draw(lines), args.mode).views[0] for lines in pages])
    views = views.to(runner.device, runner.dtype)
    times = []
    for attempt in range(args.rounds + 1):
        synchronize(runner.device)
        start = time.perf_counter()
        with torch.inference_mode():
            runner.model(views)
        synchronize(runner.device)
        if attempt:  # the first forward: kernels, the auto attention timing
            times.append(time.perf_counter() - start)
    return len(views) / statistics.median(times)


def encode_rate(args, render: RenderSection, folder: Path) -> dict:
    """`optical encode --text`'s summary on ``args.pages`` pages, in a fresh process."""
    text = folder / "pages.txt"
    text.write_text(corpus_text(args.pages, render), encoding="utf-8")
    sets = {
        "deepencoder.weights": "random",
        "deepencoder.architecture": "official" if args.size == "fullsize" else "tiny",
        "deepencoder.mode": args.mode,
        "encode.batch_size": args.batch,
        "encode.shard_pages": max(args.pages, 1),
        "runtime.device": args.device,
        "runtime.dtype": args.dtype,
        "runtime.workers": args.workers,
        "render.font_size": render.font_size,
        "render.reflow": render.reflow,
    }
    command = [
        sys.executable,
        "-m",
        "optical_cli.cli",
        "encode",
        "--text",
        str(text),
        "--json",
        "-o",
        str(folder / "run"),
    ]
    for key, value in sets.items():
        command += ["--set", f"{key}={value}"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        raise SystemExit(f"optical encode failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("tiny", "fullsize"), default="fullsize")
    parser.add_argument("--mode", default="base")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--pages", type=int, default=2048)
    parser.add_argument("--workers", type=int, default=0, help="encode's page workers (0: one per core)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", default=str(REPO / "results" / "bench" / "encode_feed.csv"))
    args = parser.parse_args()
    section = DeepEncoderSection(
        weights="random", architecture="official" if args.size == "fullsize" else "tiny", mode=args.mode
    )
    runtime = RuntimeConfig(device=args.device, dtype=args.dtype)
    render = RenderSection(mode=args.mode, font_size=10, reflow=True, tokenizer="none")
    module = module_rate(args, section, runtime, render)
    with tempfile.TemporaryDirectory() as folder:
        summary = encode_rate(args, render, Path(folder))
    steady = summary.get("steady_pages_per_s", summary["pages_per_s"])
    ratio = steady / module
    row = {
        "device": args.device,
        "size": args.size,
        "mode": args.mode,
        "dtype": args.dtype,
        "batch": args.batch,
        "pages": summary["pages"],
        "workers": summary.get("workers"),
        "module_pages_per_s": round(module, 2),
        "encode_steady_pages_per_s": round(steady, 2),
        "encode_pages_per_s": summary["pages_per_s"],
        "encoder_share": summary.get("encoder_share"),
        "ratio": round(ratio, 3),
        "target": TARGET,
        "met": ratio >= TARGET,
    }
    atomic_write_csv(args.output, [row])
    print(
        f"module {module:.1f} pages/s; encode --text {steady:.1f} pages/s steady ({summary['pages_per_s']:.1f} over "
        f"the whole run, {summary.get('workers')} workers, encoder busy {summary.get('encoder_share')}): "
        f"{ratio:.2f} of the module (target >= {TARGET}: {'met' if ratio >= TARGET else 'NOT met'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
