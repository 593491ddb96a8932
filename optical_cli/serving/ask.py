"""``optical ask DOC QUESTION``: one question about one document, read as pages; ``optical ask
--library LIB QUESTION``: one question about a library of documents.

The document (a ``.txt``/``.md``/``.pdf`` file, a directory ``optical render`` wrote, or ``-``
for stdin; ``paged.py`` reads it) is laid out with the config's settings at the encoder's page
size. What is read (``plan_reading``):

- every page, when the document fits ``serve.max_pages`` (and ``--budget``'s vision tokens);
- otherwise the pages ``ask.select`` chooses (``select.py``): ``retrieve`` ranks every page against
  the question with the index's embedder and search and reads the best in reading order, keeping
  their places as the adapter's page positions allow; ``middle`` keeps the first and last half, as
  ``bench longbench``'s optical condition reads (same prompt: ``bench.prompts.question_prompt``).
  A document without a text layer cannot be ranked and is read by its middle, saying so;
- with ``--budget TOKENS`` the rendering (mode and font size) is first chosen per document from the
  render frontier (``budget.py``) so that the whole document fits at the best legibility measured;
  one that fits nowhere is read by selection within the budget;
- ``--library LIB``: the library's best pages for the question (``library.py``), each cited
  ``DOCUMENT:PAGE``.

Then either an engine in this process reads the pages (``ask.engine``, through
:func:`optical_cli.engines.factory.build_reader`; page features come from the page-feature cache
when they were encoded before: a second question encodes no page), or an OpenAI-compatible server
running the optical model does (``--server URL``): the same selection, made here; the pages go as
PNG data URLs beside the question and the answer streams back. Before anything is read, the
server's own rendering of the request (vLLM's ``/tokenize``) must equal, token for token, the
prompt this config would read locally; a server that is not the optical model, or reads pages in
another mode, fails with a clear error instead of a wrong answer.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

from PIL import Image

from ..config.registry import load_config
from ..engines.chain import ChainSpec
from ..engines.factory import build_reader
from ..engines.reader import PlacingReader, Stream
from ..engines.tower import page_tokens
from ..errors import InputError
from ..index.config import IndexConfig
from ..models.loop_guard import NoRepeatNGram
from ..models.tokenizers import load_chat_tokenizer
from ..models.vlm import IMAGE_PAD, build_layout
from ..modes import MODES
from ..progress import Progress
from ..prompts import question_prompt
from ..render.pages import png_bytes
from .budget import Rendering, choose_mode, choose_rendering
from .client import OpenAIServer, page_messages
from .library import open_pages, search_library
from .paged import AskDocument, PagedDocument, paginate, read_ask_document
from .select import PageRead, page_positions, page_slots, select_pages
from .server import api_key, served_lora_name


@dataclass
class Answer:
    answer: str
    question: str
    document: str  # the document, or the library
    pages: int  # pages read
    document_pages: int  # pages the document (or the library) has
    vision_tokens: int
    document_tokens: Optional[int]  # the document's text tokens (None for a library)
    input_tokens: int
    engine: str  # hf, vllm or server
    model: str
    random_weights: bool
    timings: dict = field(default_factory=dict)  # seconds (load, render, encode, ...) and pages encoded / cached
    select: str = "all"  # all | middle | retrieve | library: how the pages read were chosen
    pages_read: list = field(default_factory=list)  # each page read: citation, page, rank, score, passage, position
    citations: list = field(default_factory=list)  # DOCUMENT:PAGE of each page read, in reading order
    rendering: Optional[dict] = None  # the mode and font size read in, and what --budget chose
    notes: list = field(default_factory=list)  # what the reading had to decide (fallbacks, limits)
    finish_reason: str = ""  # stop, length, or repetition: the loop guard cut an answer that repeated itself

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class ReadingPlan:
    """What one question reads: the pages, which and why, and how they were drawn."""

    pages: list[Image.Image]
    reads: list[PageRead]
    source: str
    document_pages: int
    text: Optional[str]  # the document's text (its tokens are document_tokens); None for a library
    select: str
    mode: str
    font_size: Optional[int]
    positions: Optional[list[int]]  # the adapter's page positions (None: 0..P-1, the reading order)
    rendering: Optional[Rendering] = None
    notes: list[str] = field(default_factory=list)
    select_s: float = 0.0  # ranking the pages (embedding passages, searching)

    def rendering_record(self) -> dict:
        chosen = self.rendering.as_dict() if self.rendering else {}
        return {"mode": self.mode, "font_size": self.font_size, **({"budget": chosen} if chosen else {})}


def ask(
    cfg,
    document: Optional[str],
    question: str,
    *,
    server: str | None = None,
    stream: Stream = None,
    stdin: Callable[[], bytes] | None = None,
    reader=None,
    progress: Progress | None = None,
) -> Answer:
    """Answer ``question`` about ``document`` (or the library ``ask.library``) with ``cfg`` (a
    ServeConfig): through ``server`` (or ``ask.server``) when given, else in this process on
    ``ask.engine`` (``reader``: one already built from the same config, to ask several questions
    with one load). ``stream`` gets the answer's text as it is decoded; ``progress`` the passages
    embedded for retrieval."""
    if not question.strip():
        raise InputError("the question is empty; ask something about the document")
    if cfg.ask.library and document:
        raise InputError("give either a document or --library LIB, not both")
    if not cfg.ask.library and not document:
        raise InputError("nothing to read: give a document (DOC QUESTION) or --library LIB")
    doc = None if cfg.ask.library else read_ask_document(document, cfg.render, stdin)  # fails before any model loads
    server = server or cfg.ask.server
    if server:
        return _ask_server(cfg, doc, question, server, stream, progress)
    return _ask_locally(cfg, doc, question, stream, reader, progress)


def local_spec(cfg) -> ChainSpec:
    """The chain ``ask`` reads with in this process: ``ask.engine``, ``ask.loop_guard``."""
    return ChainSpec.from_config(cfg, "serve", engine=cfg.ask.engine, loop_guard=cfg.ask.loop_guard)


def local_reader(cfg):
    """The reader ``ask`` uses in this process: ``ask.engine`` on the config's optical chain."""
    return build_reader(local_spec(cfg), ["optical"])


