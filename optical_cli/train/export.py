"""export-adapter: a finished train-adapter run as a folder to share, the way adapters are shared on the hub.

The folder holds the adapter (``adapter.safetensors``, its dims in the file's metadata, and
``adapter.json`` with the dims and the training config), ``lora/`` when a LoRA was trained (a PEFT
adapter directory), the loss curve (``loss.png``) and a ``README.md`` model card: the base models
and their revisions, the rendering and DeepEncoder mode, the training data, steps and final losses,
the reading check and, when a bench run is named, its LongBench v2 results. It is written whole
or not at all (built beside OUT, then renamed into place). ``bench.adapter`` takes the folder, or
the hub repository it is uploaded to, back; ``--push-to-hub`` uploads it with huggingface_hub.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import HfApi, get_token

from ..artifacts import read_run_manifest
from ..config.registry import load_config
from ..errors import InputError, RunFailed
from ..models import loading
from ..models.adapter import (
    ADAPTER_FILE,
    PUBLISHED_FILE,
    adapter_location,
    load_adapter,
    read_sidecar,
    save_adapter,
    save_published,
    sidecar_path,
)
from ..models.lora import LORA_DIR, lora_beside
from ..models.provenance import training_models
from ..modes import MODES
from ..records import read_records
from .config import TrainAdapterConfig
from .outputs import LOSS_PLOT, METRICS_FILE, plot_losses

CARD = "README.md"
EXPORT_MARK = "<!-- written by optical export-adapter -->"  # an earlier export, which --overwrite may replace
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class TrainedRun:
    """What the card needs of a finished train-adapter run."""

    path: Path
    manifest: dict
    cfg: TrainAdapterConfig
    metrics: list[dict]

    @property
    def result(self) -> dict:
        return self.manifest.get("result") or {}


def read_trained_run(path: Path) -> TrainedRun:
    manifest = read_run_manifest(path) if path.is_dir() else None
    if manifest is None or manifest["command"] != "train-adapter":
        raise InputError(f"{path} is not a train-adapter run directory (no manifest.json of one); pass the run's -o")
    if manifest.get("status") != "ok":
        raise InputError(
            f"{path}: the run's status is {manifest.get('status')}, not ok; finish it (train-adapter --resume) first"
        )
    # the trackers it logged to are not needed here, nor installed everywhere
    cfg = load_config("train-adapter", path / "config.yaml", ["train.log_with=[]"])
    return TrainedRun(path, manifest, cfg, read_records(path / METRICS_FILE))


def read_bench_run(path: Path, adapter_file: Path) -> dict:
    """A bench longbench run's summary, checked to have read this adapter when it names a local one."""
    manifest = read_run_manifest(path) if path.is_dir() else None
    if manifest is None or manifest["command"] != "bench longbench" or not (path / "summary.json").is_file():
        raise InputError(f"--bench {path}: not a finished bench longbench run (no summary.json); pass its -o")
    cfg = load_config("longbench", path / "config.yaml", ["bench.log_with=[]"])
    named = cfg.bench.adapter
    if named and named != "random" and Path(named).exists():
        theirs, ours = load_adapter(named).state_dict(), load_adapter(adapter_file).state_dict()
        if theirs.keys() != ours.keys() or any(not torch.equal(theirs[k], ours[k]) for k in ours):
            raise InputError(f"--bench {path} read the adapter {named}, not this run's; bench this run's adapter")
    return {**json.loads((path / "summary.json").read_text(encoding="utf-8")), "adapter": named, "run": str(path)}


def _is_export(folder: Path) -> bool:
    card = folder / CARD
    return card.is_file() and EXPORT_MARK in card.read_text(encoding="utf-8", errors="replace")


