"""Adapter training: DeepEncoder and Qwen3-VL frozen, the optical adapter learns to make pages readable.

Pipeline:
  1. documents (.txt / .jsonl / a directory / hf:owner/name) -> rendered pages
     -> DeepEncoder features [pages, tokens, 1280], computed once and cached on disk
     (safetensors, keyed by the corpus and every setting that changes the features);
  2. epochs over the cached features: adapter -> spliced into the chat prompt -> frozen LLM;
     objective ``reconstruction`` (next-token loss on the page's own text, read from its
     optical tokens) or ``mse`` (the published one: mean-pooled adapted tokens vs the
     mean-pooled text embeddings of the page);
  3. checkpoints (adapter, optimizer, scheduler, RNG, data position) every N steps;
     ``resume`` continues bit-for-bit where a checkpoint left off;
  4. a reading check on held-out pages: greedy decoding from the optical tokens,
     character error rate beside the compression ratio (text tokens per vision token).

Multi-GPU through accelerate (``accelerate launch -m optical_cli.cli train-adapter ...``);
each process takes every world_size-th batch of the same shuffled order.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol

import torch

from .artifacts import append_jsonl, atomic_path, atomic_write_json, atomic_write_text, iter_jsonl_objects, read_jsonl
from .config import DeepEncoderSection, RenderSection, RuntimeConfig, TrainAdapterConfig
from .errors import ConfigError, InputError
from .memory import PeakMemory
from .models import loading
from .models.adapter import AdapterConfig, OpticalAdapter, parameter_count, save_adapter
from .models.vlm import READ_INSTRUCTION, VisionLanguageReader, build_layout, splice

Progress = Callable[[dict], None]
CHECKPOINT_DIR = "checkpoints"
CACHE_SHARD_PAGES = 256  # pages per feature-cache shard, as `optical encode` shards by default
IGNORE = -100


# ---------------------------------------------------------------------------------------
# Documents


def _texts_from_jsonl(path: Path, field_name: str) -> Iterator[str]:
    for _, record in iter_jsonl_objects(path):
        value = record.get(field_name)
        if isinstance(value, str):
            yield value


def _texts_from_hub(name: str, split: str, field_name: str, limit: int | None) -> Iterator[str]:
    try:
        from datasets import load_dataset

        dataset = load_dataset(name, split=split, streaming=True)
        for index, record in enumerate(dataset):
            if limit is not None and index >= limit * 4:  # skips short texts; bounded so a bad field fails fast
                return
            value = record.get(field_name)
            if isinstance(value, str):
                yield value
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - datasets raises many types when offline or misnamed
        raise InputError(
            f"cannot read hub dataset {name!r} (split {split!r}): {type(exc).__name__}: {exc}; "
            "check the name and the network (HF_DATASETS_OFFLINE=1 blocks it), or pass a local file"
        ) from None


def read_corpus(source: str, field_name: str = "description", split: str = "train",
                max_documents: int | None = None, min_chars: int = 1) -> list[str]:
    """Documents of at least ``min_chars`` non-blank characters, in corpus order."""
    if source.startswith("hf:"):
        texts: Iterator[str] = _texts_from_hub(source[3:], split, field_name, max_documents)
    else:
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in (".txt", ".md", ".jsonl"))
        elif path.is_file():
            files = [path]
        else:
            raise InputError(f"training data not found: {source}; pass a .txt/.jsonl file, a directory of them, or hf:owner/name")
        texts = (t for f in files for t in (_texts_from_jsonl(f, field_name) if f.suffix.lower() == ".jsonl"
                                            else [f.read_text(encoding="utf-8", errors="replace")]))
    documents = []
    for text in texts:
        if len(text.strip()) >= min_chars:
            documents.append(text.strip())
            if max_documents is not None and len(documents) >= max_documents:
                break
    if not documents:
        raise InputError(
            f"{source}: no usable text (no document with at least {min_chars} characters"
            + ("" if source.startswith("hf:") or not source.endswith(".jsonl") else f" in field '{field_name}'")
            + "); check data.source, data.text_field and data.min_chars"
        )
    return documents


# ---------------------------------------------------------------------------------------
# Pages -> features (the encoder plugs in here)


class PageEncoder(Protocol):
    """Anything that turns page images into vision tokens ``[pages, tokens, out_dim]``."""

    out_dim: int
    identity: dict  # everything that changes the output (goes into the cache key)

    def encode(self, images: list) -> torch.Tensor: ...

    def parameter_count(self) -> int: ...


class DeepEncoderPages:
    """The frozen DeepEncoder of ``optical encode`` (same weights, preprocessing and batching),
    loaded on first use so a run whose features are cached never loads it.

    ``encode(images)`` -> ``[pages, tokens, out_dim]`` float32 on the CPU. Built from the
    ``deepencoder:`` and ``runtime:`` config sections, so the LongBench comparison can use it too.
    """

    def __init__(self, section: DeepEncoderSection, runtime: RuntimeConfig, device: torch.device, batch_size: int = 8):
        if section.mode == "gundam":
            raise ConfigError("deepencoder.mode=gundam gives each page a different token count; "
                              "use tiny, small, base or large")
        self.section, self.runtime, self.device, self.batch_size = section, runtime, device, batch_size
        self.mode, self.layout_tokens = section.mode, section.layout_tokens
        self.identity = {"deepencoder": section.model_dump(), "dtype": runtime.dtype, "seed": runtime.seed}
        self._model = self._runner = None

    def load(self) -> None:
        """Load the weights now (otherwise the first ``encode`` does)."""
        if self._model is not None:
            return
        from .config import EncodeConfig, EncodeSection
        from .encode import BatchRunner, build_encoder

        runtime = self.runtime.model_copy(update={"device": str(self.device)})
        encode_cfg = EncodeConfig(deepencoder=self.section, runtime=runtime, encode=EncodeSection(batch_size=self.batch_size))
        self._model, device, dtype = build_encoder(encode_cfg)
        self._model.requires_grad_(False)
        self._runner = BatchRunner(self._model, self.batch_size, device, dtype)

    def architecture(self):
        """The encoder's sizes (a ``DeepEncoderConfig``); random weights need no loading to know them."""
        from .models.deepencoder import DeepEncoderConfig

        if self._model is None and self.section.weights == "random":
            return DeepEncoderConfig.named(self.section.architecture)
        self.load()
        return self._model.cfg

    @property
    def out_dim(self) -> int:
        return self.architecture().out_dim

    def parameter_count(self) -> int:
        """Parameters of the encoder (counted on the meta device: no memory, no loading for random weights)."""
        from .models.deepencoder import DeepEncoder, count_parameters

        architecture = self.architecture()
        with torch.device("meta"):
            return count_parameters(DeepEncoder(architecture))

    def encode(self, images: list) -> torch.Tensor:
        from .encode import encode_group
        from .models.deepencoder.preprocess import prepare

        self.load()
        prepared = [prepare(image, self.mode) for image in images]
        return torch.stack(encode_group(self._runner, self._model, prepared, self.layout_tokens))

    def encode_text(self, text: str, render: RenderSection, max_pages: int | None = None) -> tuple[torch.Tensor, list[str]]:
        """Render ``text`` at this mode's page size and encode it: (features [P, T, D], page texts)."""
        from .render import render_document

        pages = render_document(text, render.model_copy(update={"mode": self.mode}))[:max_pages]
        if not pages:
            raise InputError("the document rendered to no pages; is it empty?")
        return self.encode([p.image for p in pages]), [p.text for p in pages]


