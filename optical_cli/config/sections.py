"""Config sections that several jobs read: the runtime, rendering, DeepEncoder, Qwen3-VL, the adapter
and the vLLM engine. A section read by one job lives beside that job (``<job>/config.py``).
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from ..models.qwen3_vl_family import QWEN3_VL_FAMILY
from .schema import Section

# The published adapter for Qwen3-VL-2B (Volkopat/Qwen-VLM-Optical-Encoder), the quick start's default.
PUBLISHED_ADAPTER = "hf://Volkopat/Qwen-VLM-Optical-Encoder/qwen3_vl_2b.pth"


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


QwenModel = Literal["tiny", "qwen3-vl-2b", "qwen3-vl-4b", "qwen3-vl-8b", "qwen3-vl-32b", "qwen3-vl-30b-a3b"]


class RandomQwen3VLSection(Section):
    """A random-weight Qwen3-VL's text model (vlm.source=random): a member of the family by name, and any dim that
    differs from it (null: the named model's)."""

    model: QwenModel = Field(
        "tiny", description="the architecture by name (models/qwen3_vl_family.py); tiny is the test model"
    )
    vocab_size: Optional[int] = Field(None, ge=151669, description="must hold the Qwen special tokens")
    hidden_size: Optional[int] = Field(None, ge=8)
    intermediate_size: Optional[int] = Field(None, ge=8)
    num_hidden_layers: Optional[int] = Field(None, ge=1)
    num_attention_heads: Optional[int] = Field(None, ge=1)
    num_key_value_heads: Optional[int] = Field(None, ge=1)
    head_dim: Optional[int] = Field(None, ge=4)
    mrope_section: Optional[list[int]] = Field(None, description="t/h/w rotary sections; must sum to head_dim/2")
    rope_theta: Optional[float] = None
    max_position_embeddings: Optional[int] = Field(None, ge=128)
    tie_word_embeddings: Optional[bool] = None
    initializer_range: Optional[float] = Field(
        None, gt=0, description="std of the random weights (Qwen3-VL's own default 0.02)"
    )
    num_experts: Optional[int] = Field(
        None,
        ge=0,
        description="0 = dense (Qwen3-VL); > 0 = mixture of experts (Qwen3-VL-MoE) with this many experts per layer",
    )
    num_experts_per_tok: Optional[int] = Field(None, ge=1, description="MoE: experts each token is routed to")
    moe_intermediate_size: Optional[int] = Field(None, ge=1, description="MoE: each expert's MLP width")
    decoder_sparse_step: Optional[int] = Field(None, ge=1, description="MoE: every N-th layer is sparse (1 = all)")
    mlp_only_layers: Optional[list[int]] = Field(
        None, description="MoE: layers kept dense (their MLP is intermediate_size wide)"
    )

    def dims(self) -> dict:
        """The text dims to build: the named model's, with every dim set here in their place."""
        given = {key: value for key, value in self.model_dump(exclude={"model"}).items() if value is not None}
        return {**QWEN3_VL_FAMILY[self.model], **given}


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
