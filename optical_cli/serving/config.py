"""The schema of `optical serve`, `optical ask` and `optical export-model` (one model, three commands)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from ..config.schema import Section
from ..config.sections import (
    PUBLISHED_ADAPTER,
    DeepEncoderSection,
    RenderSection,
    RuntimeConfig,
    VLLMSection,
    VLMSection,
)


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
