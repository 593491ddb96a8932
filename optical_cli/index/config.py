"""The schema of `optical index build-energy`, `search`, `add` and `delete` (one index, one schema)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from ..config.schema import Section
from ..config.sections import RenderSection, RuntimeConfig


class EnergyInputSection(Section):
    path: Optional[str] = Field(
        None, description="vectors (.npy/.parquet/.safetensors) or texts (.jsonl/.csv); null = the bundled CVE corpus"
    )
    id_field: str = "id"
    text_field: str = Field("description", description="text column of .jsonl/.csv inputs")
    vector_field: str = Field("vector", description="list-valued vector column of .parquet inputs")
    label_field: Optional[str] = Field(
        "cwe", description="labels stored with each item of a .jsonl/.csv input (a list or one string); null = none"
    )
    limit: Optional[int] = Field(1681, ge=1, description="seeded random subset of this many items (null = all)")
    drop_invalid: bool = Field(False, description="drop NaN/Inf/zero rows instead of failing")


class EnergyEmbedSection(Section):
    model: str = Field(
        "default", description="sentence-transformers hub id or local path; default = bundled all-MiniLM-L6-v2"
    )
    batch_size: int = Field(64, ge=1)
    cache_dir: Optional[str] = Field("results/cache/embeddings", description="embedding cache (null disables)")


class EnergyBuildSection(Section):
    centroids: Optional[int] = Field(
        None, ge=2, description="number of k-means centroids; null = ceil(centroid_scale*sqrt(N))"
    )
    centroid_scale: float = Field(2.0, gt=0)
    max_centroids: int = Field(1024, ge=2)
    kmeans_iters: int = Field(20, ge=1)
    kmeans_sample: int = Field(
        20000, ge=2, description="k-means is fitted on a seeded sample of at most this many items"
    )
    optical_tokens: Optional[int] = Field(None, ge=1, description="token budget of the optical compression; null = off")
    trim_quantile: float = Field(0.1, ge=0, lt=1)
    eta: float = Field(0.1, gt=0, le=1)
    steps: int = Field(4, ge=0)
    split_quantile: float = Field(0.9, ge=0, le=1)
    neighbor_k: int = Field(8, ge=1)
    split_tau: float = Field(0.15, ge=0)
    w_lambda: float = Field(1.0, ge=0)
    w_disp: float = Field(0.5, ge=0)
    w_dirichlet: float = Field(0.25, ge=0)
    tau_mode: Literal["fixed", "median", "mean", "percentile"] = Field(
        "median", description="how the energy scale tau is chosen from the energies"
    )
    tau_value: float = Field(0.5, ge=0, description="tau for mode fixed; the percentile (0-100) for mode percentile")
    lambda_formula: Literal["bounded", "published"] = Field(
        "bounded",
        description="bounded: blend*E/(E+tau) + (1-blend)*G/(G+tau_G), every term in [0, 1); "
        "published: tau*E/(E+tau) + (1-tau)*G (ArrowSpace v0.18; a blend only when tau <= 1)",
    )
    lambda_blend: float = Field(
        0.0,
        ge=0,
        le=1,
        description="bounded formula: weight of the energy term E against the dispersion G (0: chosen on tuning "
        "labels, README: sweep)",
    )
    dirichlet_ridge: float = Field(
        0.0,
        ge=0,
        description="t: the search's Dirichlet energy uses L + beta*I with beta = t*trace(L)/F, a proper metric for t "
        "> 0 "
        "(L alone has a null space); 0 = pure Dirichlet energy (kept on tuning labels, README: sweep), large t = "
        "Euclidean "
        "distance, i.e. cosine on unit vectors",
    )
    block_size: int = Field(8192, ge=1, description="rows per block in blockwise item computations")
    ann: Literal["auto", "hnsw", "ivf", "none"] = Field(
        "auto",
        description="FAISS structure for --candidates ann: auto = HNSW below ann_ivf_from items, IVF from there; none "
        "= no ANN",
    )
    ann_ivf_from: int = Field(
        500_000, ge=1, description="auto: item count from which IVF replaces HNSW (HNSW builds slowly at millions)"
    )


class EnergySearchSection(Section):
    k: int = Field(10, ge=1)
    mode: Literal["energy", "cosine", "hybrid"] = "energy"
    w_lambda: float = Field(0.1, ge=0, description="weight of |lambda_q - lambda_i|")
    w_G: float = Field(
        0.05, ge=0, description="weight of the dispersion difference |G_q - G_i| (scaled like lambda's G term)"
    )
    w_D: float = Field(1.0, ge=0, description="weight of the bounded Dirichlet energy e/(e + scale) of q - x_i")
    alpha: float = Field(0.5, ge=0, le=1, description="hybrid: alpha*cosine distance + (1-alpha)*energy score")
    candidates: Literal["exact", "ann"] = Field(
        "exact",
        description="exact: score every item; ann: FAISS candidates (stored by build-energy), then exact rescoring",
    )
    ann_candidates: int = Field(50, ge=1, description="ann: candidates per query rescored exactly")
    hnsw_ef_search: int = Field(
        64, ge=1, description="ann on an HNSW index: search breadth (at least ann_candidates is used)"
    )
    ivf_nprobe: int = Field(32, ge=1, description="ann on an IVF index: inverted lists visited per query")
    lambda_window: Optional[float] = Field(
        None,
        gt=0,
        description="keep only items with |lambda_i - lambda_q| <= this (the published method's lambda pre-filter; "
        "a database filter with store.backend=milvus); null = no window",
    )


class EnergyStoreSection(Section):
    backend: Literal["files", "milvus"] = Field(
        "files", description="where the items live: files in the index directory, or a Milvus collection"
    )
    uri: Optional[str] = Field(
        None,
        description="milvus: null = an embedded Milvus Lite database milvus.db inside the index directory; a path = "
        "a Milvus Lite database there; http://HOST:19530 = a Milvus server or cluster",
    )
    collection: Optional[str] = Field(
        None, description="milvus: the collection name; null = items (Milvus Lite) or one derived from the index path"
    )
    open_timeout: float = Field(
        60.0, gt=0, description="milvus: seconds to wait for a Milvus Lite database another process holds open"
    )
    rebuild_after: float = Field(
        0.8,
        gt=0,
        description="share of items added plus deleted since the build at which `index add`/`delete` say a rebuild "
        "is due: the largest share measured without a loss against a rebuild (README: adding and deleting items)",
    )


class LibrarySection(Section):
    """Documents as pages of passages: `optical index add-documents` (a library of documents) and
    `optical ask --select retrieve` (the pages of one document ranked against the question)."""

    passage_chars: int = Field(
        500,
        ge=100,
        description="a page's text is embedded in passages of at most this many characters, cut at line ends "
        "(the bundled MiniLM reads at most 256 tokens and was trained on 128; shorter passages keep a fact from "
        "being diluted: scripts/library_check.py); a page scores as its best passage",
    )
    render: RenderSection = Field(
        RenderSection(mode="base", reflow=True),
        description="how add-documents draws a library's pages (ask reads them in its own deepencoder.mode)",
    )


class IndexConfig(Section):
    input: EnergyInputSection = EnergyInputSection()
    embed: EnergyEmbedSection = EnergyEmbedSection()
    build: EnergyBuildSection = EnergyBuildSection()
    search: EnergySearchSection = EnergySearchSection()
    store: EnergyStoreSection = EnergyStoreSection()
    library: LibrarySection = LibrarySection()
    runtime: RuntimeConfig = RuntimeConfig()
