"""``optical ask DOC QUESTION``: one question about one document, read as pages.

The document (a ``.txt``/``.md``/``.pdf`` file, a directory ``optical render`` wrote, or ``-``
for stdin; ``documents.py`` reads them) is rendered with the config's settings at the encoder's
page size and middle-truncated to ``serve.max_pages`` pages, exactly as ``bench longbench``'s
optical condition does; the prompt is that condition's template with the question in place of the
benchmark's question and choices (``bench.prompts.question_prompt``). Then either:

- an engine in this process reads it (``ask.engine``: ``hf`` or ``vllm``, through
  :func:`optical_cli.engines.factory.build_reader`), or
- an OpenAI-compatible server running the optical model does (``--server URL``): the pages go as
  PNG data URLs beside the question, the answer streams back. Before anything is read, the
  server's own rendering of the request (vLLM's ``/tokenize``: its chat template and page
  expansion) must equal, token for token, the prompt this config would read locally; a server
  that is not the optical model, or reads pages in another mode, fails with a clear error instead
  of a wrong answer.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from PIL import Image

from ..config.sections import RenderSection
from ..documents import pdf_page_count, rasterize_pdf, read_documents
from ..engines.chain import ChainSpec, draw_pages
from ..engines.factory import build_reader
from ..engines.reader import Stream
from ..engines.tower import page_tokens
from ..errors import InputError
from ..models.tokenizers import load_chat_tokenizer
from ..models.vlm import IMAGE_PAD, build_layout
from ..modes import page_size
from ..prompts import middle_truncate, question_prompt
from ..records import read_records
from ..render.pages import PageRenderer, png_bytes
from .client import OpenAIServer, page_messages
from .server import served_lora_name


@dataclass
class AskDocument:
    source: str
    text: str  # what the document says (its tokens are document_tokens)
    page_files: list[Path] | None = None  # pages already drawn: a render run directory
    pdf: Path | None = None  # render.source=pdf-pages: the PDF's own pages


@dataclass
class Answer:
    answer: str
    question: str
    document: str
    pages: int  # pages read (after middle truncation)
    document_pages: int  # pages the document has
    vision_tokens: int
    document_tokens: int
    input_tokens: int
    engine: str  # hf, vllm or server
    model: str
    random_weights: bool
    timings: dict = field(default_factory=dict)  # seconds: load, render, encode, adapter, prefill, decode, total

    def as_dict(self) -> dict:
        return asdict(self)


def read_ask_document(document: str, render: RenderSection, stdin: Callable[[], bytes] | None = None) -> AskDocument:
    """DOC as ask takes it: a text, markdown or PDF file, a render run directory, or ``-``."""
    path = Path(document)
    if document != "-" and path.is_dir():
        records = read_records(path / "layout.jsonl")
        if not records:
            raise InputError(
                f"{path} is a directory without pages (no layout.jsonl); pass a .txt, .md or .pdf file, "
                "a directory `optical render` wrote, or - for stdin"
            )
        text = "\n".join(line for record in records for line in record.get("lines", []))
        return AskDocument(str(path), text, page_files=[path / record["image"] for record in records])
    (found,) = read_documents([document], render.encoding, render.errors, stdin=stdin)
    if render.source == "pdf-pages" and found.is_pdf:
        return AskDocument(found.source, found.text, pdf=found.pdf_path)
    if not found.has_text:
        raise InputError(
            f"{found.source} has no text to read"
            + (
                " (a PDF without a text layer: set render.source=pdf-pages to read its own pages)"
                if found.is_pdf
                else ""
            )
        )
    return AskDocument(found.source, found.text)


def document_pages(document: AskDocument, renderer: PageRenderer, max_pages: int, mode: str) -> tuple[list, int]:
    """The pages to read (middle truncation to ``max_pages``) and the page count before cutting."""
    if document.page_files is not None:
        kept, _ = middle_truncate(document.page_files, max_pages)
        return [_open_page(path) for path in kept], len(document.page_files)
    if document.pdf is not None:
        count = pdf_page_count(document.pdf)
        kept = set(middle_truncate(range(count), max_pages)[0])
        pages = [image for index, image in enumerate(rasterize_pdf(document.pdf, page_size(mode))) if index in kept]
        return pages, count
    return draw_pages(renderer, document.text, max_pages)


def _open_page(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable page image ({exc})") from None


def ask(
    cfg,
    document: str,
    question: str,
    *,
    server: str | None = None,
    stream: Stream = None,
    stdin: Callable[[], bytes] | None = None,
    reader=None,
) -> Answer:
    """Answer ``question`` about ``document`` with ``cfg`` (a ServeConfig): through ``server``
    (or ``ask.server``) when given, else in this process on ``ask.engine`` (``reader``: one
    already built from the same config, to ask several questions with one load). ``stream`` gets
    the answer's text as it is decoded."""
    if not question.strip():
        raise InputError("the question is empty; ask something about the document")
    doc = read_ask_document(document, cfg.render, stdin)  # a bad document fails before any model loads
    server = server or cfg.ask.server
    if server:
        return _ask_server(cfg, doc, question, server, stream)
    return _ask_locally(cfg, doc, question, stream, reader)


