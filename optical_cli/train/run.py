"""A train-adapter run as the command drives it: everything that can fail on the user's input is
checked, and the models are loaded, before the run directory exists (``prepare_training``); then
the prepared run trains into that directory (``PreparedTraining.train``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..distributed import Processes
from ..models.adapter import ADAPTER_FILE, PUBLISHED_FILE
from ..models.loading import RANDOM_SOURCE, require_downloads
from ..models.lora import LORA_DIR
from ..models.provenance import chain_downloads
from ..models.vlm import VisionLanguageReader
from ..tracking import TRACKER_ARTIFACTS
from .checkpoints import Checkpoint, open_checkpoint
from .config import TrainAdapterConfig
from .corpus import training_corpus
from .loop import TrainResult, train_adapter
from .outputs import LOSS_PLOT, METRICS_FILE, READING_FILE
from .pages import TrainingEvents
from .setup import TrainingRuntime, initial_adapter, load_reader, training_runtime

# The artifacts a run leaves in its directory, for the manifest (those that exist)
RUN_ARTIFACTS = (
    ADAPTER_FILE,
    "adapter.json",
    PUBLISHED_FILE,
    METRICS_FILE,
    LOSS_PLOT,
    READING_FILE,
    LORA_DIR,
    *TRACKER_ARTIFACTS,
)


def uses_random_weights(cfg: TrainAdapterConfig) -> bool:
    """Qwen3-VL or DeepEncoder random: the losses and the reading check test the pipeline, nothing more."""
    return cfg.vlm.source == RANDOM_SOURCE or cfg.deepencoder.weights == "random"


@dataclass
class PreparedTraining:
    """A run checked and loaded: its corpus, the checkpoint it resumes from, its runtime and reader."""

    cfg: TrainAdapterConfig
    documents: list[str]
    checkpoint: Checkpoint | None
    runtime: TrainingRuntime
    reader: VisionLanguageReader

    def train(self, run_path: Path, progress: TrainingEvents | None = None) -> TrainResult:
        return train_adapter(
            self.cfg,
            run_path,
            self.runtime,
            self.reader,
            documents=self.documents,
            resume=self.checkpoint,
            progress=progress,
        )


def prepare_training(
    cfg: TrainAdapterConfig, processes: Processes, resume_from: Path | None = None
) -> PreparedTraining:
    """Every download the run needs and is missing (offline: named at once), an unusable corpus or a corrupt
    checkpoint fail first, then a model that cannot be loaded or an ``adapter.init`` that does not fit it;
    all before any file is written."""
    require_downloads(chain_downloads(cfg.vlm, cfg.deepencoder.weights, cfg.adapter.init, "adapter.init"))
    documents = training_corpus(cfg)
    checkpoint = open_checkpoint(resume_from) if resume_from is not None else None
    runtime = training_runtime(cfg.runtime, processes)
    reader = load_reader(cfg, runtime)
    initial_adapter(cfg, reader)
    return PreparedTraining(cfg, documents, checkpoint, runtime, reader)
