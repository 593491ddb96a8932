"""Search-weight tuning (w_lambda, w_G, w_D and hybrid alpha) with a held-out report.

The queries are split once (seeded) into a tuning part and a held-out part. Everything
chosen - the diffusion cell and the weights - is chosen on the tuning part only; the
held-out part scores the chosen setting, the default weights and cosine, with paired
bootstrap intervals. The score's terms (|d lambda|, |d G|, bounded Dirichlet energy, cosine
distance) do not depend on the weights, so they are computed once per query batch and each
trial is only a weighted sum plus a top-k.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from ..config import SweepTuningSection
from ..index.search import Searcher
from .grid import Cell
from .metrics import METRIC_NAMES, paired_bootstrap_difference, summarize

WEIGHT_NAMES = ("w_lambda", "w_G", "w_D", "alpha")


def split_queries(n_queries: int, tune_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (into the query list) of the tuning and the held-out queries, both sorted."""
    if n_queries < 2:
        raise ValueError("tuning needs at least two queries (one to tune on, one to hold out)")
    order = np.random.default_rng([seed, 7]).permutation(n_queries)
    n_tune = min(n_queries - 1, max(1, round(tune_fraction * n_queries)))
    return np.sort(order[:n_tune]), np.sort(order[n_tune:])


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
        energy = weights["w_lambda"] * self.d_lambda + weights["w_G"] * self.d_G + weights["w_D"] * self.bounded
        score = weights["alpha"] * self.cosine_distance + (1.0 - weights["alpha"]) * energy
        return torch.topk(score, k, dim=1, largest=False).indices.cpu().numpy()


def _terms(searcher: Searcher, queries: torch.Tensor, batch: int) -> list[ScoreTerms]:
    return [ScoreTerms.compute(searcher, queries[start:start + batch]) for start in range(0, queries.shape[0], batch)]


def _rank_all(terms: list[ScoreTerms], weights: dict[str, float], k: int) -> np.ndarray:
    return np.concatenate([part.rank(weights, k) for part in terms])


def choose_cell(rows: list[dict], tune: np.ndarray, metric: str) -> Cell:
    """The energy cell with the best mean ``metric`` over the TUNING queries only."""
    energy = [row for row in rows if row["method"] == "energy"]
    best = max(energy, key=lambda row: (float(np.mean(np.asarray(row["per_query"][metric])[tune])), -row["eta"], -row["steps"]))
    return Cell(best["eta"], best["steps"])


def tune(
    searcher: Searcher,
    cell: Cell,
    query_vectors: torch.Tensor,
    evaluate: Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]],
    cosine_per_query: dict[str, list[float]],
    default_weights: dict[str, float],
    section: SweepTuningSection,
    tune_positions: np.ndarray,
    held_positions: np.ndarray,
    k: int,
    n_boot: int,
    seed: int,
    batch: int = 512,
    progress: Optional[Callable[[int], None]] = None,
) -> tuple[dict, list[dict]]:
    """Search the weights on the tuning queries, report chosen vs default vs cosine on held-out.

    ``evaluate(ranked, positions)`` turns ranked item rows of the queries at ``positions``
    into per-query metrics. Returns (report, trial rows).
    """
    metric = section.metric
    tune_terms = _terms(searcher, query_vectors[torch.from_numpy(tune_positions).to(query_vectors.device)], batch)
    trials = []
    for weights in candidate_weights(section, seed):
        per_query = evaluate(_rank_all(tune_terms, weights, k), tune_positions)
        trials.append({**weights, **{name: float(per_query[name].mean()) for name in METRIC_NAMES}})
        if progress:
            progress(1)
    del tune_terms
    best = max(trials, key=lambda t: t[metric])
    chosen = {name: best[name] for name in WEIGHT_NAMES}

    held_terms = _terms(searcher, query_vectors[torch.from_numpy(held_positions).to(query_vectors.device)], batch)
    held = {
        "tuned": evaluate(_rank_all(held_terms, chosen, k), held_positions),
        "default": evaluate(_rank_all(held_terms, {**default_weights, "alpha": 0.0}, k), held_positions),
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
        "default_weights": {**default_weights, "alpha": 0.0},
        "held_out": {name: summarize(values, n_boot, seed) for name, values in held.items()},
        "held_out_tuned_vs_cosine": {name: paired_bootstrap_difference(held["tuned"][name], held["cosine"][name], n_boot, seed) for name in METRIC_NAMES},
        "held_out_tuned_vs_default": {name: paired_bootstrap_difference(held["tuned"][name], held["default"][name], n_boot, seed) for name in METRIC_NAMES},
        "held_out_default_vs_cosine": {name: paired_bootstrap_difference(held["default"][name], held["cosine"][name], n_boot, seed) for name in METRIC_NAMES},
    }
    return report, trials
