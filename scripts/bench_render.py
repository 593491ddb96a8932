#!/usr/bin/env python3
"""Render throughput: pages/s for one process and for N worker processes.

Renders the bundled sample (repeated to fill --pages pages) at 1024 px with a 10 px font,
drawing and PNG-encoding every page, and prints pages/s per configuration with the ratio
against the single-process run measured in the same invocation. The issue's target is at
least 40 pages/s per core. Writes results/bench/render.csv.

    python scripts/bench_render.py --pages 60 --workers 2
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from optical_cli.config.sections import RenderSection
from optical_cli.documents import Document
from optical_cli.render.pages import PageRenderer, render_to_dir

SAMPLE = REPO / "data" / "sample" / "optical_compression.md"


def dense_text(renderer: PageRenderer, pages: int) -> str:
    """The sample's words re-flowed into full lines, enough for ``pages`` dense pages."""
    words = SAMPLE.read_text(encoding="utf-8").split()
    capacity = renderer.lines_per_page * (renderer.right_limit - renderer.left) / renderer.font.getlength("x")
    repeats = int(pages * capacity / len(" ".join(words))) + 2
    laid_out = renderer.layout(" ".join(words * repeats))[0][:pages]
    return "\n".join(line for page in laid_out for line in page)


def measure(renderer: PageRenderer, text: str, workers: int) -> tuple[int, float]:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        report = render_to_dir([Document("bench", text)], renderer, Path(tmp), workers)
        return report.pages, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=60)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--mode", default="base")
    parser.add_argument("--font-size", type=int, default=10)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "render.csv")
    args = parser.parse_args()

    renderer = PageRenderer(RenderSection(mode=args.mode, font_size=args.font_size, tokenizer="none"))
    text = dense_text(renderer, args.pages)
    chars_per_page = len(text) / args.pages
    rows = []
    baseline = None
    for workers in sorted({1, args.workers}):
        pages, seconds = measure(renderer, text, workers)
        rate = pages / seconds
        baseline = baseline or rate
        rows.append(
            {
                "mode": args.mode,
                "font_size": args.font_size,
                "workers": workers,
                "pages": pages,
                "chars_per_page": round(chars_per_page),
                "seconds": round(seconds, 3),
                "pages_per_s": round(rate, 1),
                "pages_per_s_per_worker": round(rate / workers, 1),
                "speedup_vs_1_process": round(rate / baseline, 2),
            }
        )
        print(
            f"workers={workers}: {pages} pages in {seconds:.2f} s = {rate:.1f} pages/s "
            f"({rate / workers:.1f} per worker, {rate / baseline:.2f}x one process); "
            f"{chars_per_page:.0f} characters/page"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"target: >= 40 pages/s per core at 1024 px, 10 px font; wrote {args.out}")


if __name__ == "__main__":
    main()
