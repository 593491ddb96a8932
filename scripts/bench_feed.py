#!/usr/bin/env python3
"""How fast can `optical encode`'s producer hand preprocessed pages to the encoder? The feed's worker
processes against the single producer thread encode had before (issue 38), in the same run.

Both make the same dense base pages from the bundled CVE text (reflow, 10 px: the optical chain's
operating point) and drain them with nothing else running, so the figure is the producer alone:

  thread     - today's single thread, as encode ran it before: draw the page, count its text
               (characters, words, Qwen tokens, histogram), preprocess it on the CPU to float32
               views [3, 1024, 1024] (12 MB), on a background thread the consumer reads from;
  workers    - the feed (encode/feed.py) with --workers processes: the same drawing and counting,
               the views as bytes (a grey page: 1 MB) through shared memory, copied out in page order.
               What the encoder's process receives; the mapping to float32 happens on its device;
  workers+map - the same, plus that mapping done here on the CPU (preprocess.map_bytes): what a CPU
               encoder receives, the mapping's cost on the consumer's own core included.

Rounds alternate the variants (thread first); a variant's rate is pages / seconds after its first fifth
of the pages, at least 2 x workers + 2 (the start: processes spawned, fonts and the Qwen vocabulary
loaded, every worker up; reported apart) to its last. Prints each rate and
its ratio to the thread's; the target on a 2-core CPU is workers >= 4x thread. Writes
results/bench/feed.csv. Take figures on an idle machine only.

    python scripts/bench_feed.py                                   # 2 workers, 600 base pages, 3 rounds
    python scripts/bench_feed.py --pages 20 --rounds 1 --mode tiny # a quick check that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch

from optical_cli.artifacts import atomic_write_csv
from optical_cli.config.sections import RenderSection
from optical_cli.encode.feed import FeedSpec, feed_pages, prefetch
from optical_cli.models.deepencoder.preprocess import map_bytes, prepare
from optical_cli.render.pages import PageRenderer
from optical_cli.textstats import text_counts

CORPUS = REPO / "data" / "cve" / "cves.jsonl"
TARGET = 4.0


def page_lines(section: RenderSection, pages: int) -> list[list[str]]:
    """``pages`` dense pages of CVE descriptions (the corpus again, as often as needed)."""
    with open(CORPUS, encoding="utf-8") as handle:
        text = "\n\n".join(json.loads(line)["description"] for line, _ in zip(handle, range(4000)))
    laid_out = PageRenderer(section).layout(text)[0]
    return (laid_out * -(-pages // len(laid_out)))[:pages]


def thread_pages(section: RenderSection, lines: list[list[str]], mode: str):
    """Encode's producer before the feed: one thread drawing, counting and preprocessing to float32."""
    renderer = PageRenderer(section)

    def make():
        for page in lines:
            yield text_counts("\n".join(page)), prepare(renderer.draw(page), mode, "official")

    return prefetch(make(), 32)


def worker_pages(section: RenderSection, lines: list[list[str]], mode: str, workers: int, mapped: bool):
    spec = FeedSpec(mode, "official", section.model_dump_json())
    for fed in feed_pages(spec, enumerate(("lines", page) for page in lines), workers, ahead=32):
        views = [torch.from_numpy(view) for view in fed.views]
        yield fed.counts, [map_bytes(view[None], "official")[0] for view in views] if mapped else views


def drain(pages, skip: int) -> tuple[float, float, int]:
    """(seconds to the ``skip``-th page: start-up, seconds from it to the last, pages after it)."""
    start = time.perf_counter()
    first, count = None, 0
    for _ in pages:
        count += 1
        if count == skip:
            first = time.perf_counter()
    end = time.perf_counter()
    return first - start, end - first, count - skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=600)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mode", default="base", help="tiny | small | base | large (the page size)")
    parser.add_argument("--font-size", type=int, default=10)
    parser.add_argument("--output", default=str(REPO / "results" / "bench" / "feed.csv"))
    args = parser.parse_args()
    section = RenderSection(mode=args.mode, font_size=args.font_size, reflow=True, tokenizer="none")
    lines = page_lines(section, args.pages)
    variants = {
        "thread": lambda: thread_pages(section, lines, args.mode),
        "workers": lambda: worker_pages(section, lines, args.mode, args.workers, mapped=False),
        "workers+map": lambda: worker_pages(section, lines, args.mode, args.workers, mapped=True),
    }
    rows = []
    for repeat in range(1, args.rounds + 1):
        for variant, pages in variants.items():
            # the start: until a fifth of the pages are out (at least 2 x workers + 2): a spawned worker that is
            # still importing when the first pages arrive must not count against the steady rate
            startup, seconds, count = drain(pages(), skip=max(2 * args.workers + 2, args.pages // 5))
            rate = count / seconds if seconds > 0 else float("nan")
            rows.append(
                {
                    "variant": variant,
                    "round": repeat,
                    "pages": count,
                    "workers": args.workers if variant != "thread" else 1,
                    "startup_s": round(startup, 3),
                    "seconds": round(seconds, 3),
                    "pages_per_s": round(rate, 2),
                }
            )
            print(f"round {repeat} {variant:12s} {rate:8.1f} pages/s (start {startup:.2f} s)", file=sys.stderr)
    best = {v: statistics.median(r["pages_per_s"] for r in rows if r["variant"] == v) for v in variants}
    load = os.getloadavg()[0]
    for variant, rate in best.items():
        print(
            f"{variant:12s} {rate:8.1f} pages/s, {rate / best['thread']:.2f}x the single thread "
            f"(median of {args.rounds})"
        )
    verdict = "met" if best["workers"] >= TARGET * best["thread"] else "NOT met"
    print(
        f"{args.workers}-worker feed {best['workers'] / best['thread']:.2f}x the thread ({args.mode} pages; "
        f"target >= {TARGET:g}x: {verdict}); load average {load:.2f} at the end"
    )
    atomic_write_csv(args.output, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