def index_config(cfg) -> IndexConfig:
    """The index config whose embedder and search rank pages (``ask.index_config``; null: the default)."""
    return load_config("index", cfg.ask.index_config)


def plan_reading(
    cfg, doc: Optional[AskDocument], question: str, modes: Sequence[str], progress: Progress | None = None
) -> ReadingPlan:
    """The pages to read for ``question``: the whole document, a selection, or the library's best;
    ``modes``: the DeepEncoder modes the reader can read in (--budget chooses among them)."""
    if doc is None:
        return _plan_library(cfg, question)
    budget, max_pages, layout_tokens = cfg.ask.budget, cfg.serve.max_pages, cfg.deepencoder.layout_tokens
    render = cfg.render.model_copy(update={"mode": cfg.deepencoder.mode})
    paged = paginate(doc, render)
    notes, rendering = list(doc.notes), None
    if budget is not None:
        rendering, render, paged, fit = _fit_budget(cfg, doc, paged, render, modes)
        notes += fit
    slots = page_slots(max_pages, budget, page_tokens(render.mode, layout_tokens))
    started = time.perf_counter()
    selection = select_pages(paged.texts, question, cfg.ask.select, slots, index_config(cfg), paged.source, progress)
    select_s = time.perf_counter() - started
    keep_places = selection.method == "retrieve"
    positions = page_positions(selection.numbers, paged.count, max_pages) if keep_places else None
    reads = []
    for n, number in enumerate(selection.numbers):
        rank, entry = selection.ranks.get(number, (None, None))
        reads.append(
            PageRead(
                paged.source,
                number + 1,
                rank,
                None if entry is None else round(entry.score, 6),
                None if entry is None else entry.passage,
                n if positions is None else positions[n],
                paged.pdf_pages[number] if paged.pdf_pages else None,
            )
        )
    if selection.method in ("middle", "retrieve"):
        notes.append(_selection_note(selection, paged.count, slots))
    font = None if paged.images else render.font_size
    return ReadingPlan(
        paged.draw(selection.numbers),
        reads,
        paged.source,
        paged.count,
        paged.text,
        selection.method,
        render.mode,
        font,
        positions,
        rendering,
        notes + selection.notes,
        select_s,
    )


