"""The vLLM model directory of the optical reader: what `vllm serve DIR` loads with no code from the user.

Written from a :class:`~optical_cli.engines.chain.ChainSpec` (the same settings ``bench
longbench`` reads), it holds:

- ``config.json``: Qwen3-VL's config with the architecture ``OpticalQwen3VLForConditionalGeneration``
  (registered by this package's ``vllm.general_plugins`` entry point), the language model's
  ``text_config``, a vision config that declares no Qwen vision tower (depth 0, no deepstack
  levels: our chain has none) and the ``optical`` block (:class:`~optical_cli.engines.tower.PageSettings`:
  mode, pixels, layout tokens, the encoder's and the adapter's sizes, pages per request);
- the language model's weights: random ones written here (``language-model.safetensors``, built
  from the seed as the hf engine builds them), or a real Qwen3-VL's shards **linked**, not copied
  (symbolic links to the local or hub-cache directory: a 2B model is 4 GB, an 8B one 16 GB, and
  the links keep one copy on disk; ``optical export-model --copy-weights`` copies them for a
  directory that moves to another host). Qwen's own vision tower in those shards is skipped on load;
- ``optical.safetensors``: DeepEncoder (``optical.encoder.*``) and the adapter (``optical.adapter.*``),
  float32;
- ``model.safetensors.index.json`` naming the file of every tensor (vLLM loads exactly these);
- the tokenizer files, and OUR chat template (``chat_template.jinja``): a user turn holding page
  images reads as ``bench longbench``'s optical prompt (``bench/prompts.py``: the preamble, the
  pages between the document tags, then the turn's text as the question), token for token what
  ``models/vlm.build_layout`` gives; a turn without images is plain Qwen chat;
- ``generation_config.json``: the stop tokens (``<|im_end|>``, ``<|endoftext|>``, and the loop
  guard's ``<|vision_pad|>``, which Qwen3-VL never writes: ``models/loop_guard.py``), and for an
  exported directory the default sampling of requests that set none;
- ``lora/``: the LoRA trained beside the adapter (train-adapter's PEFT directory), when there is one.

Directories for ``bench longbench --engine vllm`` and ``optical serve`` are kept under
``$OPTICAL_CACHE/engine-models/optical-<key>``, keyed by everything that changes what is written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..artifacts import package_versions
from ..errors import ConfigError, InputError, ModelNotFoundError
from ..models import loading
from ..models.deepencoder.weights import load_deepencoder
from ..models.language_model import build_random_qwen3_vl, language_model_class, qwen3_vl_model_type
from ..models.loop_guard import LOOP_STOP_TOKEN
from ..models.lora import LORA_DIR
from ..models.qwen_bpe import QWEN_SPECIAL_START, QWEN_SPECIAL_TOKENS
from ..models.tokenizers import save_chat_tokenizer_files
from ..prompts import AFTER_DOCUMENT, PREAMBLE
from . import ARCHITECTURE
from .chain import ChainSpec, fit_adapter
from .tower import ADAPTER_PREFIX, ENCODER_PREFIX, PageSettings

SERVED_MODEL_TYPES = ("qwen3_vl",)  # dense Qwen3-VL: the plugin's architecture (ARCHITECTURE) subclasses vLLM's
MODEL_DIR_VERSION = 3  # bump when what is written changes: cached directories are then rebuilt
OPTICAL_WEIGHTS = "optical.safetensors"
LANGUAGE_MODEL_WEIGHTS = "language-model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
PROVENANCE_FILE = "optical-model.json"
WEIGHT_PREFIX = "optical."  # checkpoint names of the tower's tensors (the model's ``visual.``)
_LM_SOURCE_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.tiktoken", "*.model", "*.jinja"]


def _special_id(token: str) -> int:
    return QWEN_SPECIAL_START + QWEN_SPECIAL_TOKENS.index(token)


EMPTY_MESSAGE = (
    "the user message is empty: send the document's pages as image_url parts and the question as a text part"
)


def chat_template() -> str:
    """The model directory's chat template (Jinja), built from the benchmark's prompt parts.

    A message whose content has image parts and begins with them (``optical ask``'s, Glyph's clients'):
    ``preamble``, one ``<|vision_start|><|image_pad|><|vision_end|>`` per image in order (the processor
    expands each pad to the page's vision tokens), a newline, ``AFTER_DOCUMENT`` and the message's text
    parts joined: ``bench longbench``'s optical layout, ``models.vlm.build_layout(question=AFTER_DOCUMENT +
    text, pages, preamble=PREAMBLE)``. A message whose text comes first (``bench ruler``'s and the other
    benchmarks' instruction, then the pages, then the question): that text as the preamble, the pages, a
    newline and the text after them, ``build_layout(question=after, pages, preamble=before)``. Any other
    message: Qwen's plain ``<|im_start|>role\\n...<|im_end|>\\n``. A user message with neither pages nor
    text is refused (the server answers 400 with ``EMPTY_MESSAGE``).
    vLLM sees the loop over ``message['content']`` and passes parts as dicts (its "openai" format).
    """
    page = "<|vision_start|><|image_pad|><|vision_end|>"
    return (
        "{#- optical: a user turn with page images reads as the benchmarks' optical prompt -#}\n"
        "{%- for message in messages -%}\n"
        "{{- '<|im_start|>' + message['role'] + '\\n' -}}\n"
        "{%- set ns = namespace(pages=0, before='', text='', lead=false) -%}\n"
        "{%- if message['content'] is string -%}{%- set ns.text = message['content'] -%}\n"
        "{%- else -%}\n"
        "{%- for part in message['content'] -%}\n"
        "{%- if part['type'] in ('image', 'image_url') -%}{%- set ns.pages = ns.pages + 1 -%}\n"
        "{%- elif part['type'] == 'text' and ns.pages == 0 -%}"
        "{%- set ns.before = ns.before + part['text'] -%}{%- set ns.lead = true -%}\n"
        "{%- elif part['type'] == 'text' -%}{%- set ns.text = ns.text + part['text'] -%}\n"
        "{%- endif -%}\n"
        "{%- endfor -%}\n"
        "{%- endif -%}\n"
        "{%- if message['role'] == 'user' and ns.pages == 0 and (ns.before + ns.text) | trim == '' -%}\n"
        f"{{{{- raise_exception({json.dumps(EMPTY_MESSAGE)}) -}}}}\n"
        "{%- endif -%}\n"
        "{%- if ns.pages > 0 and ns.lead -%}\n"
        "{{- ns.before -}}\n"
        f"{{%- for _ in range(ns.pages) -%}}{page}{{%- endfor -%}}\n"
        "{{- '\\n' + ns.text -}}\n"
        "{%- elif ns.pages > 0 -%}\n"
        f"{{{{- {json.dumps(PREAMBLE)} -}}}}\n"
        f"{{%- for _ in range(ns.pages) -%}}{page}{{%- endfor -%}}\n"
        f"{{{{- {json.dumps(chr(10) + AFTER_DOCUMENT)} + ns.text -}}}}\n"
        "{%- else -%}\n"
        "{{- ns.before + ns.text -}}\n"
        "{%- endif -%}\n"
        "{{- '<|im_end|>\\n' -}}\n"
        "{%- endfor -%}\n"
        "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}\n"
    )


# ---------------------------------------------------------------------------------------
# Keys and the cache


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _adapter_identity(spec: ChainSpec) -> dict:
    """The adapter as the key sees it: its files' contents for a local one (retraining in place
    changes the key), the address for a hub file, or random."""
    if not spec.trained_adapter or str(spec.adapter).startswith(loading.HUB_FILE_SCHEME):
        return {"adapter": spec.adapter}
    path = Path(spec.adapter)
    if not path.is_file():
        raise ModelNotFoundError(f"adapter checkpoint not found: {path}; train one with `optical train-adapter`")
    files = [path, path.with_suffix(".json")]
    lora = spec.lora_dir()
    if lora is not None:
        files += sorted(p for p in lora.iterdir() if p.is_file())
    return {"adapter": str(path.resolve()), "files": {p.name: _file_digest(p) for p in files if p.is_file()}}


def model_dir_key(spec: ChainSpec) -> str:
    """A short hash of everything that changes what :func:`write_model_dir` writes."""
    data = {
        "version": MODEL_DIR_VERSION,
        "vlm": spec.vlm.model_dump(mode="json"),
        "deepencoder": spec.deepencoder.model_dump(mode="json"),
        "seed": spec.runtime.seed,
        "max_pages": spec.max_pages,
        "encode_batch_size": spec.encode_batch_size,
        **_adapter_identity(spec),
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def cached_model_dir(spec: ChainSpec) -> Path:
    """The model directory for ``spec`` under the cache, written on first use (atomically)."""
    target = loading.cache_dir() / "engine-models" / f"optical-{model_dir_key(spec)}"
    if not (target / PROVENANCE_FILE).is_file():
        write_model_dir(spec, target, replace=False)
    return target


# ---------------------------------------------------------------------------------------
# Writing


def write_model_dir(
    spec: ChainSpec,
    target: Path,
    *,
    sampling: dict | None = None,
    copy_weights: bool = False,
    replace: bool = True,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write the model directory for ``spec`` at ``target`` (built in a temporary sibling and
    renamed into place: never half a directory). ``sampling``: default ``temperature`` /
    ``max_new_tokens`` for requests that set none (into generation_config.json). ``replace``:
    swap out an existing ``target``; otherwise one already there (another process wrote it) is kept.
    ``extra_files``: more text files to write into it (name: content)."""
    spec.require_adapter()
    trained = spec.load_trained_adapter()  # a bad adapter fails before gigabytes of models load
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        config, lm_names = _write_language_model(spec, staging, copy_weights)
        settings, tower_names = _write_tower(spec, trained, staging, config.text_config.hidden_size)
        config.optical = settings.as_dict()
        config.save_pretrained(staging)
        _write_index(staging, {**lm_names, **tower_names})
        _write_tokenizer(spec, staging)
        _write_generation_config(staging, sampling)
        provenance = {
            "format": settings.format,
            "key": model_dir_key(spec),
            "vlm": spec.vlm.source,
            "deepencoder": spec.deepencoder.weights,
            "adapter": spec.adapter,
            "lora": settings.lora,
            "language_model_weights": "linked"
            if lm_names and not copy_weights and not spec.random_language_model
            else "written",
            "versions": package_versions(),
        }
        for name, content in (extra_files or {}).items():
            (staging / name).write_text(content, encoding="utf-8")
        (staging / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
        _move_into_place(staging, target, replace)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _move_into_place(staging: Path, target: Path, replace: bool) -> None:
    if target.exists():
        if not replace:
            return  # written meanwhile by another process, from the same settings
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        staging.rename(target)
    except OSError:
        if not (target / PROVENANCE_FILE).is_file():
            raise


def _write_language_model(spec: ChainSpec, staging: Path, copy_weights: bool):
    """(config with our architecture and no Qwen vision tower, {tensor name: file}) of the language model."""
    if spec.random_language_model:
        if spec.vlm.random.dims()["num_experts"] > 0:
            raise ConfigError("the vLLM model plugin serves dense Qwen3-VL; set vlm.random.num_experts=0")
        model = build_random_qwen3_vl(spec.vlm.random.dims(), spec.runtime.seed)
        config = model.config
        tensors = {name: value.detach().contiguous() for name, value in model.state_dict().items()}
        if config.tie_word_embeddings:
            tensors.pop("lm_head.weight", None)
        save_file(tensors, str(staging / LANGUAGE_MODEL_WEIGHTS), metadata={"format": "pt"})
        names = {name: LANGUAGE_MODEL_WEIGHTS for name in tensors}
    else:
        source = loading.resolve_local_or_hub(spec.vlm.source, _LM_SOURCE_PATTERNS)
        model_type = qwen3_vl_model_type(source)
        if model_type not in SERVED_MODEL_TYPES:
            raise ConfigError(
                f"{spec.vlm.source} is a {model_type} model; the vLLM model plugin serves dense Qwen3-VL "
                f"({', '.join(SERVED_MODEL_TYPES)}); read it with the hf engine"
            )
        config = language_model_class(model_type).config_class.from_pretrained(source)
        names = {}
        for shard in sorted(source.glob("*.safetensors")):
            link = staging / shard.name
            if copy_weights:
                shutil.copyfile(shard.resolve(), link)
            else:
                link.symlink_to(shard.resolve())
            with safe_open(str(shard), framework="pt") as handle:
                names.update({name: shard.name for name in handle.keys() if not name.startswith("model.visual.")})
        if not names:
            raise ModelNotFoundError(f"{source} holds no safetensors weights; vLLM needs them")
    vision = config.vision_config
    config.vision_config = type(vision)(
        depth=0,
        out_hidden_size=config.text_config.hidden_size,
        spatial_merge_size=vision.spatial_merge_size,
        deepstack_visual_indexes=[],
    )
    config.architectures = [ARCHITECTURE]
    return config, names


def _write_tower(spec: ChainSpec, trained, staging: Path, hidden_size: int) -> tuple[PageSettings, dict]:
    """DeepEncoder and the adapter (float32) into optical.safetensors; their settings."""
    weights = None if spec.deepencoder.weights == "random" else spec.deepencoder.weights
    encoder = load_deepencoder(
        weights, "cpu", torch.float32, config=spec.encoder_architecture(), seed=spec.runtime.seed
    )
    if spec.deepencoder.layout_tokens and not encoder.layout_vectors_loaded:
        raise ConfigError(
            f"deepencoder.layout_tokens=true but {spec.deepencoder.weights} carries no image_newline/view_seperator; "
            "set deepencoder.layout_tokens=false"
        )
    adapter = fit_adapter(spec, trained, encoder.cfg.out_dim, hidden_size)
    lora = spec.lora_dir()
    if lora is not None:
        shutil.copytree(lora, staging / LORA_DIR)
    settings = PageSettings(
        mode=spec.deepencoder.mode,
        pixels=spec.pixels(adapter.layout),
        layout_tokens=spec.deepencoder.layout_tokens,
        attention=spec.deepencoder.attention,
        encoder=json.loads(encoder.cfg.to_json()),
        adapter_layout=adapter.layout,
        adapter=dict(vars(adapter.config)),
        max_pages=spec.max_pages,
        encode_batch_size=spec.encode_batch_size,
        lora=LORA_DIR if lora is not None else None,
    )
    tensors = {
        WEIGHT_PREFIX + ENCODER_PREFIX + n: t.detach().float().contiguous() for n, t in encoder.state_dict().items()
    }
    tensors.update(
        {WEIGHT_PREFIX + ADAPTER_PREFIX + n: t.detach().float().contiguous() for n, t in adapter.state_dict().items()}
    )
    save_file(tensors, str(staging / OPTICAL_WEIGHTS), metadata={"format": "pt"})
    return settings, {name: OPTICAL_WEIGHTS for name in tensors}


def _write_index(staging: Path, names: dict[str, str]) -> None:
    index = {"metadata": {}, "weight_map": dict(sorted(names.items()))}
    (staging / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def _write_tokenizer(spec: ChainSpec, staging: Path) -> None:
    """The tokenizer's files with our chat template as the only one (a source's own template
    would otherwise win in tokenizer_config.json)."""
    save_chat_tokenizer_files(spec.tokenizer_source(), staging)
    config_path = staging / "tokenizer_config.json"
    if config_path.is_file():
        tokenizer_config = json.loads(config_path.read_text(encoding="utf-8"))
        if tokenizer_config.pop("chat_template", None) is not None:
            config_path.write_text(json.dumps(tokenizer_config, indent=2) + "\n", encoding="utf-8")
    (staging / CHAT_TEMPLATE_FILE).write_text(chat_template(), encoding="utf-8")


def _write_generation_config(staging: Path, sampling: dict | None) -> None:
    """Stop at ``<|im_end|>`` or ``<|endoftext|>`` (our generate loop stops at either) or the loop
    guard's stop token, plus the default sampling of an exported directory."""
    stops = [_special_id("<|im_end|>"), _special_id("<|endoftext|>"), _special_id(LOOP_STOP_TOKEN)]
    config = {"eos_token_id": stops, "pad_token_id": _special_id("<|endoftext|>")}
    if sampling:
        config.update({key: value for key, value in sampling.items() if value is not None})
    (staging / "generation_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def read_settings(model_dir: Path) -> PageSettings:
    """The ``optical`` block of a model directory's config.json."""
    path = Path(model_dir) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} cannot be read ({exc}); write the directory with `optical export-model`") from None
    if "optical" not in config:
        raise InputError(f"{path} has no optical settings; it is not a directory `optical export-model` wrote")
    return PageSettings.from_dict(config["optical"])
