#!/usr/bin/env python3
"""Peak memory of `optical encode` as the page count grows: bounded, or growing with the pages?

Runs the command a user runs,

    optical encode --config configs/tiny/encode.yaml --text T.txt --output-dir D

in fresh processes on two texts cut from the bundled CVE corpus (about --small and --large tiny
pages), and reads each process's peak resident memory from the kernel (wait4). Three variants
in the same run:

  streaming  - the default: features written one shard (encode.shard_pages) at a time;
  no trim    - the same without handing freed heap pages back to the OS after each batch
               (encode.return_freed_memory replaced by a no-op): glibc's heap creep;
  one shard  - every page's features held until the end (encode.shard_pages above the page
               count), as encode did before it streamed.

The figure is the growth: peak(large) - peak(small). Target: under --target-mb (120 MB by default,
from ~160 to ~1,400 pages). Writes results/bench/encode_memory.csv. The texts repeat the corpus
when it makes fewer pages than asked. The peak is the encoder's process (page workers, with
runtime.workers above 1, are processes of their own, each bounded).

    python scripts/bench_encode_memory.py                     # ~4 minutes on 2 cores
    python scripts/bench_encode_memory.py --small 40 --large 200 --repeats 1
    # issue 38: 3,000 pages within 300 MB of a 300-page run (the streaming variant; about 15 minutes on 2 cores)
    python scripts/bench_encode_memory.py --small 300 --large 3000 --target-mb 300 --variants streaming
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from optical_cli.artifacts import atomic_write_csv
from optical_cli.config.registry import load_config
from optical_cli.render.pages import PageRenderer

CONFIG = REPO / "configs" / "tiny" / "encode.yaml"
CORPUS = REPO / "data" / "cve" / "cves.jsonl"
TARGET_MB = 120
VARIANTS = {
    "streaming": ([], True),
    "no trim": ([], False),
    "one shard": (["--set", "encode.shard_pages=1000000"], True),
}
NO_TRIM = (
    "import sys, optical_cli.encode.pipeline as encode; encode.return_freed_memory = lambda: None; "
    "from optical_cli.cli import main; sys.argv[0] = 'optical'; main()"
)


def texts_of(pages: list[int], folder: Path) -> dict[int, Path]:
    """Texts of about ``n`` tiny pages each: the corpus laid out once, its first n pages' lines."""
    cfg = load_config("encode", CONFIG)
    renderer = PageRenderer(cfg.render.model_copy(update={"mode": cfg.deepencoder.mode}))
    corpus = "\n\n".join(json.loads(line)["description"] for line in CORPUS.read_text(encoding="utf-8").splitlines())
    laid_out, _, _ = renderer.layout(corpus)
    laid_out = laid_out * -(-max(pages) // len(laid_out))  # the corpus again, as often as the pages need
    paths = {}
    for n in pages:
        paths[n] = folder / f"text-{n}.txt"
        paths[n].write_text("\n".join("\n".join(lines) for lines in laid_out[:n]), encoding="utf-8")
    return paths


def peak_rss_mb(args: list[str], out: Path, trim: bool) -> tuple[float, float, int]:
    """(peak RSS in MB, seconds, pages encoded) of one `optical encode` process."""
    entry = ["-m", "optical_cli.cli"] if trim else ["-c", NO_TRIM]
    command = [sys.executable, *entry, "encode", "--config", str(CONFIG), *args, "--output-dir", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"encode failed: {process.stderr.read().decode()[-2000:]}")
    pages = json.loads((out / "metrics.json").read_text())["summary"]["pages"]
    return usage.ru_maxrss / 1024, seconds, pages  # ru_maxrss is in KB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=160, help="pages of the small text")
    parser.add_argument("--large", type=int, default=1400, help="pages of the large text")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--target-mb", type=float, default=TARGET_MB, help="largest growth that meets the target")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "encode_memory.csv")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_encode_memory_"))
    rows = []
    try:
        texts = texts_of([args.small, args.large], work)
        for repeat in range(1, args.repeats + 1):
            for variant in args.variants.split(","):
                sets, trim = VARIANTS[variant]
                peaks = {}
                for n, text in texts.items():
                    out = work / "run"
                    peak, seconds, pages = peak_rss_mb(["--text", str(text), *sets], out, trim)
                    shutil.rmtree(out)
                    peaks[n] = peak
                    rows.append(
                        {
                            "variant": variant,
                            "pages": pages,
                            "repeat": repeat,
                            "peak_rss_mb": round(peak, 1),
                            "seconds": round(seconds, 2),
                        }
                    )
                    print(f"{variant:9s} {pages:5d} pages: peak RSS {peak:7.1f} MB, {seconds:6.1f} s", file=sys.stderr)
                growth = peaks[args.large] - peaks[args.small]
                verdict = "met" if growth < args.target_mb else "NOT met"
                speed = rows[-1]["seconds"] / next(
                    r["seconds"] for r in rows if r["repeat"] == repeat and r["pages"] == rows[-1]["pages"]
                )
                print(
                    f"{variant:9s} growth {args.small} -> {args.large} pages: {growth:+.1f} MB "
                    f"(target < {args.target_mb:g} MB: {verdict}); "
                    f"time on the large text x{speed:.2f} of streaming's",
                    file=sys.stderr,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    atomic_write_csv(args.out, rows)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
