"""A server as a reader: the benchmarks' ``--server URL``, every request sent as ``optical ask --server`` sends it.

:class:`ServerReader` keeps the Reader protocol (``engines/reader.py``) over an OpenAI-compatible server
(:mod:`.client`): the tokenizer, the page renderer and the middle truncation are this config's, in this
process; the model answers on the server.

- Text conditions (native, native-matched, no-context) go as one plain-text user message: any
  OpenAI-compatible server can answer them.
- Pages go as ``image_url`` parts (PNG data URLs) between the instruction and the question, as text
  parts; a prompt in ``optical ask``'s form (LongBench v2's instruction) goes as ask sends it, pages first.
  Only a server running the optical model (``optical serve``) reads them.

Before the first item the server must show it serves this config's model: the name asked for is served,
and, where the server can say how it tokenizes (vLLM's ``/tokenize``), a text probe gives this config's
tokens and (when pages are read) a one-page probe gives this config's optical layout: same tokenizer, chat
template, mode and vision tokens. A server that does not is refused with one line, nothing read.
"""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from ..engines.chain import ChainSpec, draw_pages
from ..engines.reader import ContextExceeded, Generation, ReadRequest, Stream, read_one
from ..engines.tower import page_tokens
from ..errors import ConfigError, InputError
from ..models.tokenizers import load_chat_tokenizer
from ..models.vlm import IMAGE_PAD, build_layout, chat_ids
from ..prompts import AFTER_DOCUMENT, PREAMBLE, PromptParts
from ..render.pages import PageRenderer, png_bytes
from .client import OpenAIServer, png_data_url
from .supervisor import api_key

PROBE_TEXT = "optical probe: the tokens of this request are compared with the local config's."
_TOO_LONG = ("maximum context length", "too long", "longer than", "exceeds the model")


def page_request(prompt: PromptParts, pngs: list[bytes]) -> list[dict]:
    """The user turn of a prompt with pages: ask's form (pages, then the question) for LongBench v2's
    instruction; otherwise the instruction, the pages and the question, each a part."""
    images = [{"type": "image_url", "image_url": {"url": png_data_url(png)}} for png in pngs]
    if prompt.preamble == PREAMBLE and prompt.question.startswith(AFTER_DOCUMENT):
        return [
            {"role": "user", "content": [*images, {"type": "text", "text": prompt.question[len(AFTER_DOCUMENT) :]}]}
        ]
    parts = [{"type": "text", "text": prompt.preamble}, *images, {"type": "text", "text": prompt.question}]
    return [{"role": "user", "content": parts}]


def text_request(prompt: PromptParts) -> list[dict]:
    return [{"role": "user", "content": prompt.text}]


