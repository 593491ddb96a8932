#!/usr/bin/env python
"""How the shipped energy-search defaults were chosen: on the sweep's TUNING labels only.

For each corpus size, the sweep's setup (seeded subset, MiniLM embeddings, relevance, the
split by label) is built; every (dirichlet_ridge, lambda_blend, w_lambda, w_G) of a small grid
(w_D = 1, eta 0.1, steps 4) ranks the tuning queries, and trec_eval's NDCG@10 is printed beside
cosine's on the same queries. The held-out queries are never scored here.

The rule, fixed before the grid was run: the best mean NDCG@10 - cosine over the sizes given
is the candidate; a candidate that changes the shipped defaults (configs/index.yaml) is
adopted only when it beats them on the tuning queries of every size with the label-cluster
95% interval of the paired difference above 0. Otherwise the defaults stay: a difference the
tuning labels cannot tell from noise is no reason to change what the search computes.

The ridge t makes the Dirichlet metric L + beta I, beta = t * trace(L)/F; "ridge share" is
the median share of beta ||q - x||^2 in the Dirichlet energy of each tuning query's top 10 by
that energy (0 = pure Dirichlet energy, 1 = squared Euclidean distance, i.e. cosine on unit
vectors).

    .venv/bin/python scripts/choose_defaults.py --limits 1681,5000
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RIDGES = (0.0, 0.03, 0.1, 0.3, 1.0, 3.0)
BLENDS = (0.0, 0.5, 1.0)
W_LAMBDA = (0.0, 0.05, 0.1, 0.25)
W_G = (0.0, 0.05)
BOOTSTRAP = 1000


@dataclass
class SizeScores:
    limit: int
    cosine: np.ndarray  # per tuning query
    per_query: dict[tuple, np.ndarray]  # (ridge, blend, w_lambda, w_G) -> NDCG@10 per tuning query
    ridge_share: dict[float, float]  # ridge t -> median share of the identity term in the top-10 energies
    clusters: np.ndarray  # primary label of each tuning query

    def gain(self, key: tuple) -> float:
        return float(self.per_query[key].mean() - self.cosine.mean())


def tuning_scores(limit: int) -> SizeScores:
    """NDCG@10 per tuning query for every grid point, cosine's, and the ridge's share of the energy."""
    import torch

    from optical_cli.config.registry import load_config
    from optical_cli.index.build import finish_build
    from optical_cli.index.search import Searcher
    from optical_cli.sweep.diffusion import evaluate_ranking, read_sweep_inputs, setup_sweep
    from optical_cli.sweep.tuning import ScoreTerms

    cfg = load_config("diffusion", None, [f"sweep.limit={limit}", "sweep.text_queries=[]"])
    setup = setup_sweep(cfg, inputs=read_sweep_inputs(cfg))
    tune = setup.split.tune
    queries = torch.from_numpy(setup.vectors[setup.relevance.queries[tune]])
    depth = cfg.sweep.depth + 1
    items = torch.nn.functional.normalize(torch.from_numpy(setup.vectors), dim=1)
    cosine_ranked = torch.topk(torch.nn.functional.normalize(queries, dim=1) @ items.T, depth, dim=1).indices.numpy()
    cosine = evaluate_ranking(setup, cosine_ranked, tune)["ndcg_at_10"]
    print(f"{limit} records, {tune.size} tuning queries: cosine NDCG@10 {cosine.mean():.4f}", flush=True)
    per_query, shares = {}, {}
    squared = (
        (queries * queries).sum(1)[:, None]
        - 2.0 * queries @ torch.from_numpy(setup.vectors).T
        + torch.from_numpy((setup.vectors**2).sum(1))[None, :]
    ).clamp_min(0.0)  # ||q - x||^2
    for ridge, blend in itertools.product(RIDGES, BLENDS):
        searcher = Searcher(finish_build(setup.prepared, eta=0.1, steps=4, lambda_blend=blend, dirichlet_ridge=ridge))
        if blend == BLENDS[0]:  # the share depends on the ridge only
            energy = searcher.energy_scores(searcher.query_terms(queries), queries)["dirichlet"]
            top = torch.topk(energy, 11, dim=1, largest=False).indices  # 10 hits besides the query itself
            share = searcher.beta * torch.gather(squared, 1, top) / torch.gather(energy, 1, top).clamp_min(1e-30)
            shares[ridge] = float(share.median())
        terms = ScoreTerms.compute(searcher, queries)
        for w_lambda, w_g in itertools.product(W_LAMBDA, W_G):
            ranked = terms.rank({"w_lambda": w_lambda, "w_G": w_g, "w_D": 1.0, "alpha": 0.0}, depth)
            per_query[(ridge, blend, w_lambda, w_g)] = evaluate_ranking(setup, ranked, tune)["ndcg_at_10"]
        print(f"  ridge {ridge:g} blend {blend:g} done", flush=True)
    return SizeScores(limit, cosine, per_query, shares, setup.relevance.primary[tune])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limits", default="1681,5000", help="comma-separated corpus sizes (seeded subsets)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from optical_cli.index.config import EnergyBuildSection, EnergySearchSection
    from optical_cli.sweep.metrics import compare

    sizes = [tuning_scores(int(limit)) for limit in args.limits.split(",")]
    keys = list(sizes[0].per_query)
    mean = {key: float(np.mean([size.gain(key) for size in sizes])) for key in keys}
    build, search = EnergyBuildSection(), EnergySearchSection()
    shipped = (build.dirichlet_ridge, build.lambda_blend, search.w_lambda, search.w_G)
    print(
        "ridge share of the top-10 Dirichlet energy: "
        + ", ".join(f"t={t:g}: " + "/".join(f"{size.ridge_share[t]:.2f}" for size in sizes) for t in RIDGES)
    )
    print(
        "ridge  lambda_blend  w_lambda  w_G   NDCG@10 - cosine on tuning queries (per size ... mean); top 25 and the "
        "shipped"
    )
    ranked = sorted(keys, key=lambda key: -mean[key])
    for key in ranked[:25] + ([shipped] if shipped not in ranked[:25] else []):
        mark = "  <- shipped" if key == shipped else ""
        print(
            f"{key[0]:5.2f}  {key[1]:12.2f}  {key[2]:8.2f}  {key[3]:4.2f}  "
            + "  ".join(f"{size.gain(key):+.4f}" for size in sizes)
            + f"  ... {mean[key]:+.4f}{mark}"
        )
    for ridge in RIDGES:
        best_here = max((key for key in keys if key[0] == ridge), key=mean.get)
        print(
            f"best at ridge {ridge:g}: blend {best_here[1]:g}, w_lambda {best_here[2]:g}, w_G {best_here[3]:g}: mean "
            f"{mean[best_here]:+.4f}"
        )
    best = ranked[0]
    print(
        f"best: dirichlet_ridge={best[0]} lambda_blend={best[1]} w_lambda={best[2]} w_G={best[3]} (mean "
        f"{mean[best]:+.4f})"
    )
    if best == shipped:
        print("verdict: the shipped defaults are the best on tuning labels; keep them")
        return
    adopt = True
    for size in sizes:
        diff = compare(size.per_query[best], size.per_query[shipped], BOOTSTRAP, 0, size.clusters)
        adopt &= diff["cluster_low"] > 0
        print(
            f"  {size.limit}: best - shipped {diff['difference']:+.4f}, per query [{diff['low']:+.4f}, "
            f"{diff['high']:+.4f}], "
            f"label clusters [{diff['cluster_low']:+.4f}, {diff['cluster_high']:+.4f}]"
        )
    print(
        "verdict: "
        + (
            "adopt the best (its cluster interval against the shipped defaults is above 0 at every size)"
            if adopt
            else "keep the shipped defaults (the best is not distinguishable from them on tuning labels)"
        )
    )


if __name__ == "__main__":
    main()
