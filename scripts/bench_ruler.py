"""RULER on one device: `optical bench ruler` at given lengths, its scores and needle legibility as a CSV.

    python scripts/bench_ruler.py --size tiny --lengths 1024 --device cpu --output ruler.csv      # a dry run
    python scripts/bench_ruler.py --size fullsize --lengths 4096,8192 --device cuda --output ruler.csv

``--size`` picks configs/tiny/ruler.yaml or configs/fullsize/ruler.yaml (random weights: scores are plumbing
checks; needle_legible, the share of needles the OCR judge reads off the pages, is real). One row per
condition (and render setting) and length, plus one per setting's legibility; the run directory is kept
beside the CSV (``<output>.run/``).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "fullsize"], default="tiny")
    parser.add_argument("--lengths", default="1024")
    parser.add_argument("--tasks", default=None, help="comma-separated RULER tasks (default: the config's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    run_dir = args.output.with_suffix(".run")
    command = [sys.executable, "-m", "optical_cli.cli", "bench", "ruler", "-c", f"configs/{args.size}/ruler.yaml"]
    command += ["--lengths", args.lengths, "--set", f"runtime.device={args.device}", "-o", str(run_dir), "--overwrite"]
    command += ["--json"] + (["--tasks", args.tasks] if args.tasks else [])
    if args.size == "tiny":
        command += ["--num-samples", "1"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        return done.returncode
    summary = json.loads(done.stdout)
    rows = []
    for condition, per_length in summary["ruler"].items():
        for length, scores in per_length.items():
            rows.append({"what": condition, "length": length, "score": scores["average"], "wall_s": round(wall, 1)})
    for label, block in (summary.get("needle_legible") or {}).items():
        rows.append(
            {"what": f"needle_legible {label}", "length": "all", "score": block["share"], "wall_s": round(wall, 1)}
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["what", "length", "score", "wall_s"])
        writer.writeheader()
        writer.writerows(rows)
    for row in rows:
        print(f"{row['what']:>40} {row['length']:>6} {row['score']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