@dataclass
class PageSet:
    """Cached pages: features [P, T, D] (CPU), the text drawn on each page, its document and page index."""

    features: torch.Tensor
    texts: list[str]
    document: list[int]
    page_index: list[int]

    def __len__(self) -> int:
        return len(self.texts)

    @classmethod
    def empty(cls) -> "PageSet":
        return cls(torch.empty(0, 0, 0), [], [], [])

def _cache_key(documents: list[str], render_json: str, encoder_identity: dict, max_pages: int, pack: bool) -> str:
    digest = hashlib.sha256()
    for text in documents:
        digest.update(hashlib.sha256(text.encode("utf-8")).digest())
    digest.update(json.dumps([render_json, encoder_identity, max_pages] + ([True] if pack else []), sort_keys=True).encode())
    return digest.hexdigest()[:24]


PACK_SEPARATOR = "\n\n"  # packed documents are paragraphs of one text stream


def _rendered_pages(documents: list[str], section: RenderSection, pack: bool, max_pages: int) -> Iterator[tuple[int, int, object]]:
    """(document, page index, page) in reading order, at most ``max_pages`` pages per document.

    Packed, as language-model pretraining packs sequences: the documents are one stream of
    paragraphs, so every page but the last is full; the stream's pages are numbered in runs of
    ``max_pages`` (the adapter's page embeddings), each run counting as one document.
    """
    from .render import iter_pages, render_document

    if pack:
        for number, page in enumerate(iter_pages(PACK_SEPARATOR.join(documents), section, "packed documents")):
            yield (*divmod(number, max_pages), page)
        return
    for doc_id, text in enumerate(documents):
        for index, page in enumerate(render_document(text, section, f"document {doc_id}")[:max_pages]):
            yield doc_id, index, page