class ServerReader:
    """The Reader protocol over a server; ``in_flight`` requests at once (the server batches them)."""

    def __init__(
        self,
        spec: ChainSpec,
        url: str,
        *,
        model: str,
        pages: bool,
        optical: bool = True,
        timeout_s: float = 600.0,
        in_flight: int = 4,
        client: OpenAIServer | None = None,
    ):
        self.client = client or OpenAIServer(url, timeout_s=timeout_s)
        self.spec, self.model = spec, model
        self.tokenizer = load_chat_tokenizer(spec.tokenizer_source())
        mode = spec.deepencoder.mode
        self.renderer = PageRenderer(spec.render.model_copy(update={"mode": mode})) if pages else None
        self.tokens_per_page = page_tokens(mode, spec.deepencoder.layout_tokens) if pages else 0
        self.in_flight = max(1, in_flight)
        self.optical = pages and optical  # pages are read on the server (not only counted, as native-matched does)
        self.random_weights = spec.random_weights
        self.description = f"server {self.client.root} model {model} (config: vlm={spec.vlm.source}, {mode} pages)"
        self.parameters: dict = {}
        self.device = None
        self.conventions = {"server": self.client.root}
        self.max_positions = None

    # -- the check before the first item ------------------------------------------------------
    def check(self) -> None:
        """Refuse a server whose model is not this config's (one line, nothing read)."""
        entries = {str(entry.get("id")): entry for entry in self.client.models()}
        served = list(entries)
        if self.model not in served:
            raise InputError(
                f"{self.client.root} serves {', '.join(served) or 'no model'}, not {self.model!r}; start it with "
                "`optical serve -c CONFIG` on this config's chain, or set bench.served_model_name"
            )
        self.max_positions = entries[self.model].get("max_model_len")
        try:
            served_ids = self.client.tokenize(self.model, text_request(PromptParts("", "", PROBE_TEXT)))
        except InputError:
            if self.optical:  # pages need the optical model, which has /tokenize
                raise
            return  # a server without /tokenize: the name is all it can show for text
        if served_ids != chat_ids(self.tokenizer, [PROBE_TEXT])[0]:
            raise InputError(
                f"{self.client.root} tokenizes text otherwise than this config ({self.spec.tokenizer_source()}): its "
                "model is not this config's; serve this config's model or point vlm.tokenizer at the served one"
            )
        if self.optical:
            self._check_pages()

    def _check_pages(self) -> None:
        prompt = PromptParts("Read the page.\n", "", PROBE_TEXT)
        page = self.renderer.draw(["optical probe page"])
        served = self.client.tokenize(self.model, page_request(prompt, [png_bytes(page)]))
        expected = build_layout(self.tokenizer, prompt.question, [self.tokens_per_page], preamble=prompt.preamble)
        if served != expected.input_ids.tolist():
            pad = self.tokenizer.token_id(IMAGE_PAD)
            raise InputError(
                f"the server at {self.client.root} reads a page as {served.count(pad)} vision tokens in "
                f"{len(served)} prompt tokens where this config reads {expected.input_ids.tolist().count(pad)} in "
                f"{expected.length}: its model is not this config's (deepencoder.mode, layout tokens, chat template); "
                "start it with `optical serve` on this config's chain"
            )

    # -- the Reader protocol --------------------------------------------------------------------
    def encode_text(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode_text(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def render(self, text: str, max_pages: int) -> tuple[list[Any], int]:
        return draw_pages(self.renderer, text, max_pages)

    def vision_tokens(self, pages: Sequence[Any]) -> int:
        return len(pages) * self.tokens_per_page

    def with_pages(self, render, mode: str) -> "ServerReader":
        """This reader drawing pages with ``render``: one font setting of a render grid (the server encodes in
        its model's one mode)."""
        if mode != self.spec.deepencoder.mode:
            raise ConfigError(
                f"the server encodes pages in its model's mode ({self.spec.deepencoder.mode}), not {mode}; "
                "run one mode per server (bench.modes)"
            )
        variant = copy.copy(self)
        variant.renderer = PageRenderer(render.model_copy(update={"mode": mode}))
        return variant

    def warm_up(self) -> None:
        """Nothing to warm here: the server warmed itself when it started (``check`` asked it already)."""

    def read_text(
        self, prompt: PromptParts, *, max_new_tokens: int, temperature: float, seed: int, stream: Stream = None
    ) -> Generation:
        tokens = len(chat_ids(self.tokenizer, [prompt.text])[0])
        return self._ask(text_request(prompt), tokens, max_new_tokens, temperature, seed, stream)

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
        start_tokens = len(self.encode_text(prompt.preamble + "\n" + prompt.question)) + self.vision_tokens(pages)
        messages = page_request(prompt, [png_bytes(page) for page in pages])
        return self._ask(messages, start_tokens, max_new_tokens, temperature, seed, stream)

    def read_many(self, requests: Sequence[ReadRequest]) -> list:
        """The requests at once, ``in_flight`` threads: the server batches what arrives together."""

        def one(request: ReadRequest):
            try:
                return read_one(self, request)
            except Exception as exc:  # noqa: BLE001 - one outcome per request, as an engine reports them
                return exc

        with ThreadPoolExecutor(max_workers=self.in_flight) as pool:
            return list(pool.map(one, requests))

    def _ask(
        self, messages: list[dict], tokens: int, max_new_tokens: int, temperature: float, seed: int, stream: Stream
    ) -> Generation:
        if self.max_positions and tokens > self.max_positions:
            raise ContextExceeded(f"about {tokens} input tokens exceed the server's {self.max_positions} positions")
        try:
            reply = self.client.chat(
                self.model,
                messages,
                max_tokens=max_new_tokens,
                temperature=temperature,
                seed=seed if temperature > 0 else None,
                on_text=stream,
            )
        except InputError as exc:
            if any(marker in str(exc).lower() for marker in _TOO_LONG):
                raise ContextExceeded(str(exc)) from None
            raise
        prompt_tokens = reply.prompt_tokens if reply.prompt_tokens is not None else tokens
        return Generation(reply.text, prompt_tokens, reply.first_token_s, reply.total_s - reply.first_token_s)


def server_reader(cfg, conditions: Sequence[str]) -> ServerReader:
    """The benchmark's reader for ``bench.server``: checked against the config before any item."""
    spec = ChainSpec.from_config(cfg, "bench")
    pages = bool({"optical", "native-matched"} & set(conditions))
    section = cfg.bench
    key_setting = "bench.server_api_key_env"
    key = api_key(section.server_api_key_env, key_setting)
    client = OpenAIServer(section.server, timeout_s=section.server_timeout_s, api_key=key, key_setting=key_setting)
    reader = ServerReader(
        spec,
        section.server,
        model=section.served_model_name,
        pages=pages,
        optical="optical" in conditions,
        in_flight=section.server_in_flight,
        client=client,
    )
    reader.check()
    return reader
