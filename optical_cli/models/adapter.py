"""The optical adapter: DeepEncoder vision tokens (1280-d) -> a language model's embedding space.

Default shape is the published one: an MLP 1280 -> 3072 -> 2048 (GELU between), a LayerNorm
on the output and one learned embedding per page position (200 pages), 10,642,432
parameters. Every size is configurable so the same module serves any LLM hidden size.

Page embeddings start at zero so a fresh adapter treats every page alike until training
says otherwise (the published adapter left them random, which scrambled later pages).
Training starts the LayerNorm gain at the RMS of the LLM's token-embedding table
(:meth:`OpticalAdapter.set_output_scale`), so vision tokens enter at the scale of text tokens.

Saved as ``adapter.safetensors`` (tensors only, nothing to unpickle; the dims, the layout and the
format in the file's metadata under ``optical.adapter``, so the file describes itself) beside a JSON
sidecar ``adapter.json`` with the dims, the layout, the parameter count and the training config.
Beside it, :func:`save_published` writes ``adapter.pth`` in the published layout (below) whenever
that layout computes exactly what the adapter computes, for the published project's own scripts.
Earlier versions wrote ``adapter.pth`` as our own plain state dict + the same sidecar;
:func:`load_adapter` reads every layout back with strict checks, choosing by the tensors' names.

:class:`PublishedAdapter` reads the published adapter (Volkopat/Qwen-VLM-Optical-Encoder,
``qwen3_vl_2b.pth``): a plain state dict with no sidecar, ``projection.0``/``projection.3``
(Linear, GELU, Dropout, Linear), ``layer_norm`` and ``page_embeddings``, whose forward adds
the page embedding before the LayerNorm and only when a document has more than one page. Its loader
(``UniversalAdapter.load_state_dict(torch.load(path))`` in the published ``optical_encoder.py``)
is strict: exactly those seven tensors. ``train-adapter`` trains either layout (``adapter.layout``).
"""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..artifacts import atomic_path, atomic_write_json
from ..errors import InputError, ModelNotFoundError
from .loading import HUB_FILE_SCHEME, looks_like_hub_id, resolve_hub_file, resolve_local_or_hub

ADAPTER_FILE = "adapter.safetensors"  # what train-adapter writes into a run directory and each checkpoint
LEGACY_ADAPTER_FILE = "adapter.pth"  # what earlier versions wrote there (still read)
PUBLISHED_FILE = "adapter.pth"  # beside adapter.safetensors now: the published layout (save_published)
SIDECAR_SUFFIX = ".json"
ADAPTER_FORMAT = "optical-adapter/1"
METADATA_KEY = "optical.adapter"  # safetensors metadata: {"format": ADAPTER_FORMAT, "dims": {...}} as JSON
OPTICAL_LAYOUT, PUBLISHED_LAYOUT = "optical", "published"


@dataclass(frozen=True)
class AdapterConfig:
    vision_dim: int = 1280  # DeepEncoder projector output
    hidden_dim: int = 3072  # MLP width
    llm_dim: int = 2048  # the LLM's embedding size (Qwen3-VL-2B: 2048)
    max_pages: int = 200  # page-position embeddings

    def __post_init__(self) -> None:
        for name in ("vision_dim", "hidden_dim", "llm_dim", "max_pages"):
            if getattr(self, name) < 1:
                raise InputError(f"adapter {name} must be a positive integer, got {getattr(self, name)}")


def _check_features(features: torch.Tensor, page_index: torch.Tensor | None, config: AdapterConfig) -> torch.Tensor:
    """The page positions of ``features`` [P, T, vision_dim] (default 0..P-1), checked against ``config``."""
    if features.ndim != 3 or features.shape[-1] != config.vision_dim:
        raise InputError(
            f"adapter expects features of shape [pages, tokens, {config.vision_dim}], got {list(features.shape)}"
        )
    if page_index is None:
        page_index = torch.arange(features.shape[0], device=features.device)
    if int(page_index.max()) >= config.max_pages:
        raise InputError(
            f"page index {int(page_index.max())} is beyond the adapter's {config.max_pages} page "
            "embeddings; truncate the document or train an adapter with a larger max_pages"
        )
    return page_index