def build_page_set(documents: list[str], cfg: TrainAdapterConfig, encoder: PageEncoder, cache_dir: Path,
                   progress: Progress | None = None) -> tuple[PageSet, bool]:
    """Render and encode every document once; later calls read the cache. Returns (pages, cache hit).

    The cache is written as `optical encode` writes features (shards of ``CACHE_SHARD_PAGES``
    pages, one reader for both), so caching holds one shard in memory, not the corpus twice;
    ``pages.json`` is written last and marks a complete cache.
    """
    from .features import FeatureFiles, ShardedFeatures

    section = page_render_section(cfg)
    key = _cache_key(documents, section.model_dump_json(), encoder.identity, cfg.adapter.max_pages, cfg.data.pack)
    folder = cache_dir / key
    pages_file = folder / "pages.json"
    if pages_file.is_file():
        meta = json.loads(pages_file.read_text(encoding="utf-8"))
        return PageSet(FeatureFiles.open(folder).load()[0], meta["texts"], meta["document"], meta["page_index"]), True
    shards = ShardedFeatures(folder / "features.safetensors", CACHE_SHARD_PAGES)
    shards.clear()
    texts, document, page_index, pending, encoded = [], [], [], [], []
    written = 0

    def flush(final: bool = False) -> None:
        nonlocal written
        if pending:
            encoded.extend(encoder.encode(pending))
            if progress:
                progress({"event": "encode", "pages": len(pending)})
            pending.clear()
        while encoded and (len(encoded) >= shards.pages_per_shard or final):
            chunk = encoded[: shards.pages_per_shard]
            shards.write(written // shards.pages_per_shard, written, chunk,
                         [f"document {d}" for d in document[written:written + len(chunk)]], chunk[0].dtype)
            written += len(chunk)
            del encoded[: len(chunk)]

    for doc_id, index, page in _rendered_pages(documents, section, cfg.data.pack, cfg.adapter.max_pages):
        if not page.text.strip():
            continue
        texts.append(page.text)
        document.append(doc_id)
        page_index.append(index)
        pending.append(page.image)
        if len(pending) >= cfg.data.encode_batch_size:
            flush()
    flush(final=True)
    if not texts:
        raise InputError("the corpus rendered to no page with visible text; check data.source and render settings")
    shards.finish(len(texts))
    atomic_write_json(pages_file, {"texts": texts, "document": document, "page_index": page_index})
    return PageSet(FeatureFiles.open(folder).load()[0], texts, document, page_index), False


