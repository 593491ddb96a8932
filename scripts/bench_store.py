#!/usr/bin/env python
"""The index in Milvus Lite beside our files: build, add 10%, query latency p50/p99, peak memory, recall.

Synthetic clustered unit vectors (scripts/bench_index.py's generator, seeded: both backends get
the same vectors and queries). Each backend runs in its own process (its peak resident memory is
its own; Milvus Lite runs inside the process). Per backend: ``create_index`` (the energy build,
then the FAISS structure and files, or the inserts and the database's ANN index), ``index add``
of --add-share more items (through the real add path, from a Parquet of vectors), then --queries
queries one per call with ANN candidates (the files backend: FAISS; Milvus: the collection's
index over R x), rescored exactly. Recall@10 of each backend's ANN against exact energy search
on the files backend (the baseline, same run). Milvus exact search (every item read back from
the database) is timed once when the index has at most --exact-milvus-max items.

    python scripts/bench_store.py                          # 1,000,000 x 384, add 10%, 300 queries
    python scripts/bench_store.py --n 100000 --queries 200

Writes results/bench/store.csv (one row per backend) and prints Milvus / files ratios; records
the load average before and after. Heavy at 1M (several GB, ~30 min of Milvus inserts on 2
cores): run it under `flock $TMPDIR/optical-heavy.lock`.
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from optical_cli.machine import load_text


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="items of the build")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--add-share", type=float, default=0.1, help="items added after the build, as a share of n")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--exact-queries", type=int, default=100, help="queries of the exact baseline (recall)")
    parser.add_argument("--exact-milvus-max", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", default=None, help="where the indexes are written (default: a temp dir)")
    parser.add_argument("--output", default=str(ROOT / "results" / "bench" / "store.csv"))
    parser.add_argument("--worker", choices=("files", "milvus"), help=argparse.SUPPRESS)
    parser.add_argument("--exact-file", help=argparse.SUPPRESS)
    return parser.parse_args()


def data(args):
    import numpy as np
    from bench_index import synthetic_vectors

    n_add = int(round(args.add_share * args.n))
    x, _ = synthetic_vectors(args.n + n_add, args.dim, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    picks = rng.choice(args.n + n_add, size=args.queries, replace=False)
    queries = x[picks] + 0.02 * rng.standard_normal(size=(args.queries, args.dim), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return x, n_add, queries


def worker(args) -> dict:
    """One backend: build, add, query; prints one JSON line."""
    import numpy as np
    import pandas as pd
    import torch

    from optical_cli.config.registry import load_config
    from optical_cli.index import milvus
    from optical_cli.index.create import create_index
    from optical_cli.index.manifest import read_manifest, read_model
    from optical_cli.index.pipeline import Corpus
    from optical_cli.index.query import search_candidates
    from optical_cli.index.search import Searcher, SearchParams
    from optical_cli.index.store import load_index
    from optical_cli.index.update import add_items

    backend = args.worker
    cfg = load_config("index", None, ["runtime.device=cpu", f"store.backend={backend}", "input.limit=null"])
    x, n_add, queries = data(args)
    ids = [f"s{i}" for i in range(len(x))]
    directory = Path(args.work_dir) / backend
    directory.mkdir(parents=True)
    started = time.perf_counter()
    corpus = Corpus(ids[: args.n], x[: args.n], None, None, None, "synthetic")
    _, fields, seconds = create_index(cfg, corpus, directory, torch.device("cpu"))
    (directory / "manifest.json").write_text(json.dumps({**fields, "status": "ok"}))
    build_s = time.perf_counter() - started
    new = Path(args.work_dir) / f"add-{backend}.parquet"
    pd.DataFrame({"id": ids[args.n :], "vector": list(x[args.n :].astype(np.float64))}).to_parquet(new)
    del x
    started = time.perf_counter()
    add_items(directory, cfg, new)
    add_s = time.perf_counter() - started
    params = SearchParams.from_section(cfg.search.model_copy(update={"candidates": "ann", "k": 10}))
    latencies, found = [], []
    manifest = read_manifest(directory)
    started = time.perf_counter()
    if backend == "milvus":
        source = milvus.CandidateSource(directory, manifest, read_model(directory, manifest), 60.0)
        answer = lambda q: search_candidates(source, q[None, :], params)[0]
    else:
        searcher = Searcher(load_index(directory))
        answer = lambda q: searcher.search(q[None, :], params)[0]
    open_s = time.perf_counter() - started
    answer(queries[0])  # warm-up
    for q in queries:
        t = time.perf_counter()
        hits = answer(q)
        latencies.append((time.perf_counter() - t) * 1000)
        found.append([h.id for h in hits])
    row = {
        "backend": backend,
        "n": args.n,
        "added": n_add,
        "dim": args.dim,
        "build_s": round(build_s, 2),
        "build_energy_s": round(seconds["build_seconds"], 2),
        "store_s": round(seconds.get("store_seconds", 0.0) + seconds.get("ann_seconds", 0.0), 2),
        "add_s": round(add_s, 2),
        "open_s": round(open_s, 2),
        "query_p50_ms": round(float(np.percentile(latencies, 50)), 3),
        "query_p99_ms": round(float(np.percentile(latencies, 99)), 3),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "ann": json.dumps(read_manifest(directory).get("ann")),
    }
    if backend == "files":  # the exact baseline, same vectors, same run
        exact = SearchParams.from_section(cfg.search.model_copy(update={"candidates": "exact", "k": 10}))
        top = searcher.search(queries[: args.exact_queries], exact)
        json.dump([[h.id for h in hits] for hits in top], open(args.exact_file, "w"))
    elif args.n + n_add <= args.exact_milvus_max:
        source.close()
        started = time.perf_counter()
        everything = load_index(directory)
        row["milvus_read_all_s"] = round(time.perf_counter() - started, 2)
        del everything
    row["found"] = found[: args.exact_queries]
    return row


def main() -> None:
    args = parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return
    load_before = load_text()
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="optical-store-"))
    exact_file = work / "exact.json"
    rows = []
    try:
        for backend in ("files", "milvus"):
            passed = [a for i, a in enumerate(sys.argv[1:]) if "--work-dir" not in (a, sys.argv[i])]  # flag, value
            command = [sys.executable, __file__, "--worker", backend, "--work-dir", str(work), "--exact-file",
                       str(exact_file), *passed]  # fmt: skip
            started = time.perf_counter()
            out = subprocess.run(command, capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"{backend} worker failed:\n{out.stderr[-3000:]}")
            row = json.loads(next(line[7:] for line in out.stdout.splitlines() if line.startswith("RESULT ")))
            row["wall_s"] = round(time.perf_counter() - started, 1)
            rows.append(row)
            print(f"{backend}: {json.dumps({k: v for k, v in row.items() if k != 'found'})}", flush=True)
        exact = json.loads(exact_file.read_text())
        for row in rows:
            found = row.pop("found")
            row["recall_at_10_vs_exact"] = round(
                sum(len(set(f) & set(e)) / 10 for f, e in zip(found, exact)) / len(exact), 4
            )
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    load_after = load_text()
    for row in rows:
        row.update(load_before=load_before, load_after=load_after)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
        writer.writeheader()
        writer.writerows(rows)
    files, database = rows
    print(f"\n{'':<22}{'files':>12}{'milvus':>12}{'milvus/files':>14}")
    for key in ("build_s", "add_s", "query_p50_ms", "query_p99_ms", "peak_rss_gib", "recall_at_10_vs_exact"):
        ratio = database[key] / files[key] if files[key] else float("nan")
        print(f"{key:<22}{files[key]:>12}{database[key]:>12}{ratio:>14.2f}")
    print(f"load average before {load_before}, after {load_after}; wrote {output}")


if __name__ == "__main__":
    main()