def local_reader(cfg):
    """The reader ``ask`` uses in this process: ``ask.engine`` on the config's optical chain."""
    return build_reader(ChainSpec.from_config(cfg, "serve", engine=cfg.ask.engine), ["optical"])


def _ask_locally(cfg, doc: AskDocument, question: str, stream: Stream, reader=None) -> Answer:
    spec = ChainSpec.from_config(cfg, "serve", engine=cfg.ask.engine)
    start = time.perf_counter()
    reader = reader or local_reader(cfg)
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    pages, total = document_pages(doc, reader.renderer, spec.max_pages, spec.deepencoder.mode)
    render_s = time.perf_counter() - start
    generation = reader.read_pages(
        question_prompt(question),
        pages,
        max_new_tokens=cfg.ask.max_new_tokens,
        temperature=cfg.ask.temperature,
        seed=cfg.runtime.seed,
        stream=stream,
    )
    timings = {
        "load_s": load_s,
        "render_s": render_s,
        "encode_s": generation.encode_s,
        "adapter_s": generation.adapter_s,
        "prefill_s": generation.prefill_s,
        "decode_s": generation.decode_s,
    }
    timings["total_s"] = sum(value for key, value in timings.items() if key != "load_s")
    return Answer(
        answer=generation.text,
        question=question,
        document=doc.source,
        pages=len(pages),
        document_pages=total,
        vision_tokens=reader.vision_tokens(pages),
        document_tokens=len(reader.encode_text(doc.text)),
        input_tokens=generation.input_tokens,
        engine=spec.engine,
        model=reader.description,
        random_weights=reader.random_weights,
        timings=_rounded(timings),
    )


def _ask_server(cfg, doc: AskDocument, question: str, url: str, stream: Stream) -> Answer:
    spec = ChainSpec.from_config(cfg, "serve", engine="vllm")
    client = OpenAIServer(url, timeout_s=cfg.ask.timeout_s)
    model = _served_model(client, cfg.serve.served_model_name)  # is anything there? before rendering
    tokenizer = load_chat_tokenizer(spec.tokenizer_source())
    start = time.perf_counter()
    renderer = PageRenderer(spec.render.model_copy(update={"mode": spec.deepencoder.mode}))
    pages, total = document_pages(doc, renderer, spec.max_pages, spec.deepencoder.mode)
    messages = page_messages([png_bytes(page) for page in pages], question)
    render_s = time.perf_counter() - start
    prompt = question_prompt(question)
    tokens = page_tokens(spec.deepencoder.mode, spec.deepencoder.layout_tokens)
    expected = build_layout(tokenizer, prompt.question, [tokens] * len(pages), preamble=prompt.preamble)
    served = client.tokenize(model, messages)
    if served != expected.input_ids.tolist():
        raise InputError(_mismatch(url, served, expected.input_ids.tolist(), tokenizer.token_id(IMAGE_PAD), tokens))
    reply = client.chat(
        model,
        messages,
        max_tokens=cfg.ask.max_new_tokens,
        temperature=cfg.ask.temperature,
        seed=cfg.runtime.seed if cfg.ask.temperature > 0 else None,
        on_text=stream,
    )
    timings = {
        "render_s": render_s,
        "prefill_s": reply.first_token_s,  # upload, queueing, page encoding and prefill, as the client sees them
        "decode_s": reply.total_s - reply.first_token_s,
    }
    timings["total_s"] = sum(timings.values())
    return Answer(
        answer=reply.text,
        question=question,
        document=doc.source,
        pages=len(pages),
        document_pages=total,
        vision_tokens=tokens * len(pages),
        document_tokens=len(tokenizer.encode(doc.text)),
        input_tokens=reply.prompt_tokens if reply.prompt_tokens is not None else expected.length,
        engine="server",
        model=f"{model} at {client.root}",
        random_weights=spec.random_weights,
        timings=_rounded(timings),
    )


def _served_model(client: OpenAIServer, name: str) -> str:
    """The model to ask: ``NAME-lora`` when the server serves the LoRA trained beside the adapter
    (pages are read with it, as the local engines read them), else ``NAME``."""
    served = [entry.get("id") for entry in client.models()]
    for wanted in (served_lora_name(name), name):
        if wanted in served:
            return wanted
    raise InputError(
        f"{client.root} serves {', '.join(map(str, served)) or 'no model'}, not {name!r}; start it with "
        f"`optical serve -c CONFIG`, or set serve.served_model_name to the name it serves"
    )


def _mismatch(url: str, served: list[int], expected: list[int], pad: int, tokens: int) -> str:
    served_pads, expected_pads = served.count(pad), expected.count(pad)
    if served_pads != expected_pads:
        return (
            f"the server at {url} reads these pages as {served_pads} vision tokens where this config reads "
            f"{expected_pads} ({tokens} a page): it is not the optical model of this config (deepencoder.mode, "
            "layout tokens); start it with `optical serve -c CONFIG` using the same config"
        )
    return (
        f"the server at {url} builds another prompt than this config's ({len(served)} tokens where "
        f"{len(expected)} were expected): its chat template is not the optical model's, or the question holds "
        "a control token such as <|im_end|>; serve a directory `optical export-model` wrote"
    )


def _rounded(timings: dict) -> dict:
    return {key: round(value, 4) for key, value in timings.items()}