def check_target(out: Path, overwrite: bool) -> None:
    """OUT is new or empty, or (with ``overwrite``) an earlier export; optical never deletes other files."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file; choose a folder for the export")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not _is_export(out):
        raise InputError(f"{out} is not empty and holds no export; choose a new or empty folder")
    if not overwrite:
        raise InputError(f"{out} holds an earlier export; pass --overwrite to replace it, or choose another folder")


def check_push(repo: str, out: Path) -> None:
    """Before anything is written: a repository id, a hub that answers (one probe, seconds), a token."""
    if not REPO_ID.match(repo):
        raise InputError(f"--push-to-hub {repo}: not a repository id; write owner/name")
    later = f"export without --push-to-hub and upload the folder later: hf upload {repo} {out}"
    if loading.go_offline_if_unreachable():
        raise InputError(f"--push-to-hub {repo}: {loading.offline_reason()}; {later}")
    if get_token() is None:
        raise InputError(f"--push-to-hub {repo}: no Hugging Face token (hf auth login, or HF_TOKEN); {later}")


def export_adapter(
    run: Path,
    out: Path,
    bench: Path | None = None,
    push_to: str | None = None,
    private: bool = False,
    overwrite: bool = False,
) -> dict:
    """Write the export folder of ``run`` at ``out`` (and upload it to ``push_to``); every check runs first."""
    trained = read_trained_run(run)
    adapter_file = adapter_location(run)
    summary = read_bench_run(bench, adapter_file) if bench is not None else None
    check_target(out, overwrite)
    if push_to is not None:
        check_push(push_to, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        _write_folder(staging, trained, adapter_file, summary, push_to)
        _put_in_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    url = push_folder(out, push_to, private, run.name) if push_to is not None else None
    return {"folder": str(out), "files": files, "pushed_to": url}


def _write_folder(folder: Path, trained: TrainedRun, adapter_file: Path, summary: dict | None, repo: str | None):
    adapter = load_adapter(adapter_file)  # checked; an older run's adapter.pth is written as safetensors
    side = read_sidecar(adapter_file) if sidecar_path(adapter_file).is_file() else {}
    save_adapter(adapter, folder / ADAPTER_FILE, side.get("training"))
    published = save_published(adapter, folder / PUBLISHED_FILE) is not None  # for the published scripts
    lora = lora_beside(adapter_file)
    if lora is not None:
        shutil.copytree(lora, folder / LORA_DIR)
    if (trained.path / LOSS_PLOT).is_file():
        shutil.copyfile(trained.path / LOSS_PLOT, folder / LOSS_PLOT)
    else:
        plot_losses(trained.metrics, folder / LOSS_PLOT)
    card = model_card(trained, adapter, lora is not None, summary, repo, published)
    (folder / CARD).write_text(card, encoding="utf-8")


def _put_in_place(staging: Path, out: Path) -> None:
    """``staging`` becomes ``out``; an earlier export there is replaced only once the new one is whole."""
    old = None
    if out.is_dir() and any(out.iterdir()):
        old = out.with_name(f".{out.name}-replaced")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    elif out.is_dir():
        out.rmdir()
    staging.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def push_folder(out: Path, repo: str, private: bool, run_name: str) -> str:
    """Upload the folder as the repository's content (created when missing); its URL."""
    api = HfApi()
    try:
        api.create_repo(repo, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo, folder_path=out, commit_message=f"optical export-adapter of {run_name}")
    except Exception as exc:  # noqa: BLE001 - HTTP, auth and network errors come in many types
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise RunFailed(
            f"upload to {repo} failed ({type(exc).__name__}: {first}); the export is whole in {out}: "
            f"hf upload {repo} {out}"
        ) from None
    return f"https://huggingface.co/{repo}"


# ---------------------------------------------------------------------------------------
# The model card


def _revision(model: dict) -> str:
    if model["kind"] == "random":
        return "random weights (seeded)"
    return model["revision"] or ("local files" if model["kind"] == "local" else "not in this machine's hub cache")


def _num(value, digits: int = 4) -> str:
    return "n/a" if value is None else (f"{value:,}" if isinstance(value, int) else f"{value:.{digits}g}")