def _selection_note(selection, count: int, slots: int) -> str:
    how = {"middle": "its first and last pages", "retrieve": f"the pages {selection.search} search ranked best"}
    return f"{count} pages do not fit {slots} page slots: read {how[selection.method]}"


def _fit_budget(cfg, doc: AskDocument, paged: PagedDocument, render, modes: Sequence[str]):
    """--budget: (what was chosen or None, the render section, the paged document in it, notes)."""
    budget, max_pages, layout_tokens = cfg.ask.budget, cfg.serve.max_pages, cfg.deepencoder.layout_tokens
    if paged.images:
        chosen, notes = choose_mode(paged.count, budget, max_pages, modes, layout_tokens), []
    else:
        chosen, notes = choose_rendering(doc.text, render, budget, max_pages, modes, layout_tokens, cfg.ask.frontier)
    if chosen is None:
        notes.append(
            f"no rendering fits the whole document in {budget} vision tokens and {max_pages} pages: selected pages "
            f"are read within the budget, in {render.mode}" + ("" if paged.images else f" at {render.font_size} px")
        )
        return None, render, paged, notes
    update = {"mode": chosen.mode} | ({} if chosen.font_size is None else {"font_size": chosen.font_size})
    render = render.model_copy(update=update)
    return chosen, render, paginate(doc, render), notes


def _plan_library(cfg, question: str) -> ReadingPlan:
    mode, layout_tokens = cfg.deepencoder.mode, cfg.deepencoder.layout_tokens
    slots = page_slots(cfg.serve.max_pages, cfg.ask.budget, page_tokens(mode, layout_tokens))
    started = time.perf_counter()
    found = search_library(cfg.ask.library, question, index_config(cfg), slots)
    select_s = time.perf_counter() - started
    notes = [
        f"{found.library_pages} pages in {found.documents} document{'s' if found.documents != 1 else ''}; read the "
        f"{len(found.reads)} pages "
        f"{found.search} search ranked best, in library order"
    ]
    if found.render.get("mode") != mode:
        notes.append(f"the library's pages are drawn for {found.render.get('mode')} mode; read in {mode}")
    for n, read in enumerate(found.reads):
        read.position = n
    return ReadingPlan(
        open_pages(found.images),
        found.reads,
        str(cfg.ask.library),
        found.library_pages,
        None,
        "library",
        mode,
        found.render.get("font_size"),
        None,
        notes=notes,
        select_s=select_s,
    )


def _ask_locally(cfg, doc: Optional[AskDocument], question: str, stream: Stream, reader=None, progress=None) -> Answer:
    spec = local_spec(cfg)
    start = time.perf_counter()
    reader = reader or local_reader(cfg)
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    placing = isinstance(reader, PlacingReader)
    modes = list(MODES) if placing else [spec.deepencoder.mode]
    plan = plan_reading(cfg, doc, question, modes, progress)
    render_s = time.perf_counter() - start
    options = {} if plan.mode == spec.deepencoder.mode else {"mode": plan.mode}
    if plan.positions is not None and placing:
        options["positions"] = plan.positions
    elif plan.positions is not None:
        _in_request_order(plan, f"the {spec.engine} engine")
    generation = reader.read_pages(
        question_prompt(question),
        plan.pages,
        max_new_tokens=cfg.ask.max_new_tokens,
        temperature=cfg.ask.temperature,
        seed=cfg.runtime.seed,
        stream=stream,
        **options,
    )
    timings = {
        "load_s": load_s,
        "select_s": plan.select_s,
        "render_s": render_s - plan.select_s,
        "encode_s": generation.encode_s,
        "adapter_s": generation.adapter_s,
        "prefill_s": generation.prefill_s,
        "decode_s": generation.decode_s,
    }
    timings["total_s"] = sum(value for key, value in timings.items() if key != "load_s")
    counts = {"pages_encoded": generation.pages_encoded, "pages_cached": generation.pages_cached}
    vision_tokens = reader.vision_tokens(plan.pages, **({"mode": plan.mode} if "mode" in options else {}))
    return _answer(
        plan,
        question,
        generation.text,
        vision_tokens=vision_tokens,
        document_tokens=None if plan.text is None else len(reader.encode_text(plan.text)),
        input_tokens=generation.input_tokens,
        engine=spec.engine,
        model=reader.description,
        random_weights=reader.random_weights,
        timings=_rounded(timings) | counts,
        finish_reason=generation.finish_reason,
    )


