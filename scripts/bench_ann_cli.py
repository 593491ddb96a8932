#!/usr/bin/env python
"""Approximate vs exact energy search through the CLI, as a user runs it, at 200,000 x 384.

Items are real-derived (scripts/derived_vectors.py): the 20,000 MiniLM embeddings of the
bundled CVE corpus plus noisy copies up to --items. Queries are --queries further noisy copies
of random corpus records. Then, alternating, `--repeats`
times each:

    optical index search --index IX --query-vector Q.npy -k 10 --mode energy --json --set search.candidates=exact|ann

recall@10 of ann against exact (same queries), the search seconds each run reports on stderr
and the whole command's wall-clock time. Writes results/bench/ann_cli.csv.

    python scripts/bench_ann_cli.py                       # 200,000 items, 1,000 queries
    python scripts/bench_ann_cli.py --items 20000 --queries 200 --repeats 1   # quick look
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from derived_vectors import ROOT, cve_corpus, noisy_copies  # scripts/ is on sys.path when run

OPTICAL = [sys.executable, "-m", "optical_cli.cli"]
SUMMARY = re.compile(r"(\d+) queries, k=(\d+), mode (\w+), candidates (\w+): search ([\d.]+) s")


def run(args: list[str]) -> tuple[float, str, str]:
    started = time.perf_counter()
    done = subprocess.run([*OPTICAL, *map(str, args)], capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"optical {' '.join(map(str, args))} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds, done.stdout, done.stderr


def top_ids(stdout: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        hit = json.loads(line)
        found.setdefault(hit["query_id"], []).append(hit["id"])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument(
        "--sigma", type=float, default=0.3, help="noise of the derived copies (relative to a unit vector)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="runs per mode, alternating; the fastest counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--work", default=str(ROOT / "results" / "bench" / "ann_cli"), help="where vectors and the index go"
    )
    parser.add_argument("--output", default=str(ROOT / "results" / "bench" / "ann_cli.csv"))
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)

    base = cve_corpus(args.seed)[0]
    extra = max(0, args.items - len(base))
    items = np.concatenate(
        [base[: args.items], noisy_copies(base, rng.integers(len(base), size=extra), args.sigma, rng)]
    )
    queries = noisy_copies(base, rng.choice(len(base), size=args.queries, replace=False), args.sigma, rng)
    np.save(work / "items.npy", items)
    np.save(work / "queries.npy", queries)
    build_seconds, stdout, _ = run(
        [
            "index",
            "build-energy",
            "--input",
            work / "items.npy",
            "--limit",
            0,
            "-o",
            work / "index",
            "--json",
            "--set",
            "runtime.device=cpu",
        ]
    )
    built = json.loads(stdout)
    print(
        f"{len(items)} x {items.shape[1]} items ({len(base)} real CVE embeddings + noisy copies), {args.queries} "
        "queries; "
        f"build-energy {build_seconds:.1f} s wall (energy build {built['build_seconds']:.1f} s, {built['ann']} "
        f"{built['ann_seconds']:.1f} s)",
        flush=True,
    )

    runs: dict[str, list[tuple[float, float]]] = {"exact": [], "ann": []}
    tops: dict[str, dict] = {}
    for _ in range(args.repeats):
        for mode in ("exact", "ann"):
            wall, stdout, stderr = run(
                [
                    "index",
                    "search",
                    "--index",
                    work / "index",
                    "--query-vector",
                    work / "queries.npy",
                    "-k",
                    args.k,
                    "--mode",
                    "energy",
                    "--json",
                    "--set",
                    f"search.candidates={mode}",
                    "--set",
                    "runtime.device=cpu",
                ]
            )
            match = SUMMARY.search(stderr)
            if not match:
                sys.exit(f"no summary line on stderr:\n{stderr[-1000:]}")
            runs[mode].append((float(match.group(5)), wall))
            tops[mode] = top_ids(stdout)
            print(f"  {mode:5s} search {float(match.group(5)):.3f} s, wall {wall:.2f} s", flush=True)
    recall = np.mean([len(set(tops["ann"][q]) & set(tops["exact"][q])) / args.k for q in tops["exact"]])
    best = {mode: (min(s for s, _ in r), min(w for _, w in r)) for mode, r in runs.items()}
    spread = {mode: (max(s for s, _ in r) / min(s for s, _ in r)) for mode, r in runs.items()}
    search_ratio = best["exact"][0] / best["ann"][0]
    wall_ratio = best["exact"][1] / best["ann"][1]
    print(
        f"recall@{args.k} of ann vs exact: {recall:.4f} (target >= 0.95); search {search_ratio:.1f}x faster "
        f"(target >= 5x), whole command {wall_ratio:.2f}x; slowest/fastest run: exact {spread['exact']:.2f}, ann "
        f"{spread['ann']:.2f}"
    )
    rows = [
        {
            "items": len(items),
            "dim": items.shape[1],
            "queries": args.queries,
            "k": args.k,
            "candidates": mode,
            "search_s": round(best[mode][0], 4),
            "wall_s": round(best[mode][1], 3),
            "runs": len(runs[mode]),
            "slowest_over_fastest": round(spread[mode], 3),
            "recall_at_k_vs_exact": round(float(recall), 4) if mode == "ann" else 1.0,
            "search_speedup_vs_exact": round(best["exact"][0] / best[mode][0], 2),
            "wall_speedup_vs_exact": round(best["exact"][1] / best[mode][1], 2),
            "ann": built["ann"],
            "build_s": built["build_seconds"],
            "ann_build_s": built["ann_seconds"],
        }
        for mode in ("exact", "ann")
    ]
    from optical_cli.artifacts import atomic_write_csv

    atomic_write_csv(args.output, rows)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
