"""--dry-run: the memory plan from a meta-device build (no weights read), against the published dims."""

import json
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from optical_cli.cli import app
from optical_cli.config.sections import RandomQwen3VLSection
from optical_cli.models.language_model import build_meta_qwen3_vl, build_random_qwen3_vl, qwen3_vl_config
from optical_cli.plan import _SavedBytes, training_activations

REPO = Path(__file__).resolve().parent.parent
FULLSIZE = REPO / "configs" / "fullsize"
TINY_TRAIN = REPO / "configs" / "tiny" / "train-adapter.yaml"
TINY_BENCH = REPO / "configs" / "tiny" / "longbench.yaml"


def dry_run(*args):
    result = CliRunner().invoke(app, [*args, "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def text_count(
    hidden, intermediate, layers, heads, kv_heads, tied, experts=0, moe_intermediate=0, vocab=151_936, head_dim=128
):
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + 2 * head_dim
    mlp = experts * (3 * hidden * moe_intermediate + hidden) if experts else 3 * hidden * intermediate
    return vocab * hidden * (1 if tied else 2) + layers * (attention + mlp + 2 * hidden) + hidden


def test_8b_dry_run_counts_the_published_dims_without_weights(tmp_path):
    started = time.perf_counter()
    plan = dry_run(
        "train-adapter",
        "-c",
        str(FULLSIZE / "train-adapter.yaml"),
        "--set",
        "vlm.random.model=qwen3-vl-8b",
        "-o",
        str(tmp_path / "run"),
        "--device-memory",
        "80",
        "--devices",
        "8",
    )
    assert time.perf_counter() - started < 60
    want = text_count(4096, 12288, 36, 32, 8, tied=False)
    assert abs(plan["parameters"]["language_model"] - want) / want < 0.005
    assert plan["parameters"]["adapter"] == 1280 * 3072 + 3072 + 3072 * 4096 + 4096 + 2 * 4096 + 200 * 4096
    assert plan["peak_gib"]["single"] > plan["weight_bytes"]["total"] / 2**30 > 0
    assert plan["peak_gib"]["fsdp"] < plan["peak_gib"]["single"] < plan["peak_gib"]["ddp"]
    assert set(plan["verdict"]) == {"single", "ddp", "fsdp", "tensor_parallel"}
    assert not (tmp_path / "run").exists()  # a plan writes nothing


def test_30b_a3b_dry_run_counts_every_expert():
    plan = dry_run(
        "train-adapter",
        "-c",
        str(FULLSIZE / "train-adapter.yaml"),
        "--set",
        "vlm.random.model=qwen3-vl-30b-a3b",
        "--set",
        "runtime.dtype=bfloat16",
    )
    want = text_count(2048, 6144, 48, 32, 4, tied=False, experts=128, moe_intermediate=768)
    assert abs(plan["parameters"]["language_model"] - want) / want < 0.005
    assert plan["model_class"] == "Qwen3VLMoeLanguageModel" and plan["dtype"] == "bfloat16"
    assert plan["weight_bytes"]["language_model"] == 2 * plan["parameters"]["language_model"]
    assert plan["kv_cache"]["bytes_per_token"] == 2 * 48 * 4 * 128 * 2


def test_verdict_follows_the_device_memory_budget():
    small = dry_run("train-adapter", "-c", str(TINY_TRAIN), "--device-memory", "0.001")
    large = dry_run("train-adapter", "-c", str(TINY_TRAIN), "--device-memory", "1000")
    assert small["verdict"]["single"] == "does not fit" and large["verdict"]["single"] == "fits"
    assert small["verdict"]["tensor_parallel"] is None  # training has no tensor-parallel layout


def test_activations_scale_with_batch_and_tokens_and_checkpointing_cuts_them():
    model = build_meta_qwen3_vl(RandomQwen3VLSection(num_hidden_layers=4).dims())
    one = training_activations(model, 1, 64, 16, False)
    two = training_activations(model, 2, 64, 16, False)
    longer = training_activations(model, 1, 128, 16, False)
    assert two["layers_bytes"] == 2 * one["layers_bytes"]
    assert longer["layers_bytes"] > 1.9 * one["layers_bytes"]
    checkpointed = training_activations(model, 1, 64, 16, True)
    assert checkpointed["layers_bytes"] < one["layers_bytes"] / 2


@pytest.mark.parametrize("experts", [0, 4])
def test_meta_count_equals_what_a_real_layer_saves(experts):
    """The bytes counted on meta tensors equal those a real CPU forward of the same layer saves
    (the MoE one too, whose meta stand-in routes each token through top_k experts)."""
    dims = RandomQwen3VLSection(
        num_hidden_layers=1, num_experts=experts, num_experts_per_tok=2, moe_intermediate_size=24
    ).dims()
    real = build_random_qwen3_vl(dims)
    real.requires_grad_(False)
    layer = real.model.language_model.layers[0]
    tokens = 40
    x = torch.randn(2, tokens, 64, requires_grad=True)
    positions = torch.arange(tokens).expand(3, 2, tokens)
    counter = _SavedBytes(real)
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
        layer(
            x,
            attention_mask=None,
            position_ids=positions,
            position_embeddings=real.model.language_model.rotary_emb(x, positions),
        )
    counted = training_activations(build_meta_qwen3_vl(dims), 2, tokens, 1, False)["layers_bytes"]
    assert counter.total > 0
    assert abs(counted - counter.total) / counter.total < 0.1, (counted, counter.total)


def test_a_model_directory_is_planned_from_its_config_json_alone(tmp_path):
    """Only config.json is there (no weights at all): the plan still builds, so it reads none."""
    config = qwen3_vl_config(RandomQwen3VLSection(num_experts=4, num_experts_per_tok=2).dims())
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    plan = dry_run("bench", "longbench", "-c", str(TINY_BENCH), "--set", f"vlm.source={tmp_path}")
    assert plan["model_class"] == "Qwen3VLMoeLanguageModel"
    assert plan["parameters"]["language_model"] == sum(
        p.numel()
        for p in build_meta_qwen3_vl(RandomQwen3VLSection(num_experts=4, num_experts_per_tok=2).dims()).parameters()
    )


def test_longbench_plan_has_the_kv_cache_at_the_longest_context():
    plan = dry_run(
        "bench",
        "longbench",
        "-c",
        str(FULLSIZE / "longbench.yaml"),
        "--set",
        "vlm.random.model=qwen3-vl-8b",
        "--conditions",
        "native",
        "--set",
        "bench.max_context_tokens=32768",
        "--devices",
        "4",
        "--set",
        "runtime.dtype=bfloat16",
    )
    per_token = 2 * 36 * 8 * 128 * 2
    assert plan["kv_cache"]["bytes_per_token"] == per_token
    assert plan["kv_cache"]["longest_context_tokens"] > 32768
    assert plan["kv_cache"]["bytes_at_longest"] == per_token * plan["kv_cache"]["longest_context_tokens"]
    assert plan["parameters"]["deepencoder"] == 0  # native alone loads no encoder
    assert plan["peak_gib"]["tensor_parallel"] < plan["peak_gib"]["single"]
    assert plan["peak_gib"]["fsdp"] is None
