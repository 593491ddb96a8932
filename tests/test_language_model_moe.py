"""Qwen3-VL-MoE's language model without its vision tower: transformers' logits, the checkpoint layout."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from optical_cli.config.sections import RandomQwen3VLSection
from optical_cli.models import loading
from optical_cli.models.language_model import Qwen3VLMoeLanguageModel, build_meta_qwen3_vl, load_qwen3_vl

# 2 x moe_intermediate (48) differs from hidden (64), so a transposed expert tensor cannot pass for the right one
TINY_MOE = RandomQwen3VLSection(
    num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24, tie_word_embeddings=False
).dims()


@pytest.fixture(scope="module")
def ours():
    return load_qwen3_vl("random", torch.device("cpu"), torch.float32, TINY_MOE, seed=3)


@pytest.fixture(scope="module")
def reference(ours):
    """transformers' own Qwen3VLMoeForConditionalGeneration (a tiny vision tower) with our weights."""
    from transformers import Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration

    config = Qwen3VLMoeConfig(
        text_config=ours.config.text_config.to_dict(),
        tie_word_embeddings=False,
        vision_config=dict(
            depth=1,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            deepstack_visual_indexes=[],
            out_hidden_size=64,
            num_position_embeddings=16,
        ),
    )
    torch.manual_seed(0)
    model = Qwen3VLMoeForConditionalGeneration(config).eval()
    missing, unexpected = model.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and missing and all(name.startswith("model.visual.") for name in missing)
    return model


def test_the_moe_model_is_built_with_experts_and_routers_under_the_checkpoint_names(ours):
    assert isinstance(ours, Qwen3VLMoeLanguageModel)
    names = dict(ours.named_parameters())
    assert names["model.language_model.layers.1.mlp.experts.gate_up_proj"].shape == (4, 48, 64)
    assert names["model.language_model.layers.1.mlp.experts.down_proj"].shape == (4, 64, 24)
    assert names["model.language_model.layers.0.mlp.gate.weight"].shape == (4, 64)
    assert not any(name.startswith("model.visual.") for name in names)
    assert ours.lm_head.weight is not ours.get_input_embeddings().weight  # untied, as the MoE checkpoints are


def test_moe_language_model_gives_the_full_models_logits(ours, reference):
    torch.manual_seed(1)
    embeds = torch.randn(2, 12, 64)
    positions = torch.arange(12).expand(4, 2, 12).clone()
    positions[1:, :, 3:7] = torch.tensor([3, 3, 4, 4])  # a vision block's t/h/w rows differ from the text row
    with torch.no_grad():
        got = ours(inputs_embeds=embeds, position_ids=positions).logits
        want = reference(inputs_embeds=embeds, position_ids=positions).logits
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert got.abs().max() > 0.01
    with torch.no_grad():  # every expert is reached by some token, so the routing really ran
        gate = ours.model.language_model.layers[0].mlp.gate
        assert set(gate(embeds.reshape(-1, 64))[2].flatten().tolist()) == {0, 1, 2, 3}


def test_a_real_layout_moe_checkpoint_loads_skipping_its_vision_tower(tmp_path, ours, reference):
    """The published checkpoints store each layer's experts fused as [experts, hidden, 2 x moe_intermediate]
    and [experts, moe_intermediate, hidden] (transformers transposes them on load): write that by hand."""
    state = {name: tensor.clone() for name, tensor in reference.state_dict().items()}
    for name in list(state):
        if name.endswith(("mlp.experts.gate_up_proj", "mlp.experts.down_proj")):
            state[name] = state[name].transpose(1, 2).contiguous()
    assert state["model.language_model.layers.0.mlp.experts.gate_up_proj"].shape == (4, 64, 48)
    assert any(name.startswith("model.visual.") for name in state)
    directory = tmp_path / "qwen3-vl-moe-tiny"
    directory.mkdir()
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(reference.config.to_dict()))

    loaded = load_qwen3_vl(str(directory), torch.device("cpu"), torch.float32)
    assert isinstance(loaded, Qwen3VLMoeLanguageModel)
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training
    assert loaded.state_dict().keys() == ours.state_dict().keys()
    for (name, a), (_, b) in zip(ours.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name

    # transformers 5 saves the experts in its module layout [experts, 2 x moe_intermediate, hidden];
    # such a checkpoint loads too (the transpose applies only where the shapes ask for it)
    reference.save_pretrained(tmp_path / "saved")
    saved = load_file(str(tmp_path / "saved" / "model.safetensors"))
    assert saved["model.language_model.layers.0.mlp.experts.gate_up_proj"].shape == (4, 48, 64)
    again = load_qwen3_vl(str(tmp_path / "saved"), torch.device("cpu"), torch.float32)
    for (name, a), (_, b) in zip(ours.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_non_qwen3_vl_directory_is_refused_by_its_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(loading.ModelNotFoundError, match="model_type 'llama'.*qwen3_vl or qwen3_vl_moe"):
        load_qwen3_vl(str(tmp_path), torch.device("cpu"), torch.float32)


def test_train_adapter_runs_on_a_moe_language_model_with_lora(tmp_path):
    """The whole chain on the tiny MoE model: adapter width follows its hidden size, LoRA on its attention."""
    from typer.testing import CliRunner

    from optical_cli.cli import app

    config = Path(__file__).resolve().parent.parent / "configs" / "tiny" / "train-adapter.yaml"
    result = CliRunner().invoke(
        app,
        [
            "train-adapter",
            "-c",
            str(config),
            "-o",
            str(tmp_path / "run"),
            "--json",
            "--set",
            "vlm.random.num_experts=4",
            "--set",
            "vlm.random.num_experts_per_tok=2",
            "--set",
            "vlm.random.moe_intermediate_size=32",
            "--set",
            "train.max_steps=2",
            "--set",
            "train.lora.rank=2",
            "--set",
            f"data.cache_dir={tmp_path / 'cache'}",
            "--set",
            "data.max_documents=12",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    moe = RandomQwen3VLSection(
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        initializer_range=0.1,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        mrope_section=[6, 5, 5],
    )
    assert summary["parameters"]["language_model"] == sum(
        p.numel() for p in build_meta_qwen3_vl(moe.dims()).parameters()
    )
    assert summary["parameters"]["lora"] > 0 and summary["steps"] == 2
    assert (tmp_path / "run" / "lora" / "adapter_config.json").is_file()
