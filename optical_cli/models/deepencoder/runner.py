"""Running DeepEncoder: the one place every user builds it and turns pages into features.

``optical encode`` (encode.py), the training feature cache and the hf engine (both through
``DeepEncoderPages``, below: built from config sections, loaded on first use), and the vLLM
model plugin's tower (``BatchRunner``) all go through here:

    runner = EncoderRunner.build(section, runtime, batch_size=8)     # config sections, not a whole config
    features = runner.encode(prepared_pages)                          # one [tokens, D] per page

``build_encoder`` is the weights-and-settings half alone (a model, its device and dtype).
Views of equal size share forward passes; a batch that runs out of accelerator memory is
retried at half the size (down to one view). Pixels travel to the device in float32 and
are cast there, so a GPU receives them once and converts them in place of the CPU.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch

from ...config.sections import DeepEncoderSection, RuntimeConfig
from ...devices import resolve_device, resolve_dtype
from ...errors import ConfigError, RunFailed
from ...memory import is_out_of_memory
from .config import DeepEncoderConfig
from .encoder import DeepEncoder, count_parameters
from .preprocess import PreparedPage, prepare, resolve_pixels
from .weights import load_deepencoder


def build_encoder(
    section: DeepEncoderSection, runtime: RuntimeConfig, device: torch.device | None = None
) -> tuple[DeepEncoder, torch.device, torch.dtype]:
    """The DeepEncoder that ``section`` names, on ``device`` (default: ``runtime.device``) in
    ``runtime.dtype``, its attention path set and gradients off (it is frozen everywhere)."""
    device = device or resolve_device(runtime.device)
    dtype = resolve_dtype(runtime.dtype, device)
    weights = None if section.weights == "random" else section.weights
    architecture = DeepEncoderConfig.named(section.architecture) if weights is None else None
    model = load_deepencoder(weights, device, dtype, config=architecture, seed=runtime.seed)
    model.set_attention(section.attention)
    model.requires_grad_(False)
    if section.layout_tokens and not model.layout_vectors_loaded:
        raise ConfigError(
            f"deepencoder.layout_tokens=true but {section.weights} carries no image_newline/view_seperator "
            "(community layout); use the official file or set deepencoder.layout_tokens=false"
        )
    return model, device, dtype


class BatchRunner:
    """Forward views in chunks of ``batch_size``; on out-of-memory halve it and retry."""

    def __init__(
        self, model: Callable[[torch.Tensor], torch.Tensor], batch_size: int, device: torch.device, dtype: torch.dtype
    ):
        self.model, self.batch_size, self.device, self.dtype = model, batch_size, device, dtype

    @torch.inference_mode()
    def __call__(self, views: torch.Tensor) -> torch.Tensor:
        outputs, start = [], 0
        while start < len(views):
            chunk = views[start : start + self.batch_size].to(self.device, non_blocking=True).to(self.dtype)
            try:
                outputs.append(self.model(chunk))
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                del chunk
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                if self.batch_size == 1:
                    raise RunFailed(
                        "out of memory with a batch of one view; use a smaller mode or another device"
                    ) from None
                self.batch_size //= 2
                continue
            start += len(chunk)
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


class EncoderRunner:
    """A built encoder and how to run it: pages (preprocessed, or images) -> one token sequence each."""

    def __init__(
        self,
        model: DeepEncoder,
        device: torch.device,
        dtype: torch.dtype,
        batch_size: int,
        layout_tokens: bool = False,
        compile: bool = False,
    ):
        self.model, self.device, self.dtype, self.layout_tokens = model, device, dtype, layout_tokens
        self.batches = BatchRunner(torch.compile(model) if compile else model, batch_size, device, dtype)

    @classmethod
    def build(
        cls,
        section: DeepEncoderSection,
        runtime: RuntimeConfig,
        batch_size: int,
        device: torch.device | None = None,
        compile: bool = False,
    ) -> "EncoderRunner":
        model, device, dtype = build_encoder(section, runtime, device)
        return cls(model, device, dtype, batch_size, section.layout_tokens, compile)

    @property
    def batch_size(self) -> int:
        """Views per forward now (smaller than asked after an out-of-memory)."""
        return self.batches.batch_size

    @property
    def out_dim(self) -> int:
        return self.model.cfg.out_dim

    @torch.no_grad()  # plain tensors out (not inference tensors): callers may train on them
    def encode(self, pages: list[PreparedPage]) -> list[torch.Tensor]:
        """Token sequences [tokens, D] of ``pages`` in order, float32 on the CPU; views of equal size
        (gundam's tiles, every page's global view) share forward passes."""
        by_size: dict[int, list[tuple[int, int]]] = {}
        for p, page in enumerate(pages):
            for v, view in enumerate(page.views):
                by_size.setdefault(view.shape[-1], []).append((p, v))
        features: dict[tuple[int, int], torch.Tensor] = {}
        for keys in by_size.values():
            stacked = torch.stack([pages[p].views[v] for p, v in keys])
            for key, out in zip(keys, self.batches(stacked)):
                features[key] = out
        sequences = []
        for p, page in enumerate(pages):
            views = [features[(p, v)] for v in range(len(page.views))]
            tiles = torch.stack(views[:-1]) if len(views) > 1 else None
            sequences.append(self.model.arrange(tiles, page.grid, views[-1], self.layout_tokens).float().cpu())
        return sequences

    def encode_images(self, images: list, mode: str, pixels: str = "official") -> list[torch.Tensor]:
        """Page images (PIL) preprocessed for ``mode`` (``pixels``: see preprocess.resolve_pixels), then encoded."""
        return self.encode([prepare(image, mode, resolve_pixels(pixels)) for image in images])


class PageEncoder(Protocol):
    """Anything that turns page images into vision tokens ``[pages, tokens, out_dim]``."""

    out_dim: int
    identity: dict  # everything that changes the output (goes into the cache key)

    def encode(self, images: list) -> torch.Tensor: ...

    def parameter_count(self) -> int: ...


class DeepEncoderPages:
    """The frozen DeepEncoder of ``optical encode`` (same weights, preprocessing and batching: an
    :class:`EncoderRunner`), loaded on first use so a run whose
    features are cached never loads it.

    ``encode(images)`` -> ``[pages, tokens, out_dim]`` float32 on the CPU. Built from the
    ``deepencoder:`` and ``runtime:`` config sections, so the LongBench comparison can use it too.
    """

    def __init__(self, section: DeepEncoderSection, runtime: RuntimeConfig, device: torch.device, batch_size: int = 8):
        if section.mode == "gundam":
            raise ConfigError(
                "deepencoder.mode=gundam gives each page a different token count; use tiny, small, base or large"
            )
        self.section, self.runtime, self.device, self.batch_size = section, runtime, device, batch_size
        self.mode, self.layout_tokens, self.pixels = section.mode, section.layout_tokens, resolve_pixels(section.pixels)
        self.identity = {"deepencoder": section.model_dump(), "dtype": runtime.dtype, "seed": runtime.seed}
        self.runner: EncoderRunner | None = None

    def load(self) -> None:
        """Load the weights now (otherwise the first ``encode`` does)."""
        if self.runner is None:
            self.runner = EncoderRunner.build(self.section, self.runtime, self.batch_size, self.device)

    def architecture(self) -> DeepEncoderConfig:
        """The encoder's sizes; random weights need no loading to know them."""
        if self.runner is None and self.section.weights == "random":
            return DeepEncoderConfig.named(self.section.architecture)
        self.load()
        return self.runner.model.cfg

    @property
    def out_dim(self) -> int:
        return self.architecture().out_dim

    def parameter_count(self) -> int:
        """Parameters of the encoder (counted on the meta device: no memory, no loading for random weights)."""
        architecture = self.architecture()
        with torch.device("meta"):
            return count_parameters(DeepEncoder(architecture))

    def encode(self, images: list) -> torch.Tensor:
        self.load()
        return torch.stack(self.runner.encode_images(images, self.mode, self.pixels))
