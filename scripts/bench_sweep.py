"""Time `optical sweep diffusion` against the naive rebuild-every-cell approach.

Ours: prepare() once (k-means, compression, bootstrap graph), then finish() + exact energy
search + metrics + bootstrap per cell. Naive: prepare() + finish() for every cell (a full
rebuild, what the published sweep did at ~150 s per configuration) with the same search and
scoring, timed on a few cells and projected to the whole grid. Both run in this process on
the same cached embeddings (the first run embeds the corpus: see embed_seconds); the naive
cells' metrics must equal ours (same seed, same stages), which is checked.

    python scripts/bench_sweep.py                 # 16 cells on the default corpus (configs/sweep.yaml)
    python scripts/bench_sweep.py --naive-cells 4 --config configs/tiny/sweep.yaml

Writes results/bench/sweep.csv (one row per approach) and prints the ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import csv
import io
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import torch  # noqa: E402

from optical_cli.artifacts import atomic_write_text  # noqa: E402
from optical_cli.config import load_config  # noqa: E402
from optical_cli.index.build import prepare  # noqa: E402
from optical_cli.sweep import grid as grid_mod  # noqa: E402
from optical_cli.sweep.diffusion import evaluate_cell, run_sweep, setup_sweep  # noqa: E402


def naive_cell(setup, cell: grid_mod.Cell) -> tuple[float, float]:
    """Rebuild everything for one cell (prepare + finish), then the same search and scoring as ours.

    Returns (seconds, mean NDCG@10).
    """
    started = time.perf_counter()
    prepared = prepare(setup.vectors, setup.cfg.build, setup.corpus.ids, setup.cfg.runtime.seed, setup.device)
    record = evaluate_cell(dataclasses.replace(setup, prepared=prepared), cell)
    return time.perf_counter() - started, record["ndcg_at_10"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="sweep config (default configs/sweep.yaml)")
    parser.add_argument("--naive-cells", type=int, default=4, help="cells timed with a full rebuild each")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", default="results/bench/sweep.csv")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config("sweep", args.config)
    etas, steps = list(cfg.sweep.etas), list(cfg.sweep.steps)
    cells = grid_mod.grid_cells(etas, steps)

    started = time.perf_counter()
    setup = setup_sweep(cfg)  # embedding is cached after the first run; reported separately
    setup_seconds = time.perf_counter() - started
    embed_seconds = setup.info["embed_seconds"]
    row_seconds: dict[str, float] = {"energy": 0.0, "baselines": 0.0}
    last = [time.perf_counter()]

    def lap(record: dict, skipped: bool) -> None:  # wall time of each row, baselines apart from cells
        now = time.perf_counter()
        row_seconds["energy" if record["method"] == "energy" else "baselines"] += now - last[0]
        last[0] = now

    with tempfile.TemporaryDirectory() as tmp:
        result = run_sweep(setup, etas, steps, Path(tmp), on_cell=lap)
    ours = setup.info["prepare_seconds"] + row_seconds["energy"]  # the energy grid after the embeddings
    ours_ndcg = {(row["eta"], row["steps"]): row["ndcg_at_10"] for row in result.rows if row["method"] == "energy"}

    naive_times, mismatches = [], 0
    for cell in cells[: args.naive_cells]:
        seconds, ndcg = naive_cell(setup, cell)
        naive_times.append(seconds)
        mismatches += abs(ndcg - ours_ndcg[(cell.eta, cell.steps)]) > 1e-9
    naive_per_cell = sum(naive_times) / len(naive_times)
    projected = naive_per_cell * len(cells)

    common = {"items": len(setup.corpus), "queries": int(setup.relevance.queries.size), "cells": len(cells),
              "device": str(setup.device), "threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    rows = [
        {"approach": "prepare_once_finish_per_cell", "cells_timed": len(cells), "seconds": round(ours, 3),
         "seconds_per_cell": round(row_seconds["energy"] / len(cells), 3), "projected_grid_seconds": round(ours, 3),
         "speedup_vs_naive": round(projected / ours, 2), "embed_seconds": embed_seconds,
         "embedding_cache_hit": setup.info["embedding_cache_hit"], "baseline_seconds": round(row_seconds["baselines"], 3),
         "whole_sweep_seconds": round(setup.info["prepare_seconds"] + result.sweep_seconds, 3), **common},
        {"approach": "naive_rebuild_every_cell", "cells_timed": len(naive_times), "seconds": round(sum(naive_times), 3),
         "seconds_per_cell": round(naive_per_cell, 3), "projected_grid_seconds": round(projected, 3),
         "speedup_vs_naive": 1.0, "embed_seconds": embed_seconds,
         "embedding_cache_hit": setup.info["embedding_cache_hit"], "baseline_seconds": "",
         "whole_sweep_seconds": "", **common},
    ]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(args.out, buffer.getvalue())

    print(f"corpus {common['items']} items, {common['queries']} queries, grid {len(etas)} x {len(steps)}, "
          f"{common['threads']} torch threads on {common['device']}")
    print(f"setup (read + embed{' cached' if setup.info['embedding_cache_hit'] else ''} + prepare): {setup_seconds:.2f} s "
          f"(embedding {embed_seconds:.2f} s, prepare {setup.info['prepare_seconds']:.2f} s)")
    print(f"ours: prepare once + {len(cells)} cells (finish, exact search of every query, metrics, bootstrap): {ours:.2f} s; "
          f"with the cosine/FAISS baselines {setup.info['prepare_seconds'] + result.sweep_seconds:.2f} s")
    print(f"naive: {naive_per_cell:.2f} s per cell over {len(naive_times)} cells -> {projected:.1f} s projected for {len(cells)}")
    print(f"speedup: {projected / ours:.1f}x; naive metrics equal ours on all timed cells: {mismatches == 0}")
    print(f"wrote {args.out}")
    if mismatches:
        sys.exit(1)


if __name__ == "__main__":
    main()
