#!/usr/bin/env python
"""Our energy search beside the original arrowspace package, on the same vectors, in one run.

Both sides get the sweep's corpus (configs/diffusion.yaml: the seeded 1,681-record CVE subset, or
--limit N), its MiniLM embeddings and its relevance (shared CWE id), and are scored with the
same trec_eval evaluator on the same held-out queries (split by label, as the sweep does).
Rows: cosine (brute force), our exact energy search (shipped defaults), our published-formula
build (build.lambda_formula=published, search weights of v0.18), and arrowspace's
``ArrowSpaceBuilder().build_energy(items, energy_params, graph_params)`` +
``ArrowSpace.search_energy(item, gl, k)`` with the v0.18 energy defaults. Build time, query
time (one query per call, as arrowspace answers them) and NDCG@10, MRR and MAP@20 with paired
differences against cosine (per-query and label-cluster 95% intervals).

arrowspace needs Python >= 3.12; this script runs its half in its own venv, ``.venv-arrowspace/``
(git-ignored), created on first use with ``python3.12 -m venv`` + ``pip install arrowspace``
(or make it yourself: ``python3.12 -m venv .venv-arrowspace && .venv-arrowspace/bin/pip install arrowspace``).

    .venv/bin/python scripts/compare_arrowspace.py                  # 1,681 records
    .venv/bin/python scripts/compare_arrowspace.py --limit 5000

Writes results/bench/arrowspace.csv and prints the table.
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv-arrowspace"
# v0.18 energy defaults (specs/energy.md) and the graph parameters of arrowspace's own CVE scripts
ENERGY_PARAMS = {
    "optical_tokens": None,
    "trim_quantile": 0.1,
    "eta": 0.1,
    "steps": 4,
    "split_quantile": 0.9,
    "neighbor_k": 8,
    "split_tau": 0.15,
    "w_lambda": 1.0,
    "w_disp": 0.5,
    "w_dirichlet": 0.25,
    "candidate_m": 32,
}
GRAPH_PARAMS = {"eps": 1.31, "k": 25, "topk": 15, "p": 2.0, "sigma": 0.535}


# ---------------------------------------------------------------------------------------
# The arrowspace half: runs under .venv-arrowspace's Python with numpy and arrowspace only


def worker(items_path: str, queries_path: str, k: int, out_path: str) -> None:
    import arrowspace
    from arrowspace import ArrowSpaceBuilder

    items = np.load(items_path).astype(np.float64)
    queries = np.load(queries_path).astype(np.float64)
    started = time.perf_counter()
    space, gl = ArrowSpaceBuilder().build_energy(items, ENERGY_PARAMS, GRAPH_PARAMS)
    build_s = time.perf_counter() - started
    ranked = np.full((len(queries), k), -1, dtype=np.int64)  # -1: fewer results than k
    started = time.perf_counter()
    for row, query in enumerate(queries):
        hits = space.search_energy(query, gl, k)
        ranked[row, : len(hits)] = [index for index, _ in hits[:k]]
    query_s = time.perf_counter() - started
    np.save(out_path, ranked)
    print(
        json.dumps(
            {
                "build_s": build_s,
                "query_ms": query_s / len(queries) * 1000,
                "version": arrowspace.__version__ if hasattr(arrowspace, "__version__") else None,
            }
        )
    )


def find_python312() -> str:
    for candidate in ("python3.12",):
        path = shutil.which(candidate)
        if path and subprocess.run([path, "-c", "pass"], capture_output=True).returncode == 0:
            return path
    pyenv = shutil.which("pyenv")
    if pyenv:  # a pyenv shim that needs the version named
        root = subprocess.run([pyenv, "root"], capture_output=True, text=True).stdout.strip()
        for version in sorted(Path(root, "versions").glob("3.12*"), reverse=True):
            if (version / "bin" / "python3.12").is_file():
                return str(version / "bin" / "python3.12")
    sys.exit("arrowspace needs Python 3.12: install it (or pyenv's 3.12) so that `python3.12` runs")


def arrowspace_python() -> str:
    python = VENV / "bin" / "python"
    if not python.is_file():
        print(f"creating {VENV} (python3.12 + pip install arrowspace)", flush=True)
        subprocess.run([find_python312(), "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "arrowspace"], check=True)
    return str(python)


def run_arrowspace(items: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / name for name in ("items.npy", "queries.npy", "ranked.npy")]
        np.save(paths[0], items)
        np.save(paths[1], queries)
        done = subprocess.run(
            [arrowspace_python(), __file__, "--worker", *map(str, paths[:2]), str(k), str(paths[2])],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            sys.exit(f"arrowspace failed:\n{done.stderr[-3000:]}")
        info = json.loads(done.stdout.strip().splitlines()[-1])
        return np.load(paths[2]), info


# ---------------------------------------------------------------------------------------
# Our half and the table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--limit", type=int, default=None, help="corpus subset (default: configs/diffusion.yaml's sweep.limit)"
    )
    parser.add_argument("--output", default=str(ROOT / "results" / "bench" / "arrowspace.csv"))
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from optical_cli.artifacts import atomic_write_text
    from optical_cli.config.registry import load_config
    from optical_cli.index.build import finish_build, prepare_build
    from optical_cli.index.search import Searcher, SearchParams, topk_rows
    from optical_cli.sweep.diffusion import evaluate_ranking, read_sweep_inputs, setup_sweep
    from optical_cli.sweep.metrics import compare

    cfg = load_config("diffusion", None, [f"sweep.limit={args.limit}"] if args.limit else [])
    setup = setup_sweep(cfg, inputs=read_sweep_inputs(cfg))
    held, clusters = setup.split.held, setup.held_clusters
    depth = cfg.sweep.depth + 1
    vectors = setup.vectors
    queries = vectors[setup.relevance.queries[held]]
    print(
        f"{len(vectors)} items x {vectors.shape[1]}, {held.size} held-out queries ({np.unique(clusters).size} label "
        "clusters)",
        flush=True,
    )

    def one_by_one(rank) -> tuple[np.ndarray, float]:
        started = time.perf_counter()
        ranked = np.stack([rank(q) for q in queries])
        return ranked, (time.perf_counter() - started) / len(queries) * 1000

    results = {}
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    results["cosine (brute force)"] = (
        0.0,
        *one_by_one(lambda q: np.argsort(-(unit @ (q / np.linalg.norm(q))), kind="stable")[:depth]),
    )
    for name, overrides, weights in (
        ("ours: energy (defaults)", {}, {}),
        ("ours: published formula", {"lambda_formula": "published"}, {"w_lambda": 1.0, "w_G": 0.5, "w_D": 0.25}),
    ):
        started = time.perf_counter()
        index = finish_build(prepare_build(vectors, cfg.build, seed=cfg.runtime.seed), **overrides)
        build_s = time.perf_counter() - started
        searcher = Searcher(index)
        params = SearchParams(**{**cfg.search.model_dump(), "k": depth, "mode": "energy", **weights})
        results[name] = (build_s, *one_by_one(lambda q: topk_rows(searcher, torch.from_numpy(q[None, :]), params)[0]))
    ranked, info = run_arrowspace(vectors, queries, depth)
    results[f"arrowspace {info.get('version') or ''} build_energy + search_energy".replace("  ", " ")] = (
        info["build_s"],
        ranked,
        info["query_ms"],
    )

    cosine_metrics = evaluate_ranking(setup, results["cosine (brute force)"][1], held)
    lines = ["method,build_s,query_ms,metric,value,diff_vs_cosine,low,high,cluster_low,cluster_high"]
    header = f"{'method':44s} {'build s':>8s} {'query ms':>9s}  {'NDCG@10':>30s}  {'MRR':>30s}  {'MAP@20':>30s}"
    print(header)
    for name, (build_s, ranked, query_ms) in results.items():
        metrics = evaluate_ranking(setup, ranked, held)
        cells = []
        for metric in ("ndcg_at_10", "mrr", "map_cut_20"):
            diff = compare(metrics[metric], cosine_metrics[metric], cfg.sweep.bootstrap, cfg.runtime.seed, clusters)
            cells.append(
                f"{metrics[metric].mean():.4f} ({diff['difference']:+.4f} "
                f"[{diff['cluster_low']:+.3f},{diff['cluster_high']:+.3f}])"
            )
            lines.append(
                f"{name},{build_s:.3f},{query_ms:.4f},{metric},{metrics[metric].mean():.6f},{diff['difference']:.6f},"
                f"{diff['low']:.6f},{diff['high']:.6f},{diff['cluster_low']:.6f},{diff['cluster_high']:.6f}"
            )
        print(f"{name:44s} {build_s:8.2f} {query_ms:9.3f}  " + "  ".join(f"{c:>30s}" for c in cells))
    print("value (difference from cosine [label-cluster 95% interval]) on the held-out queries")
    atomic_write_text(args.output, "\n".join(lines) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    else:
        main()