def _in_request_order(plan: ReadingPlan, reader: str) -> None:
    """Pages read where positions cannot be given (a server, the vllm engine): 0..P-1, as sent."""
    plan.positions = None
    for n, read in enumerate(plan.reads):
        read.position = n
    plan.notes.append(f"{reader} gives pages the positions of their order in the request (0..{len(plan.reads) - 1})")


def _answer(plan: ReadingPlan, question: str, text: str, **fields) -> Answer:
    return Answer(
        answer=text,
        question=question,
        document=plan.source,
        pages=len(plan.pages),
        document_pages=plan.document_pages,
        select=plan.select,
        pages_read=[read.as_dict() for read in plan.reads],
        citations=[read.citation for read in plan.reads],
        rendering=plan.rendering_record(),
        notes=plan.notes,
        **fields,
    )


def _ask_server(cfg, doc: Optional[AskDocument], question: str, url: str, stream: Stream, progress=None) -> Answer:
    spec = ChainSpec.from_config(cfg, "serve", engine="vllm")
    client = OpenAIServer(url, timeout_s=cfg.ask.timeout_s, api_key=api_key(cfg.serve.api_key_env))
    model = _served_model(client, cfg.serve.served_names)  # is anything there? before rendering
    tokenizer = load_chat_tokenizer(spec.tokenizer_source())
    start = time.perf_counter()
    plan = plan_reading(cfg, doc, question, [spec.deepencoder.mode], progress)  # the server reads one mode
    if plan.positions is not None:
        _in_request_order(plan, f"the server at {url}")
    messages = page_messages([png_bytes(page) for page in plan.pages], question)
    render_s = time.perf_counter() - start
    prompt = question_prompt(question)
    tokens = page_tokens(spec.deepencoder.mode, spec.deepencoder.layout_tokens)
    expected = build_layout(tokenizer, prompt.question, [tokens] * len(plan.pages), preamble=prompt.preamble)
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
        extra={"vllm_xargs": NoRepeatNGram(cfg.ask.loop_guard.ngram, cfg.ask.loop_guard.window).as_xargs()},
    )
    timings = {
        "select_s": plan.select_s,
        "render_s": render_s - plan.select_s,
        "prefill_s": reply.first_token_s,  # upload, queueing, page encoding and prefill, as the client sees them
        "decode_s": reply.total_s - reply.first_token_s,
    }
    timings["total_s"] = sum(timings.values())
    return _answer(
        plan,
        question,
        reply.text,
        vision_tokens=tokens * len(plan.pages),
        document_tokens=None if plan.text is None else len(tokenizer.encode(plan.text)),
        input_tokens=reply.prompt_tokens if reply.prompt_tokens is not None else expected.length,
        engine="server",
        model=f"{model} at {client.root}",
        random_weights=spec.random_weights,
        timings=_rounded(timings),
        finish_reason=reply.finish_reason,
    )


def _served_model(client: OpenAIServer, names: list[str]) -> str:
    """The model to ask: ``NAME-lora`` when the server serves the LoRA trained beside the adapter
    (pages are read with it, as the local engines read them), else the first of ``names`` it serves."""
    served = [entry.get("id") for entry in client.models()]
    for wanted in (served_lora_name(names[0]), *names):
        if wanted in served:
            return wanted
    raise InputError(
        f"{client.root} serves {', '.join(map(str, served)) or 'no model'}, not {names[0]!r}; start it with "
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
