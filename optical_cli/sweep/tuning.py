"""Search-weight tuning (w_lambda, w_G, w_D and hybrid alpha) with a held-out report.

The queries are split once by label (relevance.split_by_label) into a tuning part and a
held-out part. Everything chosen - the diffusion cell and the weights - is chosen on the
tuning part only; the held-out part scores the chosen setting, the default weights and
cosine, with paired bootstrap intervals (queries and label clusters resampled). The score's
terms (|d lambda|, |d G|, bounded Dirichlet energy, cosine distance) do not depend on the
weights, so they are computed once per block of queries and every trial is scored on that
block before the next: memory is one block x items per term whatever the query count.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from ..index.search import Searcher
from .config import SweepTuningSection
from .grid import DiffusionCell
from .metrics import METRIC_NAMES, compare, summarize_metrics

WEIGHT_NAMES = ("w_lambda", "w_G", "w_D", "alpha")


def candidate_weights(section: SweepTuningSection, seed: int) -> list[dict[str, float]]:
    """Every combination (grid) or a seeded sample of them (random); all-zero energy weights skipped."""
    combos = [
        dict(zip(WEIGHT_NAMES, values))
        for values in itertools.product(section.w_lambda, section.w_G, section.w_D, section.alpha)
        if values[0] + values[1] + values[2] > 0  # all-zero energy weights rank nothing by energy
    ]
    if section.method == "random" and section.trials < len(combos):
        pick = np.random.default_rng([seed, 11]).choice(len(combos), size=section.trials, replace=False)
        combos = [combos[i] for i in np.sort(pick)]
    return combos


@dataclass
class ScoreTerms:
    """Weight-independent score terms of a set of queries against every item (queries x items)."""

    d_lambda: torch.Tensor
    d_G: torch.Tensor
    bounded: torch.Tensor
    cosine_distance: torch.Tensor

    @classmethod
    def compute(cls, searcher: Searcher, queries: torch.Tensor) -> "ScoreTerms":
        q = searcher.query_terms(queries)
        parts = searcher.energy_scores(q, queries)
        cosine = searcher.cosine(queries)
        return cls(parts["d_lambda"], parts["d_G"], parts["bounded_dirichlet"], (1.0 - cosine) / 2.0)

    def rank(self, weights: dict[str, float], k: int) -> np.ndarray:
        """Top-k item rows (lowest score first) of alpha*cos_dist + (1-alpha)*energy."""
        energy_share = 1.0 - weights["alpha"]
        parts = (
            (self.d_lambda, weights["w_lambda"] * energy_share),
            (self.d_G, weights["w_G"] * energy_share),
            (self.bounded, weights["w_D"] * energy_share),
            (self.cosine_distance, weights["alpha"]),
        )
        score = torch.zeros_like(self.bounded)
        for term, weight in parts:
            if weight:  # one in-place pass per term that counts: no temporaries of queries x items
                score.add_(term, alpha=weight)
        return torch.topk(score, k, dim=1, largest=False).indices.cpu().numpy()


def score_blocks(
    searcher: Searcher,
    queries: torch.Tensor,
    positions: np.ndarray,
    weightings: list[dict[str, float]],
    k: int,
    evaluate: Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]],
    block: int,
    progress: Optional[Callable[[int], None]] = None,
) -> list[dict[str, np.ndarray]]:
    """Per-query metrics of every weighting for the queries at ``positions``, streamed block by block."""
    parts: list[list[dict[str, np.ndarray]]] = [[] for _ in weightings]
    for start in range(0, positions.size, block):
        chunk = positions[start : start + block]
        terms = ScoreTerms.compute(searcher, queries[torch.from_numpy(chunk).to(queries.device)])
        for part, weights in zip(parts, weightings):
            part.append(evaluate(terms.rank(weights, k), chunk))
        del terms
        if progress:
            progress(0)
    return [{name: np.concatenate([p[name] for p in part]) for name in METRIC_NAMES} for part in parts]


def choose_cell(rows: list[dict], tune: np.ndarray, metric: str) -> DiffusionCell:
    """The energy cell with the best mean ``metric`` over the TUNING queries only."""
    energy = [row for row in rows if row["method"] == "energy"]
    best = max(
        energy, key=lambda row: (float(np.mean(np.asarray(row["per_query"][metric])[tune])), -row["eta"], -row["steps"])
    )
    return DiffusionCell(best["eta"], best["steps"])


def tune(
    searcher: Searcher,
    cell: DiffusionCell,
    query_vectors: torch.Tensor,
    evaluate: Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]],
    cosine_per_query: dict[str, list[float]],
    default_weights: dict[str, float],
    section: SweepTuningSection,
    tune_positions: np.ndarray,
    held_positions: np.ndarray,
    held_clusters: np.ndarray,
    k: int,
    n_boot: int,
    seed: int,
    block: int = 512,
    progress: Optional[Callable[[int], None]] = None,
) -> tuple[dict, list[dict]]:
    """Search the weights on the tuning queries, report chosen vs default vs cosine on held-out.

    ``evaluate(ranked, positions)`` turns ranked item rows of the queries at ``positions``
    into per-query metrics. ``held_clusters`` are the held-out queries' label clusters.
    Returns (report, trial rows).
    """
    metric = section.metric
    combos = candidate_weights(section, seed)
    tuned = score_blocks(searcher, query_vectors, tune_positions, combos, k, evaluate, block, progress)
    trials = [
        {**weights, **{name: float(per_query[name].mean()) for name in METRIC_NAMES}}
        for weights, per_query in zip(combos, tuned)
    ]
    best = max(trials, key=lambda t: t[metric])
    chosen = {name: best[name] for name in WEIGHT_NAMES}
    defaults = {**default_weights, "alpha": 0.0}
    chosen_held, default_held = score_blocks(
        searcher, query_vectors, held_positions, [chosen, defaults], k, evaluate, block
    )
    held = {
        "tuned": chosen_held,
        "default": default_held,
        "cosine": {name: np.asarray(cosine_per_query[name])[held_positions] for name in METRIC_NAMES},
    }

    report = {
        "cell": {"eta": cell.eta, "steps": cell.steps},
        "metric": metric,
        "method": section.method,
        "trials": len(trials),
        "tune_queries": int(tune_positions.size),
        "held_out_queries": int(held_positions.size),
        "chosen_weights": chosen,
        "chosen_tuning_value": best[metric],
        "default_weights": defaults,
    }
    return report | _held_out_report(held, n_boot, seed, held_clusters), trials


def _held_out_report(held: dict, n_boot: int, seed: int, clusters: np.ndarray) -> dict:
    """Each setting's held-out means with both intervals, and the paired comparisons between them."""

    def versus(a: str, b: str) -> dict:
        return {name: compare(held[a][name], held[b][name], n_boot, seed, clusters) for name in METRIC_NAMES}

    return {
        "held_out": {name: summarize_metrics(values, n_boot, seed, clusters) for name, values in held.items()},
        "held_out_tuned_vs_cosine": versus("tuned", "cosine"),
        "held_out_tuned_vs_default": versus("tuned", "default"),
        "held_out_default_vs_cosine": versus("default", "cosine"),
    }
