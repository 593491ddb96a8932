#!/usr/bin/env python3
"""What the trackers cost train-adapter: the same run without a tracker (the baseline) and with each.

Every variant runs `optical train-adapter` as a user would (its own process: imports, start-up,
training, the trackers' files), in rounds that alternate the variants, on one warm feature cache.
Per variant: the command's wall time and the mean optimizer-step time (`step_s` of its JSON; the
trackers log every step, `train.log_every=1`), each as a ratio to the baseline of the same round,
and the medians over the rounds. Writes a CSV (default results/bench/trackers.csv) and prints the
load average before and after: figures taken while other work shares the cores are direction only.

    python scripts/bench_trackers.py                                        # tiny config, 3 rounds
    python scripts/bench_trackers.py --trackers tensorboard,mlflow,wandb --rounds 5 --steps 40
    python scripts/bench_trackers.py --config configs/fullsize/train-adapter.yaml --steps 3 --rounds 1
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

from optical_cli.artifacts import atomic_write_csv
from optical_cli.machine import load_average

FIELDS = ["round", "variant", "steps", "wall_s", "step_s", "wall_ratio", "step_ratio", "load_before", "load_after"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "tiny" / "train-adapter.yaml"))
    parser.add_argument(
        "--trackers",
        default="tensorboard,mlflow,tensorboard+mlflow",
        help="variants beside the baseline, comma-separated; + joins trackers in one run",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="train.max_steps of each run")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="more config overrides")
    parser.add_argument("--output", default=str(REPO / "results" / "bench" / "trackers.csv"))
    return parser.parse_args()


def run_once(args: argparse.Namespace, trackers: list[str], work: Path, name: str) -> dict:
    sets = [
        f"data.cache_dir={work / 'cache'}",
        f"train.max_steps={args.steps}",
        "train.read_pages=0",
        "train.log_every=1",
        f"train.log_with=[{','.join(trackers)}]",
        *args.sets,
    ]
    command = [sys.executable, "-m", "optical_cli.cli", "train-adapter", "-c", args.config, "-o", str(work / name)]
    command += ["--json", *[item for s in sets for item in ("--set", s)]]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env={**env, "MPLBACKEND": "Agg"}, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{name} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    summary = json.loads(done.stdout)
    return {"steps": summary["steps"], "wall_s": wall, "step_s": summary["step_s"]}


def main() -> None:
    args = parse_args()
    variants = {"none": []} | {v: v.split("+") for v in args.trackers.split(",") if v}
    rows = []
    load_start = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-trackers-") as tmp:
        work = Path(tmp)
        run_once(args, [], work, "warm-up")  # fills the feature cache: no variant pays for encoding
        for round_number in range(1, args.rounds + 1):
            order = list(variants) if round_number % 2 else [*variants][::-1]  # alternate which runs first
            results = {}
            for variant in order:
                load_before = load_average()
                results[variant] = run_once(args, variants[variant], work, f"r{round_number}-{variant}")
                results[variant] |= {"load_before": load_before, "load_after": load_average()}
            baseline = results["none"]
            for variant in variants:
                result = results[variant]
                rows.append(
                    {
                        "round": round_number,
                        "variant": variant,
                        **result,
                        "wall_ratio": result["wall_s"] / baseline["wall_s"],
                        "step_ratio": result["step_s"] / baseline["step_s"],
                    }
                )
    for variant in variants:
        mine = [r for r in rows if r["variant"] == variant]
        print(
            f"{variant:>22}: wall {statistics.median(r['wall_s'] for r in mine):7.2f} s "
            f"(x{statistics.median(r['wall_ratio'] for r in mine):.3f}), "
            f"step {statistics.median(r['step_s'] for r in mine):.4f} s "
            f"(x{statistics.median(r['step_ratio'] for r in mine):.3f})"
        )
    formatted = [{k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()} for row in rows]
    atomic_write_csv(args.output, formatted, FIELDS)
    print(
        f"wrote {args.output}; load average {load_start:.2f} before, {load_average():.2f} after "
        "(figures from a machine shared with other work are direction only)"
    )


if __name__ == "__main__":
    main()
