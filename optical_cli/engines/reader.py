"""The one inference seam: what the benchmark, ``optical ask`` and the reading check need from
the models, as a small protocol.

Callers never touch a model directly: they ask a ``Reader`` to tokenise, to answer a text prompt,
to render a document into pages and to answer a prompt whose document part is a list of pages.
The engines (:mod:`optical_cli.engines.hf`, :mod:`optical_cli.engines.vllm`) implement it over
Qwen3-VL, DeepEncoder and the adapter; tests pass a fake one (and can make it run out of memory on cue).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, Sequence, Union, runtime_checkable

from ..prompts import PromptParts


class ContextExceeded(Exception):
    """The prompt is longer than the model can take; the item is recorded as context_exceeded."""


@dataclass
class Generation:
    """One answer and what it cost."""

    text: str
    input_tokens: int  # every token the prefill saw: template, document or vision tokens, question
    prefill_s: float
    decode_s: float
    encode_s: float = 0.0  # page encoding (optical only)
    adapter_s: float = 0.0  # adapter and embedding splice (optical only)


@dataclass
class ReadRequest:
    """One model call the runner wants: a text prompt, or a prompt whose document part is ``pages``."""

    prompt: PromptParts
    max_new_tokens: int
    temperature: float
    seed: int
    pages: Sequence[Any] | None = None  # None: the document (if any) is in the prompt as text


Outcome = Union[Generation, Exception]
Stream = Optional[Callable[[str], None]]  # the answer's text as it is decoded (optical ask streams it)


def read_one(reader: "Reader", request: ReadRequest) -> Generation:
    options = dict(max_new_tokens=request.max_new_tokens, temperature=request.temperature, seed=request.seed)
    if request.pages is None:
        return reader.read_text(request.prompt, **options)
    return reader.read_pages(request.prompt, request.pages, **options)


def in_flight(reader: "Reader") -> int:
    """How many requests the reader takes at once (1 unless it is a :class:`BatchedReader`)."""
    return max(1, int(reader.in_flight)) if isinstance(reader, BatchedReader) else 1


def read_all(reader: "Reader", requests: Sequence[ReadRequest]) -> list[Outcome]:
    """Each request's Generation, or the exception it failed with, in request order. A
    :class:`BatchedReader` gets them all at once; if that call fails as a whole (one bad request can
    take a batch down), they are retried one at a time so every row gets its own outcome."""
    if len(requests) > 1 and isinstance(reader, BatchedReader):
        try:
            return list(reader.read_many(requests))
        except Exception:  # noqa: BLE001 - attributed per request below
            pass
    outcomes: list[Outcome] = []
    for request in requests:
        try:
            outcomes.append(read_one(reader, request))
        except Exception as exc:  # noqa: BLE001 - recorded on its row by the runner
            outcomes.append(exc)
    return outcomes


@runtime_checkable
class Reader(Protocol):
    """What every engine offers (hf, vllm; a test's fake). Checked for each engine by tests/test_engines.py."""

    #: True when the weights are random (tiny test models, or full-size random for timing):
    #: the CLI then refuses to present accuracies as results.
    random_weights: bool
    #: A one-line description of the models, written into summary.json.
    description: str
    #: Parameters of each model it holds (``deepencoder``, ``adapter``, ``language_model``; None
    #: for a model the chosen conditions do not load), written into summary.json.
    parameters: dict
    #: Where the models run (a ``torch.device``; None for a reader without one): its peak memory is recorded.
    device: Any
    #: How pages reach the model (``adapter_layout``, ``pixels``; empty for text only), written
    #: into summary.json and the manifest so runs under different conventions are never mixed up.
    conventions: dict

    def warm_up(self) -> None:
        """Run what the first real request would otherwise pay for (kernels chosen, caches built), so
        timings measure the steady state; the factory calls it once after loading."""
        ...

    def encode_text(self, text: str) -> list[int]: ...

    def decode_text(self, ids: Sequence[int]) -> str: ...

    def read_text(
        self, prompt: PromptParts, *, max_new_tokens: int, temperature: float, seed: int, stream: Stream = None
    ) -> Generation:
        """Answer a prompt given as text (native, native-matched and no-context); ``seed`` seeds
        the sampler when temperature > 0; ``stream`` (optional) gets the answer's text as it is
        decoded. Raise ``ContextExceeded`` when the prompt is longer than the model takes."""
        ...

    def render(self, text: str, max_pages: int) -> tuple[list[Any], int]:
        """The document as page images in reading order, at most ``max_pages`` of them
        (middle-truncated with ``prompts.middle_truncate``), and the page count before cutting.
        Lay out every page but draw only the kept ones: a 2M-word document is thousands of pages."""
        ...

    def vision_tokens(self, pages: Sequence[Any]) -> int:
        """How many LLM positions these pages occupy once encoded and adapted."""
        ...

    def read_pages(
        self,
        prompt: PromptParts,
        pages: Sequence[Any],
        *,
        max_new_tokens: int,
        temperature: float,
        seed: int,
        stream: Stream = None,
    ) -> Generation:
        """Answer ``prompt`` with ``pages`` spliced where its document part would be
        (``prompt.document`` is empty); ``Generation.encode_s`` is the page encoding time."""
        ...


@runtime_checkable
class BatchedReader(Reader, Protocol):
    """An optional capability: an engine that batches across requests (vLLM). Without it the runner
    asks one request at a time."""

    #: How many requests to submit together.
    in_flight: int

    def read_many(self, requests: Sequence[ReadRequest]) -> list[Outcome]:
        """One outcome per request, in order (a Generation, or the exception that request failed with);
        each Generation's prefill_s/decode_s is that request's own time in the engine, queueing included."""
        ...


class TextStream:
    """Token ids in, text out as it becomes final: streams an answer while it is decoded.

    Decodes everything so far and emits what was added, holding back a tail that ends in an
    incomplete UTF-8 sequence (the tokenizer shows it as U+FFFD until its last byte arrives)."""

    def __init__(self, decode: Callable[[list[int]], str], emit: Callable[[str], None]):
        self.decode, self.emit = decode, emit
        self.ids: list[int] = []
        self.sent = 0

    def __call__(self, token: int) -> None:
        self.ids.append(int(token))
        text = self.decode(self.ids)
        if text.endswith("\ufffd"):
            return
        if len(text) > self.sent:
            self.emit(text[self.sent :])
            self.sent = len(text)