class OpticalAdapter(nn.Module):
    """Maps per-page vision tokens ``[pages, tokens, vision_dim]`` to ``[pages, tokens, llm_dim]``."""

    layout = OPTICAL_LAYOUT

    def __init__(self, config: AdapterConfig = AdapterConfig()):
        super().__init__()
        self.config = config
        self.mlp = nn.Sequential(
            nn.Linear(config.vision_dim, config.hidden_dim),
            nn.GELU(),
            nn.Linear(config.hidden_dim, config.llm_dim),
        )
        self.norm = nn.LayerNorm(config.llm_dim)
        self.page_embed = nn.Embedding(config.max_pages, config.llm_dim)
        nn.init.zeros_(self.page_embed.weight)

    def forward(
        self, features: torch.Tensor, page_index: torch.Tensor | None = None, multi_page: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``features`` [P, T, vision_dim]; ``page_index`` [P] (default 0..P-1) -> [P, T, llm_dim].
        ``multi_page`` is the published layout's and does not change this one (every page gets its embedding)."""
        page_index = _check_features(features, page_index, self.config)
        hidden = self.norm(self.mlp(features.to(self.mlp[0].weight.dtype)))
        return hidden + self.page_embed(page_index)[:, None, :]

    def set_output_scale(self, rms: float) -> None:
        """Start the output at the LLM's embedding scale (LayerNorm gain = RMS of its embedding table)."""
        with torch.no_grad():
            self.norm.weight.fill_(rms)


class PublishedAdapter(nn.Module):
    """The published adapter's module, under its own tensor names, reproducing its forward.

    Its page embedding is added before the LayerNorm, and only when the document has more
    than one page (a one-page document gets no page position at all). The published code
    runs it on one document at a time, so a call here is one document: ``features`` are its
    pages [P, T, vision_dim] in reading order.
    """

    layout = PUBLISHED_LAYOUT

    def __init__(self, config: AdapterConfig = AdapterConfig()):
        super().__init__()
        self.config = config
        self.projection = nn.Sequential(
            nn.Linear(config.vision_dim, config.hidden_dim),
            nn.GELU(),
            nn.Dropout(0.1),  # no weights; kept so the tensor names are the published ones
            nn.Linear(config.hidden_dim, config.llm_dim),
        )
        self.layer_norm = nn.LayerNorm(config.llm_dim)
        self.page_embeddings = nn.Embedding(config.max_pages, config.llm_dim)

    def forward(
        self, features: torch.Tensor, page_index: torch.Tensor | None = None, multi_page: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``multi_page`` [P] (bool): whether each page's document has more than one page, for pages
        of several documents in one call (an engine batching requests); default: one document, P > 1."""
        page_index = _check_features(features, page_index, self.config)
        hidden = self.projection(features.to(self.projection[0].weight.dtype))
        if multi_page is not None:
            hidden = hidden + self.page_embeddings(page_index)[:, None, :] * multi_page[:, None, None].to(hidden.dtype)
        elif features.shape[0] > 1:
            hidden = hidden + self.page_embeddings(page_index)[:, None, :]
        return self.layer_norm(hidden)

    def set_output_scale(self, rms: float) -> None:
        """Start the output at the LLM's embedding scale (LayerNorm gain = RMS of its embedding table)."""
        with torch.no_grad():
            self.layer_norm.weight.fill_(rms)

    @staticmethod
    def matches(state: dict) -> bool:
        """Whether a state dict has the published tensor names (and nothing of ours)."""
        return set(state) == PUBLISHED_KEYS

    @staticmethod
    def config_of(state: dict) -> AdapterConfig:
        """The dims a published-layout state dict was saved with (its shapes say them all)."""
        if any(state[name].ndim != 2 for name in ("projection.0.weight", "page_embeddings.weight")):
            raise InputError("a published-layout adapter needs 2-d projection.0.weight and page_embeddings.weight")
        hidden_dim, vision_dim = state["projection.0.weight"].shape
        max_pages, llm_dim = state["page_embeddings.weight"].shape
        return AdapterConfig(vision_dim=vision_dim, hidden_dim=hidden_dim, llm_dim=llm_dim, max_pages=max_pages)


PUBLISHED_KEYS = {
    "projection.0.weight",
    "projection.0.bias",
    "projection.3.weight",
    "projection.3.bias",
    "layer_norm.weight",
    "layer_norm.bias",
    "page_embeddings.weight",
}


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_suffix(SIDECAR_SUFFIX)


def save_adapter(adapter, path: str | Path, training: dict[str, Any] | None = None) -> Path:
    """Write ``path`` and its JSON sidecar, both atomically: safetensors with the dims and the layout in
    the file's metadata (``.safetensors``, the default), or a plain state dict (``.pth``, the older way)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in adapter.state_dict().items()}
    dims = asdict(adapter.config)
    described = {"format": ADAPTER_FORMAT, "dims": dims, "layout": adapter.layout}
    with atomic_path(path) as tmp:
        if path.suffix == ".pth":
            torch.save(state, tmp)
        else:
            save_file(state, str(tmp), metadata={"format": "pt", METADATA_KEY: json.dumps(described)})
    atomic_write_json(
        sidecar_path(path), {**described, "parameters": parameter_count(adapter), "training": training or {}}
    )
    return path


def published_state(adapter) -> dict[str, torch.Tensor] | None:
    """``adapter``'s weights under the published layout's names, when that layout computes exactly what
    ``adapter`` computes: a published-layout adapter always; ours only while its page embeddings are all
    zero (then both are LayerNorm(MLP(x))). None otherwise: ours adds its page embedding after the
    LayerNorm and on one-page documents too, which the published forward cannot express."""
    state = {name: tensor.detach().float().cpu().contiguous() for name, tensor in adapter.state_dict().items()}
    if isinstance(adapter, PublishedAdapter):
        return state
    if torch.count_nonzero(state["page_embed.weight"]):
        return None
    names = {"mlp.0": "projection.0", "mlp.2": "projection.3", "norm": "layer_norm", "page_embed": "page_embeddings"}
    return {names[name.rsplit(".", 1)[0]] + "." + name.rsplit(".", 1)[1]: tensor for name, tensor in state.items()}


def save_published(adapter, path: str | Path) -> Path | None:
    """Write ``adapter.pth`` in the published layout (a plain state dict of its seven tensors, float32,
    no sidecar needed: the published loader reads exactly this) when :func:`published_state` says the
    layout holds this adapter exactly; None (nothing written) when it does not."""
    state = published_state(adapter)
    if state is None:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def config_from_metadata(metadata: dict[str, str] | None) -> AdapterConfig | None:
    """The dims a safetensors adapter of ours carries in its metadata (None when it carries none)."""
    if not metadata or METADATA_KEY not in metadata:
        return None
    try:
        return AdapterConfig(**json.loads(metadata[METADATA_KEY])["dims"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"the adapter's {METADATA_KEY} metadata is unreadable ({exc}); re-save the adapter") from None


def layout_of(state: dict, dims: AdapterConfig | None):
    """The module a state dict loads into: the published layout by its tensor names (its dims from its
    shapes), else ours (its dims from the file or the sidecar)."""
    if PublishedAdapter.matches(state):
        return PublishedAdapter(PublishedAdapter.config_of(state))
    return OpticalAdapter(dims) if dims is not None else None


def read_sidecar(path: str | Path) -> dict[str, Any]:
    side = sidecar_path(path)
    if not side.is_file():
        raise InputError(
            f"adapter sidecar not found: {side}; `optical train-adapter` writes it next to the adapter "
            "(a file without one is read only in the published layout: projection.0/3, layer_norm, page_embeddings)"
        )
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
        dims = AdapterConfig(**meta["dims"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"adapter sidecar {side} is unreadable or incomplete ({exc}); re-save the adapter") from None
    meta["dims"] = dims
    return meta


def load_adapter(
    source: str | Path, llm_dim: int | None = None, vision_dim: int | None = None, device: torch.device | str = "cpu"
):
    """An adapter checked against the models it joins (``llm_dim``, ``vision_dim``), from ``source``:

    - ours: ``adapter.safetensors`` (dims in its metadata, sidecar ``adapter.json``) or the older
      ``adapter.pth`` + sidecar (:class:`OpticalAdapter`);
    - the published layout (:class:`PublishedAdapter`, known by its tensor names): a plain state dict
      (the published file, or the ``adapter.pth`` train-adapter and export-adapter write beside
      ``adapter.safetensors``), or the safetensors of a run trained in that layout;
    - a folder holding one of ours (a train-adapter run, one of its checkpoints, an export-adapter folder);
    - a hub file ``hf://owner/name/file``, or a hub repository ``owner/name`` (an uploaded export).

    Nothing is unpickled but a ``.pth``, and that only through ``torch.load(weights_only=True)``,
    which refuses every object that is not a tensor or a plain container (exit 2)."""
    path = adapter_location(source)
    state, dims = _read_adapter_file(path)
    if dims is None and not PublishedAdapter.matches(state):
        dims = read_sidecar(path)["dims"]  # ours without dims in the file: the sidecar says them (or fails clearly)
    adapter = layout_of(state, dims)
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
