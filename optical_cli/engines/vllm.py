"""The vllm engine: the Reader protocol on vLLM's offline engine over the optical model directory.

What vLLM receives is what the hf engine feeds its own loop:

- text conditions: the token ids of our chat layout (``models.vlm.build_layout``) after our
  truncation, as a token prompt (vLLM's tokenizer never sees the text);
- pages: the same layout with ONE ``<|image_pad|>`` per page and the page images themselves; the
  model plugin's processor expands each pad to the mode's vision tokens with the page's grid
  (Qwen3-VL's multimodal rotary positions, the ones ``models.vlm.mrope_positions`` computes), and
  DeepEncoder and the adapter run inside the engine, batched across the requests in flight, with
  vLLM's encoder cache. A row's ``prefill_s`` therefore includes its pages' encoding.

The model directory is :func:`optical_cli.engines.model_dir.cached_model_dir`'s (random weights
built from the same seeds as the hf engine's). vLLM is imported through :mod:`.vllm_import` only.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from safetensors import safe_open

from ..errors import ConfigError, InputError
from ..models.loop_guard import LOOP_STOP_TOKEN_ID, OFF, REPETITION, NoRepeatNGram
from ..models.lora import CONFIG_FILE, LORA_DIR
from ..models.vlm import END_OF_TEXT, IM_END, IMAGE_PAD, build_layout
from ..prompts import PromptParts
from ..render.pages import PageRenderer
from .chain import draw_pages
from .model_dir import INDEX_FILE, WEIGHT_PREFIX, read_settings
from .reader import ContextExceeded, Generation, Outcome, ReadRequest, TextStream
from .vllm_import import import_vllm


def collapse_image_pads(ids: Sequence[int], pad: int) -> list[int]:
    """Each run of ``pad`` (one page's slots) reduced to one ``pad``: the processor expands it again."""
    out: list[int] = []
    for token in ids:
        if token == pad and out and out[-1] == pad:
            continue
        out.append(token)
    return out


@dataclass
class Request:
    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float
    seed: int
    pages: list | None = None  # page images, one <|image_pad|> each in prompt_ids
    logprobs: int | None = None
    lora: bool = False  # read with the engine's LoRA (pages of an adapter trained with one)
    embeds: torch.Tensor | None = None  # vllm.pages: embeddings: the pages adapted here [P, tokens, hidden]
    loop_guard: NoRepeatNGram = OFF  # sent with the request: the plugin's logits processor applies it


@dataclass
class Result:
    ids: list[int]
    prefill_s: float
    decode_s: float
    first_logprobs: dict[int, float] | None = None
    finish_reason: str = ""  # stop, length or repetition (the loop guard's stop token)


class VLLMEngine:
    """vLLM's ``LLM`` over an optical model directory; answers token prompts, with pages or without."""

    def __init__(
        self,
        model_dir: Path,
        section,
        dtype: torch.dtype,
        *,
        seed: int = 0,
        device: torch.device | None = None,
    ):
        configure_environment(section, device)
        vllm = import_vllm()
        self.model_dir = Path(model_dir)
        self.settings = read_settings(self.model_dir)
        config = json.loads((self.model_dir / "config.json").read_text(encoding="utf-8"))
        text = config.get("text_config", config)
        self.max_positions = int(section.max_model_len or text.get("max_position_embeddings") or 0) or None
        self.max_num_seqs = section.max_num_seqs
        self.sampling_params = vllm.SamplingParams
        kwargs: dict[str, Any] = dict(
            model=str(self.model_dir),
            dtype=_DTYPE_NAMES[dtype],
            seed=seed,
            enforce_eager=section.enforce_eager,
            tensor_parallel_size=section.tensor_parallel_size,
            pipeline_parallel_size=section.pipeline_parallel_size,
            max_num_seqs=section.max_num_seqs,
            limit_mm_per_prompt={"image": self.settings.max_pages, "video": 0},
            disable_log_stats=False,
            enable_prefix_caching=section.prefix_caching,
            enable_mm_embeds=section.pages == "embeddings",
        )
        self.dtype = dtype
        if device is None or device.type != "cpu":
            kwargs["gpu_memory_utilization"] = section.gpu_memory_utilization
        if section.max_model_len:
            kwargs["max_model_len"] = section.max_model_len
        self.lora_request = None
        lora_dir = self.model_dir / LORA_DIR if self.settings.lora else None
        if lora_dir is not None:  # a PEFT directory in the checkpoint's names (train-adapter's lora/)
            kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=vllm_lora_rank(lora_rank(lora_dir)))
            self.lora_request = vllm.LoRARequest("optical", 1, str(lora_dir))
        self.llm = vllm.LLM(**kwargs)

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
        prompts = [self._prompt(request) for request in requests]
        params = [self._sampling(request) for request in requests]
        start = time.perf_counter()
        outputs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=self.lora_request if lora else None)
        wall = time.perf_counter() - start
        return [self._result(output, wall) for output in outputs]

    def stream(self, request: Request, on_token: Callable[[int], None]) -> Result:
        """One request, each answer token handed to ``on_token`` as it is decoded: the engine is
        stepped here, as vLLM's own ``LLM.generate`` steps it."""
        if request.lora and self.lora_request is None:
            raise ConfigError("a request asks for the LoRA but the engine was started without one")
        lora = self.lora_request if request.lora else None
        start = time.perf_counter()
        self.llm.enqueue([self._prompt(request)], [self._sampling(request)], lora_request=lora, use_tqdm=False)
        engine, sent, final = self.llm.llm_engine, 0, None
        while engine.has_unfinished_requests():
            for output in engine.step():
                ids = output.outputs[0].token_ids
                for token in ids[sent:]:
                    on_token(int(token))
                sent = len(ids)
                final = output if output.finished else final
        return self._result(final, time.perf_counter() - start)

    def _prompt(self, request: Request) -> dict[str, Any]:
        prompt: dict[str, Any] = {"prompt_token_ids": list(request.prompt_ids)}
        if request.pages:
            prompt["multi_modal_data"] = {"image": list(request.pages)}
        elif request.embeds is not None:
            prompt["multi_modal_data"] = {"image": list(request.embeds.to(self.dtype).cpu())}
        return prompt

    def _sampling(self, request: Request):
        sampling = dict(
            max_tokens=request.max_new_tokens,
            temperature=request.temperature,
            detokenize=False,
            skip_special_tokens=False,
            logprobs=request.logprobs,
            extra_args=request.loop_guard.as_xargs(),  # always sent: off is off, whatever the environment says
        )
        if request.temperature > 0:
            sampling["seed"] = request.seed
        return self.sampling_params(**sampling)

    @staticmethod
    def _result(output, wall: float) -> Result:
        completion = output.outputs[0]
        ids = list(completion.token_ids)
        prefill_s, decode_s = request_times(output, wall, len(ids))
        first = None
        if completion.logprobs:
            first = {int(token): float(entry.logprob) for token, entry in completion.logprobs[0].items()}
        finish = REPETITION if completion.stop_reason == LOOP_STOP_TOKEN_ID else str(completion.finish_reason or "")
        return Result(ids, prefill_s, decode_s, first, finish)


