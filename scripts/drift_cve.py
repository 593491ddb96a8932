#!/usr/bin/env python
"""Drift and the rebuild threshold on the bundled CVE records: `index add` against a rebuild, energy against cosine.

Two experiments on all 20,000 records of data/cve/cves.jsonl (MiniLM embeddings, cached under
results/cache/embeddings; relevance: two records sharing a CWE id):

1. Drift. Build on the records published up to --cutoff (the `published` field), `index add` the
   later ones (the real add path: a files-backend index on disk, items from a Parquet of their
   vectors), and rebuild on all records. Queries: every later record with a CWE id shared by
   another record, its own text as the query, itself left out of its results. Methods, one run:
   energy on the added index (exact and ANN candidates), energy on the rebuilt index, cosine
   (brute force). Metrics: NDCG@10, MRR, P@1, recall@20/50/100, distinct labels in the top 20,
   each with paired 95% bootstrap intervals (queries; CWE clusters). Also the acceptance checks
   of `index add`: each added record's own text finds it in the top 10; the top 10 of other
   queries (records of the build) against the rebuild's.
2. Rebuild threshold. A seeded random share s of the records is added to an index built on the
   rest, for each s in --shares; against the rebuild on all: top-10 overlap and the NDCG@10
   difference (added - rebuilt, CWE-cluster interval) on --threshold-queries labelled queries.
   The share from which overlap falls below 0.8 or the NDCG@10 interval lies below 0 is where a
   rebuild is due (store.rebuild_after). The first row is the noise floor: two rebuilds on all
   records that differ only in their seed (k-means, sampling), compared the same way.

The search defaults were chosen on tuning labels of 1,681- and 5,000-record subsets of the same
corpus (README: sweep); no choice is made here.

    python scripts/drift_cve.py                         # cut-off 2018, shares 0.05,0.1,0.2,0.4
    python scripts/drift_cve.py --cutoff 2017 --shares 0.1,0.3

Writes results/bench/drift.csv and results/bench/rebuild_threshold.csv, prints both tables,
records the load average before and after.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
import pandas as pd
import torch

from optical_cli.config.registry import load_config
from optical_cli.index.build import build
from optical_cli.index.create import create_index
from optical_cli.index.embed import embed_corpus
from optical_cli.index.pipeline import Corpus
from optical_cli.index.search import Searcher, SearchParams, topk_rows
from optical_cli.index.store import load_index
from optical_cli.index.update import add_items
from optical_cli.machine import load_text
from optical_cli.paths import CVE_CORPUS
from optical_cli.sweep.metrics import METRIC_NAMES, TrecEvaluator, compare, summarize_metrics
from optical_cli.sweep.relevance import count_relevant, drop_self, label_incidence

DEPTH = 100
SHOWN = (
    "ndcg_at_10",
    "mrr",
    "precision_at_1",
    "recall_at_20",
    "recall_at_50",
    "recall_at_100",
    "distinct_labels_at_20",
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cutoff", type=int, default=2018, help="build on records published up to this year")
    parser.add_argument("--shares", default="0.05,0.1,0.2,0.4", help="shares added for the rebuild threshold")
    parser.add_argument("--threshold-queries", type=int, default=2000)
    parser.add_argument("--overlap-queries", type=int, default=2000, help="build records used as other queries")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default=str(ROOT / "results" / "bench"))
    return parser.parse_args()


def load_corpus(cfg) -> tuple[list[dict], np.ndarray]:
    records = [json.loads(line) for line in CVE_CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    started = time.perf_counter()
    vectors, hit = embed_corpus(
        [r["description"] for r in records], cfg.embed.model, "cpu", cfg.embed.batch_size, cfg.embed.cache_dir
    )
    print(f"embedded {len(records)} records in {time.perf_counter() - started:.1f} s (cache hit: {hit})", flush=True)
    return records, vectors


def build_then_add(cfg, records, vectors, first: np.ndarray, later: np.ndarray, work: Path) -> tuple[object, dict]:
    """An index on disk built on ``first`` with ``later`` added by `index add`; (the loaded index, timings)."""
    ids = [r["id"] for r in records]
    corpus = Corpus([ids[i] for i in first], vectors[first], None, None, None, "cve", {})
    directory = work / f"built-{len(first)}"
    directory.mkdir(parents=True)
    started = time.perf_counter()
    _, fields, _ = create_index(cfg, corpus, directory, torch.device("cpu"))
    (directory / "manifest.json").write_text(json.dumps({**fields, "status": "ok"}))
    build_seconds = time.perf_counter() - started
    new = work / f"new-{len(later)}.parquet"
    pd.DataFrame({"id": [ids[i] for i in later], "vector": list(vectors[later].astype(np.float64))}).to_parquet(new)
    started = time.perf_counter()
    report = add_items(directory, cfg, new)
    timing = {"build_s": build_seconds, "add_s": time.perf_counter() - started, "changed_share": report.changed_share}
    return load_index(directory), timing


def ranked(index, queries: np.ndarray, k: int, candidates: str = "exact", cosine: bool = False) -> np.ndarray:
    params = SearchParams(k=k, mode="cosine" if cosine else "energy", candidates=candidates)
    searcher = Searcher(index)
    return np.concatenate([topk_rows(searcher, queries[s : s + 256], params) for s in range(0, len(queries), 256)])


def cosine_ranked(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    unit = torch.nn.functional.normalize(torch.from_numpy(vectors), dim=1)
    probes = torch.nn.functional.normalize(torch.from_numpy(queries), dim=1)
    blocks = range(0, len(queries), 256)
    return np.concatenate([torch.topk(probes[s : s + 256] @ unit.T, k).indices.numpy() for s in blocks])


def relevant_rows(incidence: np.ndarray, row: int) -> np.ndarray:
    rows = np.flatnonzero(incidence[:, incidence[row]].any(axis=1))
    return rows[rows != row]


def evaluate(incidence, query_rows, rankings: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    evaluator = TrecEvaluator([relevant_rows(incidence, r) for r in query_rows], labels=incidence)
    return {name: evaluator.evaluate(drop_self(rows, query_rows, DEPTH)) for name, rows in rankings.items()}


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x[:10]) & set(y[:10])) / 10 for x, y in zip(a, b)]))


def found_in_top10(rankings: np.ndarray, rows: np.ndarray) -> float:
    return float(np.mean([row in top[:10] for row, top in zip(rows, rankings)]))


def main() -> None:
    args = parse_args()
    load_before = load_text()
    cfg = load_config("index", None, ["runtime.device=cpu", f"runtime.seed={args.seed}"])
    records, vectors = load_corpus(cfg)
    print(f"load average before: {load_before}", flush=True)
    with tempfile.TemporaryDirectory(prefix="optical-drift-") as tmp:
        rows = run_drift(args, cfg, records, vectors, Path(tmp))
        threshold = run_threshold(args, cfg, records, vectors, Path(tmp))
    load_after = load_text()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, table in (("drift.csv", rows), ("rebuild_threshold.csv", threshold)):
        for row in table:
            row.update(load_before=load_before, load_after=load_after)
        with open(out / name, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
        print(f"wrote {out / name}")
    print(f"load average after: {load_after}")


def cwe_labels(records: list[dict]) -> np.ndarray:
    incidence, _ = label_incidence([tuple(r["cwe"]) for r in records])
    return incidence


def run_drift(args, cfg, records, vectors, work: Path) -> list[dict]:
    """Build on the records up to the cut-off, add the later ones; queries: the later labelled records."""
    years = np.array([int(r["published"][:4]) for r in records])
    first, later = np.flatnonzero(years <= args.cutoff), np.flatnonzero(years > args.cutoff)
    added, timing = build_then_add(cfg, records, vectors, first, later, work)
    order = np.concatenate([first, later])  # row order of the added index and of the rebuild
    assert added.ids == [records[i]["id"] for i in order]
    x = vectors[order]
    incidence = cwe_labels([records[i] for i in order])
    started = time.perf_counter()
    rebuilt = build(x, cfg.build, added.ids, cfg.runtime.seed, "cpu")
    rebuild_seconds = time.perf_counter() - started
    later_rows = np.arange(len(first), len(order))
    labelled = later_rows[incidence[later_rows].any(axis=1)]
    query_rows = labelled[count_relevant(incidence, labelled) >= 1]
    queries = x[query_rows]
    k = DEPTH + 1
    rankings = {
        "energy, added": ranked(added, queries, k),
        "energy, added (ANN)": ranked(added, queries, k, "ann"),
        "energy, rebuilt": ranked(rebuilt, queries, k),
        "cosine": cosine_ranked(x, queries, k),
    }
    per_query = evaluate(incidence, query_rows, rankings)
    clusters = np.argmax(incidence[query_rows], axis=1)  # the first CWE column of each query: its cluster
    # acceptance checks: every added record (labelled or not) finds itself; other queries agree with a rebuild
    own = x[later_rows]
    self_found = {
        name: found_in_top10(ranked(index, own, 10, cand), later_rows)
        for name, index, cand in (("exact", added, "exact"), ("ann", added, "ann"))
    }
    rng = np.random.default_rng(args.seed)
    others = np.sort(rng.choice(len(first), size=min(args.overlap_queries, len(first)), replace=False))
    other_overlap = overlap(ranked(added, x[others], 10), ranked(rebuilt, x[others], 10))
    later_overlap = overlap(rankings["energy, added"], rankings["energy, rebuilt"])
    print(
        f"\ndrift: built on {len(first)} records published up to {args.cutoff}, added {len(later)} later ones "
        f"(build {timing['build_s']:.2f} s, add {timing['add_s']:.2f} s, rebuild {rebuild_seconds:.2f} s); "
        f"{len(query_rows)} later labelled queries, {len(np.unique(clusters))} CWE clusters"
    )
    print(
        f"added records found by their own text in the top 10: exact {self_found['exact']:.4f}, "
        f"ANN {self_found['ann']:.4f}; top-10 overlap with the rebuild: build-record queries {other_overlap:.4f} "
        f"({len(others)}), later queries {later_overlap:.4f}"
    )
    rows = []
    header = f"{'method':<22}" + "".join(f"{m:>33}" for m in SHOWN)
    print(header)
    reference = {"cosine": per_query["cosine"], "energy, rebuilt": per_query["energy, rebuilt"]}
    for method, values in per_query.items():
        summary = summarize_metrics(values, args.bootstrap, args.seed, clusters)
        row = {"experiment": "drift", "cutoff": args.cutoff, "method": method, "queries": len(query_rows)}
        cells = []
        for metric in METRIC_NAMES:
            row[metric] = summary[metric]
            row[f"{metric}_cluster_low"], row[f"{metric}_cluster_high"] = (
                summary[f"{metric}_cluster_low"],
                summary[f"{metric}_cluster_high"],
            )
            for base, tag in (("cosine", "vs_cosine"), ("energy, rebuilt", "vs_rebuilt")):
                if method != base:
                    diff = compare(values[metric], reference[base][metric], args.bootstrap, args.seed, clusters)
                    row[f"{metric}_{tag}"] = diff["difference"]
                    row[f"{metric}_{tag}_cluster_low"] = diff["cluster_low"]
                    row[f"{metric}_{tag}_cluster_high"] = diff["cluster_high"]
        for metric in SHOWN:
            if method == "cosine":
                cells.append(f"{row[metric]:>33.4f}")
            else:
                d, lo, hi = (row[f"{metric}_vs_cosine{s}"] for s in ("", "_cluster_low", "_cluster_high"))
                cells.append(f"{row[metric]:.4f} ({d:+.4f} [{lo:+.3f},{hi:+.3f}])".rjust(33))
        print(f"{method:<22}" + "".join(cells))
        row.update(
            self_found_exact=self_found["exact"],
            self_found_ann=self_found["ann"],
            overlap_build_queries=other_overlap,
            overlap_later_queries=later_overlap,
            build_s=timing["build_s"],
            add_s=timing["add_s"],
            rebuild_s=rebuild_seconds,
        )
        rows.append(row)
    return rows


def run_threshold(args, cfg, records, vectors, work: Path) -> list[dict]:
    """A random share added to an index built on the rest, against a rebuild: where does adding stop being enough?"""
    rng = np.random.default_rng(args.seed + 1)
    permutation = rng.permutation(len(records))
    rows = []
    print("\nrebuild threshold: a random share added to an index built on the rest, vs a rebuild on all")
    print(
        f"{'share':>6} {'added':>6} {'overlap@10':>11} {'self top10':>11} {'NDCG@10 added':>14} {'rebuilt':>8} "
        f"{'added - rebuilt [cluster 95%]':>32}"
    )
    for share in [0.0] + [float(s) for s in args.shares.split(",") if s]:
        n_added = int(round(share * len(records)))
        first, later = np.sort(permutation[n_added:]), np.sort(permutation[:n_added])
        order = np.concatenate([first, later])
        x = vectors[order]
        ids = [records[i]["id"] for i in order]
        if share == 0.0:  # the noise floor: the same records, another seed
            added, timing = build(x, cfg.build, ids, cfg.runtime.seed + 1, "cpu"), {"add_s": 0.0}
        else:
            added, timing = build_then_add(cfg, records, vectors, first, later, work / f"share-{share}")
        incidence = cwe_labels([records[i] for i in order])
        rebuilt = build(x, cfg.build, ids, cfg.runtime.seed, "cpu")
        labelled = np.flatnonzero(incidence.any(axis=1))
        labelled = labelled[count_relevant(incidence, labelled) >= 1]
        query_rows = np.sort(rng.choice(labelled, size=min(args.threshold_queries, labelled.size), replace=False))
        k = DEPTH + 1
        rankings = {"added": ranked(added, x[query_rows], k), "rebuilt": ranked(rebuilt, x[query_rows], k)}
        per_query = evaluate(incidence, query_rows, rankings)
        clusters = np.argmax(incidence[query_rows], axis=1)
        diff = compare(
            per_query["added"]["ndcg_at_10"], per_query["rebuilt"]["ndcg_at_10"], args.bootstrap, args.seed, clusters
        )
        added_rows = np.arange(len(first), len(order))
        self_found = found_in_top10(ranked(added, x[added_rows], 10), added_rows) if added_rows.size else float("nan")
        row = {
            "experiment": "threshold",
            "share": share,
            "added": n_added,
            "queries": len(query_rows),
            "overlap_at_10": overlap(rankings["added"], rankings["rebuilt"]),
            "self_found_top10": self_found,
            "ndcg_at_10_added": float(per_query["added"]["ndcg_at_10"].mean()),
            "ndcg_at_10_rebuilt": float(per_query["rebuilt"]["ndcg_at_10"].mean()),
            "ndcg_difference": diff["difference"],
            "ndcg_cluster_low": diff["cluster_low"],
            "ndcg_cluster_high": diff["cluster_high"],
            "add_s": timing["add_s"],
        }
        rows.append(row)
        print(
            f"{share:>6.2f} {n_added:>6} {row['overlap_at_10']:>11.4f} {self_found:>11.4f} "
            f"{row['ndcg_at_10_added']:>14.4f} {row['ndcg_at_10_rebuilt']:>8.4f} "
            f"{diff['difference']:>+10.4f} [{diff['cluster_low']:+.4f}, {diff['cluster_high']:+.4f}]".rjust(32),
            flush=True,
        )
    return rows


if __name__ == "__main__":
    main()
