"""The schema of `optical serve`, `optical ask` and `optical export-model` (one model, three commands)."""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import Field, field_validator

from ..config.schema import Section
from ..config.sections import (
    PUBLISHED_ADAPTER,
    DeepEncoderSection,
    LoopGuardSection,
    PageCacheSection,
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
    served_model_name: Union[str, list[str]] = Field(
        "optical",
        description="the model name clients ask for, or a list: the first is the name answers carry, the others "
        "are aliases (a client that hard-codes its model, e.g. [optical, glyph]); its LoRA (when served) is FIRST-lora",
    )
    temperature: float = Field(0.0, ge=0.0, description="sampling temperature of requests that set none (0 = greedy)")
    max_new_tokens: int = Field(
        512,
        ge=1,
        description="the longest answer the server writes: the length of requests that set none, and a limit for "
        "those that ask for more (vLLM reads it as a server-wide limit; such an answer ends with finish_reason length)",
    )
    api_key_env: Optional[str] = Field(
        None,
        description="name of an environment variable holding the API key clients must send (Authorization: Bearer "
        "KEY); the key itself never goes on a command line or into a log; ask --server sends it (null: no key)",
    )
    shutdown_timeout_s: int = Field(
        300,
        ge=0,
        description="on SIGTERM: seconds the requests in flight may take to finish while new ones are refused "
        "(0 = abort them at once); the server then exits 0",
    )
    loop_guard: LoopGuardSection = Field(
        LoopGuardSection(), description="cut answers that loop (requests may set their own: vllm_xargs)"
    )
    processor_cache: Literal["shm", "lru", "off"] = Field(
        "shm",
        description="vLLM's cache of processed pages between its API server and its engine: shm (shared memory), "
        "lru (vLLM's default, mirrored in both processes; under load vLLM 0.32 lets the two copies drift and "
        "answers the request 500: measured, 5 of 64 concurrent requests), or off",
    )

    @field_validator("served_model_name")
    @classmethod
    def _names(cls, value):
        names = [value] if isinstance(value, str) else value
        if not names or any(not name.strip() for name in names) or len(set(names)) != len(names):
            raise ValueError("give one model name or a list of distinct, non-empty names")
        return value

    @property
    def served_names(self) -> list[str]:
        """Every name the server answers to; the first is the one its answers carry."""
        return [self.served_model_name] if isinstance(self.served_model_name, str) else list(self.served_model_name)


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
    select: Literal["retrieve", "middle"] = Field(
        "retrieve",
        description="a document longer than serve.max_pages (or --budget): retrieve reads the pages the index's "
        "embedder and search rank best for the question, in reading order; middle reads the first and last pages "
        "(bench longbench's cut)",
    )
    library: Optional[str] = Field(
        None, description="a library `optical index add-documents` made: ask across its documents (--library)"
    )
    budget: Optional[int] = Field(
        None,
        ge=1,
        description="vision tokens the pages may take (--budget): the DeepEncoder mode and font size that fit the "
        "document at the best legibility of the render frontier, else pages selected within it",
    )
    index_config: Optional[str] = Field(
        None,
        description="the index config whose embedder, search and library.passage_chars rank pages (null: the "
        "index command's default config)",
    )
    frontier: Optional[str] = Field(
        None,
        description="--budget's legibility table: a `sweep frontier` run's frontier.csv (null: the shipped "
        "data/frontier/default.csv)",
    )
    loop_guard: LoopGuardSection = Field(
        LoopGuardSection(), description="cut answers that loop (also sent to a server with each question)"
    )


class ServeConfig(Section):
    serve: ServeSection = ServeSection()
    ask: AskSection = AskSection()
    vllm: VLLMSection = VLLMSection(prefix_caching=True)
    vlm: VLMSection = VLMSection()
    deepencoder: DeepEncoderSection = DeepEncoderSection()
    render: RenderSection = RenderSection()
    page_cache: PageCacheSection = PageCacheSection()
    runtime: RuntimeConfig = RuntimeConfig()