_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
_VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's allowed max_lora_rank values


def lora_rank(lora_dir: Path) -> int:
    """The rank ``r`` of a PEFT adapter directory."""
    return int(json.loads((Path(lora_dir) / CONFIG_FILE).read_text(encoding="utf-8"))["r"])


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


def cpu_environment(section, device: torch.device | None) -> dict[str, str]:
    """vLLM's CPU backend reads its KV-cache size and thread binding from the environment: the
    values of the ``vllm:`` section (``all`` binds every core of this process; vLLM's own
    default binds core 0 only). Empty off the CPU."""
    if device is not None and device.type != "cpu":
        return {}
    bind = section.cpu_threads_bind
    if bind == "all":
        cores = (
            sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
        )
        bind = ",".join(str(core) for core in cores)
    return {"VLLM_CPU_KVCACHE_SPACE": str(section.cpu_kvcache_space_gib), "VLLM_CPU_OMP_THREADS_BIND": bind}


def configure_environment(section, device: torch.device | None) -> None:
    """Before vLLM is imported: its log on stderr (stdout carries --json output), :func:`cpu_environment`,
    and on a CPU the engine core in this process (no spawned child re-importing the caller's main
    module, no second copy of the weights, nothing left behind when the run stops). A variable the
    user set wins."""
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    for name, value in cpu_environment(section, device).items():
        os.environ.setdefault(name, value)
    if device is None or device.type == "cpu":
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