def _front_matter(models: dict, cfg: TrainAdapterConfig) -> str:
    bases = [m["source"] for m in (models["language_model"], models["deepencoder"]) if m["kind"] == "hub"]
    lines = ["---", "tags:", "- optical", "- optical-context-compression", "- deepencoder", "- qwen3-vl"]
    if bases:
        lines += ["base_model:", *(f"- {source}" for source in bases)]
    if cfg.data.source.startswith("hf:"):
        lines += ["datasets:", f"- {cfg.data.source[3:]}"]
    return "\n".join([*lines, "---", EXPORT_MARK, ""])


def model_card(
    trained: TrainedRun, adapter, has_lora: bool, summary: dict | None, repo: str | None, published: bool = False
) -> str:
    cfg, result, dims = trained.cfg, trained.result, adapter.config
    models = result.get("models") or training_models(cfg.vlm.source, cfg.vlm.tokenizer, cfg.deepencoder.weights)
    mode = MODES[cfg.deepencoder.mode]
    title = f"# Optical adapter: DeepEncoder ({mode.name}) -> {models['language_model']['source']}"
    parts = [_front_matter(models, cfg), title, ""]
    if trained.manifest.get("random_weights"):
        parts += [
            "> **Random weights.** A model this adapter was trained with had random weights: its losses and"
            " scores test the pipeline and say nothing about reading.",
            "",
        ]
    parts += [
        f"A vision-token adapter trained with `optical train-adapter`: it maps DeepSeek-OCR's DeepEncoder tokens "
        f"({dims.vision_dim}-d) of a rendered page into the language model's embedding space ({dims.llm_dim}-d), so "
        f"the frozen model reads a {mode.size}x{mode.size} px page from {mode.tokens} tokens.",
        "",
        *_models_section(models, cfg),
        *_rendering_section(cfg),
        *_adapter_section(cfg, adapter, has_lora, result, published),
        *_training_section(trained),
        *(_bench_section(summary) if summary else []),
        *_use_section(repo),
    ]
    return "\n".join(parts) + "\n"


def _models_section(models: dict, cfg: TrainAdapterConfig) -> list[str]:
    rows = [
        ("language model (frozen)", models["language_model"]),
        ("tokenizer", models["tokenizer"]),
        (f"DeepEncoder (frozen, {cfg.deepencoder.architecture} architecture)", models["deepencoder"]),
    ]
    return [
        "## Base models",
        "",
        "| role | source | revision |",
        "| --- | --- | --- |",
        *(f"| {role} | `{model['source']}` | {_revision(model)} |" for role, model in rows),
        "",
    ]


def _rendering_section(cfg: TrainAdapterConfig) -> list[str]:
    render, encoder, mode = cfg.render, cfg.deepencoder, MODES[cfg.deepencoder.mode]
    return [
        "## Rendering and DeepEncoder",
        "",
        f"- DeepEncoder mode `{encoder.mode}`: {mode.size}x{mode.size} px pages, {mode.tokens} vision tokens per page; "
        f"pixels `{encoder.pixels}`, layout tokens {'on' if encoder.layout_tokens else 'off'}.",
        f"- Pages drawn by `optical render` in {render.font} at {render.font_size} px, margin {render.margin} px, line "
        f"spacing {render.line_spacing}, reflow {'on' if render.reflow else 'off'}: read pages laid out the same way.",
        "",
    ]


def _adapter_section(cfg: TrainAdapterConfig, adapter, has_lora: bool, result: dict, published: bool) -> list[str]:
    parameters, dims = result.get("parameters") or {}, adapter.config
    lines = [
        "## Adapter",
        "",
        f"MLP {dims.vision_dim} -> {dims.hidden_dim} -> {dims.llm_dim} (GELU), LayerNorm, {dims.max_pages} page "
        f"embeddings, in the {adapter.layout} layout: {_num(parameters.get('adapter'))} parameters "
        f"(`{ADAPTER_FILE}`, config in its metadata and in `adapter.json`).",
        f"`{PUBLISHED_FILE}` holds the same weights in the published layout, a plain state dict that the published "
        "project's `OpticalEncoder.load_adapter` reads."
        if published
        else f"No `{PUBLISHED_FILE}`: this adapter adds its page embeddings after the LayerNorm, which the published "
        "layout cannot express (train with `adapter.layout: published` for one).",
    ]
    if has_lora:
        lora = cfg.train.lora
        lines.append(
            f"LoRA on the language model (`{LORA_DIR}/`, a PEFT adapter directory): rank {lora.rank}, alpha "
            f"{lora.alpha}, dropout {lora.dropout}, on {', '.join(lora.target_modules)}: "
            f"{_num(parameters.get('lora'))} parameters; the optical reader reads with it."
        )
    return [*lines, ""]


