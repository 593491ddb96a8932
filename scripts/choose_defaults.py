#!/usr/bin/env python
"""How the shipped energy-search defaults were chosen: on the sweep's TUNING labels only.

For each corpus size, the sweep's setup (seeded subset, MiniLM embeddings, relevance, the
split by label) is built; every (lambda_blend, w_lambda, w_G) of a small grid (w_D = 1, eta
0.1, steps 4) ranks the tuning queries, and trec_eval's NDCG@10 is printed beside cosine's on
the same queries. The held-out queries are never scored here. The defaults in
configs/energy.yaml are the best mean over the sizes given.

    .venv/bin/python scripts/choose_defaults.py --limits 1681,5000
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BLENDS = (0.0, 0.5, 1.0)
W_LAMBDA = (0.0, 0.05, 0.1, 0.25)
W_G = (0.0, 0.05)


def tuning_scores(limit: int) -> dict[tuple, float]:
    """NDCG@10 minus cosine's on the tuning queries, per (blend, w_lambda, w_G)."""
    import torch

    from optical_cli.config import load_config
    from optical_cli.index.build import finish
    from optical_cli.index.search import Searcher
    from optical_cli.sweep.diffusion import evaluate_ranking, read_sweep_inputs, setup_sweep
    from optical_cli.sweep.tuning import ScoreTerms

    cfg = load_config("sweep", None, [f"sweep.limit={limit}", "sweep.text_queries=[]"])
    setup = setup_sweep(cfg, inputs=read_sweep_inputs(cfg))
    tune = setup.split.tune
    queries = torch.from_numpy(setup.vectors[setup.relevance.queries[tune]])
    depth = cfg.sweep.depth + 1
    items = torch.nn.functional.normalize(torch.from_numpy(setup.vectors), dim=1)
    cosine_ranked = torch.topk(torch.nn.functional.normalize(queries, dim=1) @ items.T, depth, dim=1).indices.numpy()
    cosine = float(evaluate_ranking(setup, cosine_ranked, tune)["ndcg_at_10"].mean())
    print(f"{limit} records, {tune.size} tuning queries: cosine NDCG@10 {cosine:.4f}", flush=True)
    out = {}
    for blend in BLENDS:
        terms = ScoreTerms.compute(Searcher(finish(setup.prepared, eta=0.1, steps=4, lambda_blend=blend)), queries)
        for w_lambda, w_g in itertools.product(W_LAMBDA, W_G):
            ranked = terms.rank({"w_lambda": w_lambda, "w_G": w_g, "w_D": 1.0, "alpha": 0.0}, depth)
            out[(blend, w_lambda, w_g)] = float(evaluate_ranking(setup, ranked, tune)["ndcg_at_10"].mean()) - cosine
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limits", default="1681,5000", help="comma-separated corpus sizes (seeded subsets)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    per_size = [tuning_scores(int(limit)) for limit in args.limits.split(",")]
    mean = {key: float(np.mean([scores[key] for scores in per_size])) for key in per_size[0]}
    print("lambda_blend  w_lambda  w_G   NDCG@10 - cosine on tuning queries (per size ... mean)")
    for key, value in sorted(mean.items(), key=lambda item: -item[1]):
        print(f"{key[0]:12.2f}  {key[1]:8.2f}  {key[2]:4.2f}  " + "  ".join(f"{s[key]:+.4f}" for s in per_size) + f"  ... {value:+.4f}")
    best = max(mean, key=mean.get)
    print(f"best: lambda_blend={best[0]} w_lambda={best[1]} w_G={best[2]} (mean {mean[best]:+.4f})")


if __name__ == "__main__":
    main()
