"""Time `optical sweep diffusion` against the naive rebuild-every-cell approach.

Ours: prepare() once (k-means, compression, bootstrap graph), then finish() + exact energy
search + metrics per cell, plus cosine/FAISS baselines once. Naive: a full build() per cell
(what the published sweep did, ~150 s per configuration), timed on a few cells and
projected to the whole grid. Both run in this process on the same cached embeddings; the
naive cells' metrics must equal ours (same seed, same stages), which is checked.

    python scripts/bench_sweep.py                 # 16 cells on the default corpus (configs/sweep.yaml)
    python scripts/bench_sweep.py --naive-cells 4 --config configs/tiny/sweep.yaml

Writes results/bench/sweep.csv (one row per approach) and prints the ratio.
"""

from __future__ import annotations

import argparse
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
from optical_cli.index.build import build  # noqa: E402
from optical_cli.index.search import Searcher, topk_rows  # noqa: E402
from optical_cli.sweep import grid as grid_mod  # noqa: E402
from optical_cli.sweep.diffusion import evaluate_ranking, rank_batched, run_sweep, search_params, setup_sweep  # noqa: E402


def naive_cell(setup, cell: grid_mod.Cell) -> tuple[float, float]:
    """Build everything from scratch for one cell, then search and score; returns (seconds, mean NDCG@10)."""
    started = time.perf_counter()
    params = setup.cfg.build.model_copy(update={"eta": cell.eta, "steps": cell.steps})
    index = build(setup.vectors, params, setup.corpus.ids, setup.cfg.runtime.seed, setup.device)
    searcher = Searcher(index)
    query_params = search_params(setup, "energy")
    ranked = rank_batched(lambda q: topk_rows(searcher, q, query_params), setup.query_vectors())
    ndcg = float(evaluate_ranking(setup, ranked)["ndcg_at_10"].mean())
    return time.perf_counter() - started, ndcg


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
    with tempfile.TemporaryDirectory() as tmp:
        result = run_sweep(setup, etas, steps, Path(tmp))
    ours = setup.info["prepare_seconds"] + result.sweep_seconds  # everything after the embeddings
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
         "seconds_per_cell": round(result.sweep_seconds / len(cells), 3), "projected_grid_seconds": round(ours, 3),
         "speedup_vs_naive": round(projected / ours, 2), "embed_seconds": embed_seconds,
         "embedding_cache_hit": setup.info["embedding_cache_hit"], **common},
        {"approach": "naive_rebuild_every_cell", "cells_timed": len(naive_times), "seconds": round(sum(naive_times), 3),
         "seconds_per_cell": round(naive_per_cell, 3), "projected_grid_seconds": round(projected, 3),
         "speedup_vs_naive": 1.0, "embed_seconds": embed_seconds,
         "embedding_cache_hit": setup.info["embedding_cache_hit"], **common},
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
    print(f"ours: {len(cells)}-cell sweep incl. prepare and baselines: {ours:.2f} s")
    print(f"naive: {naive_per_cell:.2f} s per cell over {len(naive_times)} cells -> {projected:.1f} s projected for {len(cells)}")
    print(f"speedup: {projected / ours:.1f}x; naive metrics equal ours on all timed cells: {mismatches == 0}")
    print(f"wrote {args.out}")
    if mismatches:
        sys.exit(1)


if __name__ == "__main__":
    main()