def split_documents(documents: list[str], eval_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, held-out) documents, each in corpus order: whole documents are held out, before any
    packing, so no held-out text is ever on a training page."""
    order = list(range(len(documents)))
    random.Random(seed).shuffle(order)
    n_eval = int(round(len(documents) * eval_fraction))
    if eval_fraction > 0 and len(documents) >= 2:
        n_eval = max(1, min(n_eval, len(documents) - 1))
    held = set(order[:n_eval])
    return ([d for i, d in enumerate(documents) if i not in held], [d for i, d in enumerate(documents) if i in held])


# ---------------------------------------------------------------------------------------
# Batches and losses


@dataclass
class Example:
    input_ids: torch.Tensor      # [L]
    vision_mask: torch.Tensor    # [L]
    position_ids: torch.Tensor   # [4, L]
    answer_start: int
    answer_ids: torch.Tensor     # [A] page text tokens (+ <|im_end|>)
    text_tokens: int             # tokens of the whole page text, before the cut at max_text_tokens


def make_examples(reader: VisionLanguageReader, pages: PageSet, max_text_tokens: int) -> list[Example]:
    """Chat sequences 'vision page + instruction -> page text', text cut at ``max_text_tokens``."""
    tokens = int(pages.features.shape[1]) if len(pages) else 0
    examples = []
    for text in pages.texts:
        ids = reader.tokenizer.encode(text)
        if len(ids) > max_text_tokens:
            text = reader.tokenizer.decode(ids[:max_text_tokens])
        layout = build_layout(reader.tokenizer, READ_INSTRUCTION, [tokens], answer=text)
        examples.append(Example(layout.input_ids, layout.vision_mask, layout.position_ids, layout.answer_start,
                                layout.input_ids[layout.answer_start:], len(ids)))
    return examples


def page_statistics(pages: PageSet, examples: list[Example], max_text_tokens: int) -> dict:
    """How full the training pages are: characters and text tokens per page, text tokens per vision
    token (DeepSeek-OCR reads about 97% of the text back at 10, about 60% at 20), and the share of
    each page's text the reconstruction target covers."""
    if not examples:
        return {}
    vision = int(pages.features.shape[1])
    text_tokens = [e.text_tokens for e in examples]
    return {
        "characters_per_page": round(sum(len(t) for t in pages.texts) / len(examples), 1),
        "text_tokens_per_page": round(sum(text_tokens) / len(examples), 1),
        "text_tokens_per_vision_token": round(sum(text_tokens) / len(examples) / vision, 3),
        "target_coverage": round(sum(min(n, max_text_tokens) for n in text_tokens) / max(1, sum(text_tokens)), 4),
    }


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: ids, vision mask, attention mask, labels (answer only), position ids [4, B, L]."""
    length = max(e.input_ids.shape[0] for e in examples)
    batch = len(examples)
    ids = torch.full((batch, length), pad_id, dtype=torch.long)
    vision = torch.zeros(batch, length, dtype=torch.bool)
    attention = torch.zeros(batch, length, dtype=torch.long)
    labels = torch.full((batch, length), IGNORE, dtype=torch.long)
    positions = torch.zeros(4, batch, length, dtype=torch.long)
    for row, e in enumerate(examples):
        n = e.input_ids.shape[0]
        ids[row, :n] = e.input_ids
        vision[row, :n] = e.vision_mask
        attention[row, :n] = 1
        labels[row, e.answer_start:n] = e.input_ids[e.answer_start:]
        positions[:, row, :n] = e.position_ids
    return {"input_ids": ids, "vision_mask": vision, "attention_mask": attention, "labels": labels, "position_ids": positions}


def reconstruction_loss(model, adapted: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy of the page text given its adapted vision tokens."""
    embed = model.get_input_embeddings()
    inputs = splice(embed, batch["input_ids"], batch["vision_mask"], adapted)
    hidden = model.model(inputs_embeds=inputs, attention_mask=batch["attention_mask"],
                         position_ids=batch["position_ids"], use_cache=False).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    logits = model.lm_head(hidden[:, :-1][keep])  # only where a label exists: the vocabulary is 152k wide
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep])


def mse_loss(model, adapted: torch.Tensor, examples: list[Example]) -> torch.Tensor:
    """The published objective: MSE between mean-pooled adapted tokens and mean-pooled text embeddings."""
    embed = model.get_input_embeddings()
    device = adapted.device
    text_means = torch.stack([embed(e.answer_ids[:-1].to(device)).float().mean(0) for e in examples])
    return torch.nn.functional.mse_loss(adapted.float().mean(1), text_means)


# ---------------------------------------------------------------------------------------
# Schedule, checkpoints


