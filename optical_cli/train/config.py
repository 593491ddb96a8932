"""The schema of `optical train-adapter` (and export-adapter, which reads a run's config)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from ..config.schema import Section, TrackerNames
from ..config.sections import AdapterSection, DeepEncoderSection, RenderSection, RuntimeConfig, VLMSection


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