class VLLMReader:
    """The Reader protocol with the whole chain inside vLLM: pages go in as images."""

    def __init__(
        self,
        engine: VLLMEngine,
        tokenizer,
        *,
        renderer=None,
        random_weights: bool,
        description: str,
        conventions: dict | None,
        parameters: dict,
        device: torch.device,
        embed_pages: Callable[[list], tuple[torch.Tensor, float, float]] | None = None,
        loop_guard: NoRepeatNGram = OFF,
    ):
        self.engine = engine
        self.loop_guard = loop_guard  # sent with every request (models/loop_guard.py)
        # vllm.pages: embeddings: pages -> (adapted embeddings [P, T, hidden], encode s, adapter s) in this process
        self.embed_pages = embed_pages
        self.tokenizer = tokenizer
        self.renderer = renderer
        self.settings = engine.settings
        self.random_weights = random_weights
        self.description = description
        self.conventions = conventions or {}
        self.parameters = parameters
        self.device = device
        self.max_positions = engine.max_positions
        self.pad_id = tokenizer.token_id(IMAGE_PAD)
        self.stop_ids = {tokenizer.token_id(IM_END), tokenizer.token_id(END_OF_TEXT), LOOP_STOP_TOKEN_ID}

    def with_pages(self, render, mode: str) -> "VLLMReader":
        """This reader drawing pages with ``render`` (a RenderSection): one font setting of a render grid. The
        engine encodes in its model directory's mode only; another mode is a config error."""
        if mode != self.settings.mode:
            raise ConfigError(
                f"the vllm engine encodes pages in its model's mode ({self.settings.mode}), not {mode}; "
                "run one mode per run (bench.modes) or use --engine hf for a grid of modes"
            )
        variant = copy.copy(self)
        variant.renderer = PageRenderer(render.model_copy(update={"mode": mode}))
        return variant

    def encode_text(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode_text(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def render(self, text: str, max_pages: int):
        return draw_pages(self.renderer, text, max_pages)

    def vision_tokens(self, pages: Sequence[Any]) -> int:
        return len(pages) * self.settings.tokens_per_page

    # -- requests ----------------------------------------------------------------------------
    def text_request(
        self, prompt: PromptParts, *, max_new_tokens: int, temperature: float, seed: int, logprobs: int | None = None
    ) -> tuple[Request, int]:
        """The hf engine's prompt for a text condition as a vLLM request, and its length."""
        layout = build_layout(self.tokenizer, prompt.question, None, prompt.document or None, preamble=prompt.preamble)
        self._check_length(layout.length)
        request = Request(layout.input_ids.tolist(), max_new_tokens, temperature, seed, logprobs=logprobs)
        request.loop_guard = self.loop_guard
        return request, layout.length

    def page_request(
        self,
        prompt: PromptParts,
        pages: Sequence[Any],
        *,
        max_new_tokens: int,
        temperature: float,
        seed: int,
        logprobs: int | None = None,
    ) -> tuple[Request, int]:
        """The hf engine's layout with one ``<|image_pad|>`` per page and the pages themselves."""
        if len(pages) > self.settings.max_pages:
            raise InputError(f"{len(pages)} pages, but the model directory takes {self.settings.max_pages} per request")
        tokens = [self.settings.tokens_per_page] * len(pages)
        layout = build_layout(self.tokenizer, prompt.question, tokens, None, preamble=prompt.preamble)
        self._check_length(layout.length)
        ids = collapse_image_pads(layout.input_ids.tolist(), self.pad_id)
        if ids.count(self.pad_id) != len(pages):
            raise InputError(
                f"{ids.count(self.pad_id)} image placeholders for {len(pages)} pages (is <|image_pad|> in the text?)"
            )
        # pages are read with the LoRA trained beside the adapter, when there is one (text: the base model)
        lora = self.engine.lora_request is not None
        request = Request(ids, max_new_tokens, temperature, seed, list(pages), logprobs, lora)
        request.loop_guard = self.loop_guard
        return request, layout.length

    def embedded_request(self, request: Request) -> tuple[Request, float, float]:
        """``vllm.pages: embeddings``: the request's pages encoded and adapted here, sent as embeddings."""
        embeds, encode_s, adapter_s = self.embed_pages(request.pages)
        request.pages, request.embeds = None, embeds
        return request, encode_s, adapter_s

    def _check_length(self, tokens: int) -> None:
        if self.max_positions and tokens > self.max_positions:
            raise ContextExceeded(f"{tokens} input tokens exceed the model's {self.max_positions} positions")

    # -- the Reader protocol -------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Requests submitted together: as many as vLLM schedules at once (``vllm.max_num_seqs``)."""
        return self.engine.max_num_seqs

    def read_many(self, reads: Sequence[ReadRequest]) -> list[Outcome]:
        """Every read as one vLLM call (vLLM batches them, pages encoded inside it). A read that
        fails before it reaches vLLM (too long) fails alone."""
        outcomes: list[Outcome | None] = [None] * len(reads)
        built = []
        for index, read in enumerate(reads):
            try:
                built.append((index, *self._engine_request(read)))
            except Exception as exc:  # noqa: BLE001 - this read's outcome; the others still run
                outcomes[index] = exc
        results = self.engine.generate([request for _, request, *_ in built]) if built else []
        for (index, _, length, encode_s, adapter_s), result in zip(built, results):
            text = self.decode_text(self._until_stop(result.ids))
            outcomes[index] = Generation(
                text,
                length,
                result.prefill_s,
                result.decode_s,
                encode_s=encode_s,
                adapter_s=adapter_s,
                finish_reason=result.finish_reason,
            )
        return outcomes  # type: ignore[return-value]

    def _until_stop(self, ids: list[int]) -> list[int]:
        for position, token in enumerate(ids):  # the hf loop stops before a stop token
            if token in self.stop_ids:
                return ids[:position]
        return ids

    def _engine_request(self, read: ReadRequest) -> tuple[Request, int, float, float]:
        """(vLLM request, input tokens, encode seconds, adapter seconds) of one read."""
        options = dict(max_new_tokens=read.max_new_tokens, temperature=read.temperature, seed=read.seed)
        if read.pages is None:
            return (*self.text_request(read.prompt, **options), 0.0, 0.0)
        request, length = self.page_request(read.prompt, read.pages, **options)
        if self.embed_pages is None:
            return request, length, 0.0, 0.0  # encoded inside the engine: part of prefill_s
        request, encode_s, adapter_s = self.embedded_request(request)
        return request, length, encode_s, adapter_s

    def _read(self, read: ReadRequest, stream: Callable[[str], None] | None) -> Generation:
        if stream is None:
            (outcome,) = self.read_many([read])
            if isinstance(outcome, Exception):
                raise outcome
            return outcome
        request, length, encode_s, adapter_s = self._engine_request(read)
        text = TextStream(self.decode_text, stream)
        stopped = False

        def on_token(token: int) -> None:
            nonlocal stopped
            stopped = stopped or token in self.stop_ids  # the hf loop stops before a stop token
            if not stopped:
                text(token)

        result = self.engine.stream(request, on_token)
        answer = self.decode_text(self._until_stop(result.ids))
        return Generation(
            answer,
            length,
            result.prefill_s,
            result.decode_s,
            encode_s=encode_s,
            adapter_s=adapter_s,
            finish_reason=result.finish_reason,
        )

    def read_text(
        self,
        prompt: PromptParts,
        *,
        max_new_tokens: int,
        temperature: float,
        seed: int,
        stream: Callable[[str], None] | None = None,
    ) -> Generation:
        return self._read(ReadRequest(prompt, max_new_tokens, temperature, seed), stream)

    def read_pages(
        self,
        prompt: PromptParts,
        pages: Sequence[Any],
        *,
        max_new_tokens: int,
        temperature: float,
        seed: int,
        stream: Callable[[str], None] | None = None,
    ) -> Generation:
        return self._read(ReadRequest(prompt, max_new_tokens, temperature, seed, pages=pages), stream)

    def warm_up(self) -> None:
        """One short request, and one page when pages are read, before the first timed item
        (vLLM's first multimodal request is slow: tens of seconds on a CPU)."""
        question = PromptParts(preamble="", document="", question="Say OK.")
        self.read_text(question, max_new_tokens=2, temperature=0.0, seed=0)
        if self.renderer is not None:
            self.read_pages(question, [self.renderer.draw(["warm-up"])], max_new_tokens=2, temperature=0.0, seed=0)


def language_model_parameters(model_dir: Path) -> int:
    """Parameters of the directory's language model (every indexed tensor but the optical tower's),
    from the safetensors headers."""
    index = json.loads((Path(model_dir) / INDEX_FILE).read_text(encoding="utf-8"))["weight_map"]
    names_by_file: dict[str, set[str]] = {}
    for name, file in index.items():
        if not name.startswith(WEIGHT_PREFIX):
            names_by_file.setdefault(file, set()).add(name)
    return sum(
        _safetensors_parameters([Path(model_dir) / file], names.__contains__) for file, names in names_by_file.items()
    )


def lora_parameter_count(lora_dir: Path) -> int:
    """Parameters of a PEFT adapter directory's LoRA weights, from the file header."""
    return _safetensors_parameters([Path(lora_dir) / "adapter_model.safetensors"], lambda name: ".lora_" in name)


def _safetensors_parameters(paths, keep) -> int:
    total = 0
    for path in sorted(paths):
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                if keep(name):
                    count = 1
                    for size in handle.get_slice(name).get_shape():
                        count *= int(size)
                    total += count
    return total