def lr_lambda(warmup: int, total: int, min_ratio: float) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: Path, adapter: OpticalAdapter, optimizer, scheduler, step: int, keep: int,
                    training: dict, data_position: dict) -> Path:
    target = folder / CHECKPOINT_DIR / f"step-{step:07d}"
    target.mkdir(parents=True, exist_ok=True)
    save_adapter(adapter, target / "adapter.pth", training)
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step, "data_position": data_position,
             "rng": _rng_state()}
    with atomic_path(target / "trainer_state.pth") as tmp:
        torch.save(state, tmp)
    existing = sorted((folder / CHECKPOINT_DIR).glob("step-*"))
    for old in existing[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def latest_checkpoint(path: Path) -> Path:
    """``path`` itself when it is a checkpoint, else the newest complete one under ``path/checkpoints``."""
    if (path / "trainer_state.pth").is_file():
        return path
    found = sorted(p for p in (path / CHECKPOINT_DIR).glob("step-*") if (p / "trainer_state.pth").is_file())
    if not found:
        raise InputError(f"no checkpoint to resume from in {path}; pass a run directory with {CHECKPOINT_DIR}/step-*")
    return found[-1]


TRAINER_STATE_KEYS = ("optimizer", "scheduler", "step", "rng")  # what save_checkpoint writes and resume reads


@dataclass
class Checkpoint:
    """A checkpoint to resume from, opened and checked: its directory and its trainer state."""

    path: Path
    state: dict


def open_checkpoint(path: Path) -> Checkpoint:
    """The newest complete checkpoint of a run directory (or ``path`` itself), read and checked,
    so a corrupt one fails before any model is loaded."""
    checkpoint = latest_checkpoint(path)
    return Checkpoint(checkpoint, load_trainer_state(checkpoint))


def load_trainer_state(checkpoint: Path) -> dict:
    try:
        state = torch.load(checkpoint / "trainer_state.pth", map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"checkpoint {checkpoint} is corrupt ({type(exc).__name__}: {exc}); resume from an earlier one") from None
    missing = [key for key in TRAINER_STATE_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise InputError(f"checkpoint {checkpoint} is corrupt (trainer_state.pth lacks {', '.join(missing)}); resume from an earlier one")
    return state


def restore_trainer_state(state: dict, optimizer, scheduler, metrics_path: Path) -> int:
    """Optimizer, scheduler and RNG as they were at the checkpoint; metrics cut back to its step."""
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    step = int(state["step"])
    _set_rng_state(state["rng"])
    kept = [m for m in read_jsonl(metrics_path) if m["step"] <= step] if metrics_path.exists() else []
    atomic_write_text(metrics_path, "".join(json.dumps(m) + "\n" for m in kept))
    return step


# ---------------------------------------------------------------------------------------
# Reading check


def character_error_rate(prediction: str, reference: str) -> float:
    """Character edits (insertions, deletions, substitutions) per reference character."""
    from rapidfuzz.distance import Levenshtein

    return Levenshtein.distance(prediction, reference) / max(1, len(reference))


def reading_check(reader: VisionLanguageReader, pages: PageSet, count: int, max_new_tokens: int) -> dict:
    """Greedy transcription of held-out pages from their optical tokens; CER and compression ratio."""
    records = []
    for i in range(min(count, len(pages))):
        layout = build_layout(reader.tokenizer, READ_INSTRUCTION, [int(pages.features.shape[1])])
        vision = reader.adapt(pages.features[i:i + 1], torch.tensor([pages.page_index[i]]))
        embeds = splice(reader.embed_tokens, layout.input_ids.to(reader.device), layout.vision_mask.to(reader.device), vision)
        reference = pages.texts[i]
        text_tokens = reader.count_tokens(reference)
        ids, _ = reader.generate_from_embeds(embeds[None], layout.position_ids, layout.rope_delta,
                                             min(max_new_tokens, text_tokens + 16))
        prediction = reader.tokenizer.decode(ids)
        records.append({"page": i, "text_tokens": text_tokens, "vision_tokens": int(pages.features.shape[1]),
                        "compression": text_tokens / pages.features.shape[1],
                        "cer": character_error_rate(prediction, reference),
                        "reference": reference, "prediction": prediction})
    if not records:
        return {"pages": 0, "records": []}
    return {
        "pages": len(records),
        "cer": sum(r["cer"] for r in records) / len(records),
        "char_accuracy": max(0.0, 1 - sum(r["cer"] for r in records) / len(records)),
        "compression": sum(r["compression"] for r in records) / len(records),
        "records": records,
    }


# ---------------------------------------------------------------------------------------
# Training


@dataclass
class TrainResult:
    steps: int
    train_pages: int
    eval_pages: int
    vision_tokens: int
    final_loss: float | None
    final_eval_loss: float | None
    first_loss: float | None
    pages_per_s: float
    step_s: float | None            # mean wall time of one optimizer step in this run (eval not counted)
    cache_hit: bool
    encode_s: float
    parameters: dict = field(default_factory=dict)       # deepencoder, adapter, language_model
    peak_memory_gib: dict = field(default_factory=dict)  # cpu_rss_gib (+ cuda_max_allocated_gib on a GPU)
    training_pages: dict = field(default_factory=dict)   # page_statistics of the training pages
    reading: dict = field(default_factory=dict)


def resolve_runtime(cfg: TrainAdapterConfig):
    """(accelerator, device, dtype) of a run: the configured device, or each process's own under
    ``accelerate launch``."""
    from accelerate import Accelerator

    device = loading.resolve_device(cfg.runtime.device)
    accelerator = Accelerator(cpu=device.type == "cpu")
    if accelerator.num_processes > 1 and accelerator.device.type == "cuda":
        device = accelerator.device  # this process's own GPU (on CPUs accelerate says cpu:0, which is the CPU)
    return accelerator, device, loading.resolve_dtype(cfg.runtime.dtype, device)


def load_reader(cfg: TrainAdapterConfig) -> VisionLanguageReader:
    """The frozen language model and tokenizer of ``cfg.vlm`` on the run's device (the slow part of start-up)."""
    _, device, dtype = resolve_runtime(cfg)
    return VisionLanguageReader.from_config(cfg.vlm, device, dtype, seed=cfg.runtime.seed)


def page_render_section(cfg: TrainAdapterConfig):
    """The render settings with the page size the encoder's mode reads."""
    return cfg.render.model_copy(update={"mode": cfg.deepencoder.mode})


def make_adapter(cfg: TrainAdapterConfig, vision_dim: int, reader: VisionLanguageReader) -> OpticalAdapter:
    if cfg.adapter.init:
        return loading.load_adapter(cfg.adapter.init, llm_dim=reader.hidden_size, vision_dim=vision_dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.runtime.seed)
        adapter = OpticalAdapter(AdapterConfig(vision_dim, cfg.adapter.hidden_dim, reader.hidden_size, cfg.adapter.max_pages))
    rms = reader.embed_tokens.weight.detach().float().pow(2).mean().sqrt().item()
    adapter.set_output_scale(rms)  # start at the scale of the LLM's own token embeddings
    return adapter


def _batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def _loss(objective: str, model, adapter, pages: PageSet, examples: list[Example], index: list[int],
          pad_id: int, device: torch.device, autocast: bool) -> torch.Tensor:
    features = pages.features[index].to(device)
    page_index = torch.tensor([pages.page_index[i] for i in index], device=device)
    chosen = [examples[i] for i in index]
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        adapted = adapter(features, page_index)
        if objective == "mse":
            return mse_loss(model, adapted, chosen)
        batch = {k: v.to(device) for k, v in collate(chosen, pad_id).items()}
        return reconstruction_loss(model, adapted, batch)


def enable_gradient_checkpointing(model) -> None:
    """Recompute the frozen LLM's layer activations in backward instead of keeping them (non-reentrant:
    the adapted embeddings are the only input that needs a gradient)."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers 5 (the older name warns there)
        model.activation_checkpointing_enable()
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def training_mode(adapter, model, on: bool, gradient_checkpointing: bool) -> None:
    """The adapter trains; the frozen LLM is put in train mode only for gradient checkpointing,
    which transformers applies to layers in train mode (Qwen3-VL has no dropout: same numbers)."""
    adapter.train(on)
    model.train(on and gradient_checkpointing)


@torch.no_grad()
def evaluate(objective: str, model, adapter, pages: PageSet, examples: list[Example], batch_size: int,
             pad_id: int, device: torch.device, autocast: bool) -> float | None:
    """Mean held-out loss, computed in eval mode (the caller's mode is restored)."""
    if not len(pages):
        return None
    modes = adapter.training, model.training
    adapter.eval()
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(pages), batch_size):
        index = list(range(start, min(len(pages), start + batch_size)))
        total += float(_loss(objective, model, adapter, pages, examples, index, pad_id, device, autocast)) * len(index)
        count += len(index)
    adapter.train(modes[0])
    model.train(modes[1])
    return total / count


def plot_losses(metrics: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    train = [(m["step"], m["loss"]) for m in metrics if m.get("loss") is not None]
    evals = [(m["step"], m["eval_loss"]) for m in metrics if m.get("eval_loss") is not None]
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def read_documents(cfg: TrainAdapterConfig) -> list[str]:
    """The training corpus per ``cfg.data`` (an unusable one raises InputError)."""
    return read_corpus(cfg.data.source, cfg.data.text_field, cfg.data.split, cfg.data.max_documents, cfg.data.min_chars)


def train_adapter(cfg: TrainAdapterConfig, run_path: Path, resume: Checkpoint | None = None, progress: Progress | None = None,
                  encoder: PageEncoder | None = None, reader: VisionLanguageReader | None = None,
                  documents: list[str] | None = None) -> TrainResult:
    """Train the adapter per ``cfg``; artifacts go to ``run_path`` (adapter.pth, metrics.jsonl, loss.png, ...).

    ``documents`` (``read_documents(cfg)``), ``resume`` (``open_checkpoint``) and ``reader``
    (``load_reader(cfg)``) let a caller check the corpus and the checkpoint and load the model
    before creating ``run_path``.
    """
    accelerator, device, dtype = resolve_runtime(cfg)
    memory = PeakMemory(device)
    autocast = device.type == "cuda" and dtype == torch.bfloat16
    emit = progress if (progress and accelerator.is_main_process) else (lambda event: None)
    opt = cfg.train

    documents = documents if documents is not None else read_documents(cfg)
    reader = reader or load_reader(cfg)
    encoder = encoder or DeepEncoderPages(cfg.deepencoder, cfg.runtime, device, cfg.data.encode_batch_size)
    started = time.perf_counter()
    train_documents, eval_documents = split_documents(documents, cfg.data.eval_fraction, cfg.runtime.seed)
    with accelerator.main_process_first():
        train_pages, cache_hit = build_page_set(train_documents, cfg, encoder, Path(cfg.data.cache_dir), emit)
        eval_pages = (build_page_set(eval_documents, cfg, encoder, Path(cfg.data.cache_dir), emit)[0]
                      if eval_documents else PageSet.empty())
    encode_s = time.perf_counter() - started
    if not len(train_pages):
        raise InputError("no training pages after holding out eval documents; lower data.eval_fraction or add documents")
    train_examples = make_examples(reader, train_pages, cfg.data.max_text_tokens)
    eval_examples = make_examples(reader, eval_pages, cfg.data.max_text_tokens)
    pad_id = reader.tokenizer.token_id("<|endoftext|>")

    adapter = make_adapter(cfg, encoder.out_dim, reader).to(device)
    reader.adapter = adapter
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
    world = accelerator.num_processes
    batches_per_epoch = math.ceil(len(train_pages) / opt.batch_size)
    steps_per_epoch = max(1, batches_per_epoch // (opt.grad_accum * world))
    total_steps = opt.max_steps or opt.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(opt.warmup_steps, total_steps, opt.min_lr_ratio))
    step = 0
    metrics_path = run_path / "metrics.jsonl"
    if resume is not None:
        adapter.load_state_dict(loading.load_adapter(resume.path / "adapter.pth", reader.hidden_size, encoder.out_dim).state_dict())
        step = restore_trainer_state(resume.state, optimizer, scheduler, metrics_path)
    elif metrics_path.exists() and accelerator.is_main_process:
        metrics_path.unlink()
    adapter, optimizer = accelerator.prepare(adapter, optimizer)
    model = reader.model
    if opt.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    training_info = {"objective": opt.objective, "config": cfg.model_dump(mode="json")}
    emit({"event": "start", "total": total_steps, "step": step, "train_pages": len(train_pages),
          "eval_pages": len(eval_pages), "cache_hit": cache_hit})

    micro_per_step = opt.grad_accum * world
    first_loss = last_loss = last_eval = None
    if step == 0:  # the starting point of the eval curve
        last_eval = evaluate(opt.objective, model, adapter, eval_pages, eval_examples, opt.batch_size, pad_id, device, autocast)
        if accelerator.is_main_process:
            append_jsonl(metrics_path, {"step": 0, "epoch": 0, "loss": None, "eval_loss": last_eval, "lr": 0.0, "pages_per_s": None})
    window_pages, window_start = 0, time.perf_counter()
    train_s, pages_seen, first_step = 0.0, 0, step
    training_mode(adapter, model, True, opt.gradient_checkpointing)
    while step < total_steps:
        epoch, offset = divmod(step, steps_per_epoch)
        batches = _batches(len(train_pages), opt.batch_size, cfg.runtime.seed, epoch)
        group = batches[offset * micro_per_step:(offset + 1) * micro_per_step]
        mine = group[accelerator.process_index::world]
        step_loss = torch.zeros((), device=device)
        for index in mine:
            loss = _loss(opt.objective, model, adapter, train_pages, train_examples, index, pad_id, device, autocast)
            accelerator.backward(loss / len(mine))
            step_loss += loss.detach() / len(mine)
            window_pages += len(index) * world
        if opt.grad_clip > 0:
            accelerator.clip_grad_norm_(adapter.parameters(), opt.grad_clip)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        last_loss = float(accelerator.reduce(step_loss, reduction="mean"))
        first_loss = last_loss if first_loss is None else first_loss
        elapsed = time.perf_counter() - window_start  # training only: eval below is not counted
        record = {"step": step, "epoch": epoch, "loss": last_loss, "eval_loss": None, "lr": lr,
                  "pages_per_s": window_pages / elapsed if elapsed > 0 else None}
        pages_seen += window_pages
        train_s += elapsed
        if step % opt.eval_every == 0 or step == total_steps:
            last_eval = evaluate(opt.objective, model, adapter, eval_pages, eval_examples, opt.batch_size, pad_id, device, autocast)
            record["eval_loss"] = last_eval
        if accelerator.is_main_process:
            append_jsonl(metrics_path, record)
            if step % opt.checkpoint_every == 0 or step == total_steps:
                position = dict(zip(("epoch", "batch_group"), divmod(step, steps_per_epoch)))
                save_checkpoint(run_path, accelerator.unwrap_model(adapter), optimizer, scheduler, step,
                                opt.keep_checkpoints, training_info, position)
        emit({"event": "step", **record, "total": total_steps})
        window_pages, window_start = 0, time.perf_counter()
    accelerator.wait_for_everyone()
    final = accelerator.unwrap_model(adapter)
    training_mode(final, model, False, opt.gradient_checkpointing)
    reading: dict = {}
    if accelerator.is_main_process:
        save_adapter(final, run_path / "adapter.pth", {**training_info, "steps": step})
        plot_losses(read_jsonl(metrics_path), run_path / "loss.png")
        if opt.read_pages:
            emit({"event": "reading", "pages": min(opt.read_pages, len(eval_pages))})
            reader.adapter = final
            reading = reading_check(reader, eval_pages if len(eval_pages) else train_pages, opt.read_pages,
                                    opt.read_max_new_tokens)
            atomic_write_text(run_path / "reading.jsonl", "".join(json.dumps(r) + "\n" for r in reading["records"]))
    return TrainResult(
        steps=step, train_pages=len(train_pages), eval_pages=len(eval_pages), vision_tokens=int(train_pages.features.shape[1]),
        final_loss=last_loss, final_eval_loss=last_eval, first_loss=first_loss,
        pages_per_s=pages_seen / train_s if train_s > 0 else 0.0,
        step_s=train_s / (step - first_step) if step > first_step else None, cache_hit=cache_hit, encode_s=encode_s,
        parameters={"deepencoder": encoder.parameter_count(), "adapter": parameter_count(final),
                    "language_model": parameter_count(reader.model)},
        peak_memory_gib=memory.run_peak(),
        training_pages=page_statistics(train_pages, train_examples, cfg.data.max_text_tokens),
        reading={k: v for k, v in reading.items() if k != "records"},
    )