def _training_section(trained: TrainedRun) -> list[str]:
    cfg, result, opt, data = trained.cfg, trained.result, trained.cfg.train, trained.cfg.data
    reading = result.get("reading") or {}
    return [
        "## Training",
        "",
        f"- Data: `{data.source}` (field `{data.text_field}`, at most {data.max_documents} documents, "
        f"{'packed into full pages' if data.pack else 'one document per page'}), {data.eval_fraction:.0%} of the "
        f"documents held out: {_num(result.get('train_pages'))} training and "
        f"{_num(result.get('eval_pages'))} held-out pages, reconstruction target up to {data.max_text_tokens} "
        "tokens per page.",
        f"- Objective `{opt.objective}`; {_num(result.get('steps'))} optimizer steps of {opt.batch_size} pages x "
        f"{opt.grad_accum} accumulation x {trained.manifest.get('processes', 1)} process(es); AdamW lr {opt.lr}, "
        f"weight decay {opt.weight_decay}, warmup {opt.warmup_steps} steps then cosine to {opt.min_lr_ratio} x lr, "
        f"gradient clip {opt.grad_clip}, seed {cfg.runtime.seed}.",
        f"- Loss: first {_num(result.get('first_loss'))}, final {_num(result.get('final_loss'))}; held-out "
        f"loss final {_num(result.get('final_eval_loss'))}.",
        f"- Reading check (greedy transcription of {_num(reading.get('pages'))} held-out pages): character error "
        f"rate {_num(reading.get('cer'))}, compression {_num(reading.get('compression'))} text tokens per "
        "vision token.",
        f"- Trained with optical (git `{trained.manifest.get('git_revision') or 'unknown'}`), "
        + ", ".join(f"{k} {v}" for k, v in (trained.manifest.get("versions") or {}).items())
        + ".",
        "",
        f"![loss curve]({LOSS_PLOT})",
        "",
    ]


def _bench_section(summary: dict) -> list[str]:
    lines = [
        "## LongBench v2",
        "",
        f"`optical bench longbench` on {summary.get('items')} items of `{summary.get('data')}` "
        f"(adapter `{summary.get('adapter')}`; {summary.get('models')}).",
    ]
    if summary.get("random_weights"):
        lines.append("Random weights: these accuracies test the pipeline and say nothing about reading.")
    lines += [
        "",
        "| condition | items | accuracy | 95% interval | mean input tokens | compression |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, block in (summary.get("conditions") or {}).items():
        low, high = block.get("ci95") or [None, None]
        lines.append(
            f"| {name} | {block.get('n')} | {_num(block.get('accuracy'), 3)} | {_num(low, 3)}-"
            f"{_num(high, 3)} | {_num(block.get('mean_input_tokens'), 5)} | "
            f"{_num(block.get('compression_ratio'), 3)} |"
        )
    return [*lines, f"\nChance: {summary.get('chance')}. Bench run: `{summary.get('run')}`.", ""]


def _use_section(repo: str | None) -> list[str]:
    name = repo or "OWNER/NAME"
    return [
        "## Use",
        "",
        "```",
        f"optical bench longbench --set bench.adapter={name}      # this folder's hub id, or its path",
        "```",
        "",
        "Upload this folder to the hub (or `optical export-adapter RUN OUT --push-to-hub OWNER/NAME`):",
        "",
        "```",
        f"hf upload {name} .",
        "```",
    ]
