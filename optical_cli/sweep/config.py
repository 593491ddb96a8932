"""The schema of `optical sweep diffusion`; it reuses the energy index's embed, build and search sections."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import Field

from ..config.schema import Section, TrackerNames
from ..config.sections import RuntimeConfig
from ..index.config import EnergyBuildSection, EnergyEmbedSection, EnergySearchSection

IR_METRIC = Literal["mrr", "map_cut_20", "ndcg_at_10", "recall_at_10", "recall_at_20", "precision_at_10"]


class SweepSection(Section):
    corpus: Optional[str] = Field(
        None,
        description="JSONL with id, text and label fields, or Parquet with id, vector and label "
        "columns (no embedding run); null = the bundled CVE corpus",
    )
    id_field: str = "id"
    text_field: str = "description"
    vector_field: str = Field("vector", description="list-valued vector column of a Parquet corpus")
    label_field: str = Field("cwe", description="list (or single string) of labels; records sharing one are relevant")
    limit: Optional[int] = Field(
        1681,
        ge=2,
        description="seeded random subset of the corpus (null = every record); 1681 = the published size and the same "
        "subset, hence the same embedding cache, as `optical index build-energy`",
    )
    num_queries: Optional[int] = Field(
        None, ge=1, description="seeded sample of the labelled records as queries (null = all)"
    )
    etas: list[Annotated[float, Field(gt=0, le=1)]] = Field(
        [0.05, 0.1, 0.15, 0.2], min_length=1, description="default for --eta; each in (0, 1], as build.eta"
    )
    steps: list[Annotated[int, Field(ge=1)]] = Field(
        [2, 4, 6, 8],
        min_length=1,
        description="default for --steps; each >= 1 (0 steps is no diffusion: every eta alike)",
    )
    depth: int = Field(100, ge=20, description="ranks retrieved per query; MRR counts a first hit within this depth")
    bootstrap: int = Field(1000, ge=100, description="bootstrap resamples for the 95% intervals")
    faiss: bool = Field(True, description="also evaluate FAISS IndexFlatIP as a baseline when faiss is importable")
    text_queries: list[str] = Field(
        [
            "authenticated user can execute arbitrary SQL commands via parameter",
            "buffer overflow allows remote attackers to execute arbitrary code via a crafted packet",
            "cross-site scripting allows remote attackers to inject arbitrary web script or HTML",
        ],
        description="qualitative top-10 table (ours: the published post did not print its query texts)",
    )
    show_k: int = Field(10, ge=1, le=50, description="rows per query in the qualitative table")
    log_with: TrackerNames = Field(
        [],
        description="experiment trackers summary.json's numbers also go to, in the run directory (see train.log_with)",
    )


class SweepTuningSection(Section):
    enabled: bool = True
    method: Literal["grid", "random"] = Field(
        "random", description="grid = every combination; random = `trials` of them"
    )
    trials: int = Field(60, ge=1, description="combinations tried by the random search")
    tune_fraction: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="share of the LABELS whose queries are used for choices (best cell, "
        "weights); queries of the other labels are held out and every reported figure is theirs",
    )
    metric: IR_METRIC = Field("ndcg_at_10", description="what the tuning maximises on the tuning split")
    w_lambda: list[float] = Field([0.0, 0.25, 0.5, 1.0, 2.0], min_length=1)
    w_G: list[float] = Field([0.0, 0.25, 0.5, 1.0], min_length=1)
    w_D: list[float] = Field([0.0, 0.1, 0.25, 0.5, 1.0, 2.0], min_length=1)
    alpha: list[float] = Field(
        [0.0, 0.25, 0.5, 0.75, 0.9], min_length=1, description="hybrid alpha*cosine + (1-alpha)*energy; 0 = pure energy"
    )


class DiffusionConfig(Section):
    sweep: SweepSection = SweepSection()
    tuning: SweepTuningSection = SweepTuningSection()
    embed: EnergyEmbedSection = EnergyEmbedSection()
    build: EnergyBuildSection = EnergyBuildSection()
    search: EnergySearchSection = EnergySearchSection()
    runtime: RuntimeConfig = RuntimeConfig()
