"""The full-size configs build the published architectures: counted on the meta device (no memory).

Published counts: DeepEncoder 401,369,600 (specs/deepencoder.md); the adapter 1280 -> 3072 -> 2048
+ LayerNorm + 200 page embeddings 10,642,432; Qwen3-VL-2B-Instruct's language model 1,720,574,976
(the same text architecture as Qwen3-1.7B, whose published count this is: KerasHub preset
``qwen3_1.7b_en`` and llama.cpp's ``n_params``; 1.721B "LM parameters, calculated from the
tensors stored in the upstream checkpoint" of Qwen3-VL-2B-Instruct on the OpenExplorer model card).
"""

from pathlib import Path

import pytest
import torch

from optical_cli.config.registry import load_config
from optical_cli.models.adapter import AdapterConfig, OpticalAdapter, parameter_count
from optical_cli.models.deepencoder import DeepEncoder, DeepEncoderConfig, count_parameters
from optical_cli.models.language_model import Qwen3VLLanguageModel, build_meta_qwen3_vl, qwen3_vl_config

FULLSIZE = Path(__file__).resolve().parent.parent / "configs" / "fullsize"
CONFIGS = [("train-adapter", FULLSIZE / "train-adapter.yaml"), ("longbench", FULLSIZE / "longbench.yaml")]

QWEN3_VL_2B_LANGUAGE_MODEL = 1_720_574_976
QWEN3_VL_2B_EMBEDDINGS = 151_936 * 2048  # tied: the LM head shares them


def on_meta(build):
    with torch.device("meta"):
        return build()


@pytest.mark.parametrize("command,path", CONFIGS, ids=lambda v: getattr(v, "name", v))
def test_fullsize_config_builds_the_published_architectures(command, path):
    cfg = load_config(command, path)
    assert cfg.vlm.source == "random" and cfg.deepencoder.weights == "random"  # offline, whatever the hub holds
    language_model = on_meta(lambda: Qwen3VLLanguageModel(qwen3_vl_config(cfg.vlm.random.dims())))
    assert parameter_count(language_model) == QWEN3_VL_2B_LANGUAGE_MODEL
    assert language_model.lm_head.weight is language_model.get_input_embeddings().weight
    assert language_model.get_input_embeddings().weight.numel() == QWEN3_VL_2B_EMBEDDINGS
    assert not any(name.startswith("model.visual.") for name in language_model.state_dict())
    text = language_model.config.text_config
    assert text.rope_parameters["mrope_section"] == [24, 20, 20] and text.rope_parameters["mrope_interleaved"]
    assert text.rope_parameters["rope_theta"] == 5_000_000.0

    encoder_cfg = DeepEncoderConfig.named(cfg.deepencoder.architecture)
    assert count_parameters(on_meta(lambda: DeepEncoder(encoder_cfg))) == 401_369_600

    max_pages = cfg.adapter.max_pages if command == "train-adapter" else cfg.bench.max_pages
    hidden_dim = cfg.adapter.hidden_dim if command == "train-adapter" else AdapterConfig().hidden_dim
    adapter = on_meta(
        lambda: OpticalAdapter(AdapterConfig(encoder_cfg.out_dim, hidden_dim, text.hidden_size, max_pages))
    )
    assert parameter_count(adapter) == 10_642_432
    assert adapter.config.llm_dim == text.hidden_size == 2048  # the adapter writes the LM's embedding width


def test_both_fullsize_configs_describe_the_same_models():
    train, bench = (load_config(command, path) for command, path in CONFIGS)
    assert train.vlm == bench.vlm and train.deepencoder == bench.deepencoder
    assert train.render.font_size == bench.render.font_size


# The Qwen3-VL family at its published text dims (models/qwen3_vl_family.py names each config.json): the
# count follows from the dims alone, written out here independently of the model code and of that table.
FAMILY = {
    # vlm.random.model: (hidden, intermediate, layers, heads, kv heads, tied, experts, moe intermediate)
    "qwen3-vl-4b": (2560, 9728, 36, 32, 8, True, 0, 0),
    "qwen3-vl-8b": (4096, 12288, 36, 32, 8, False, 0, 0),
    "qwen3-vl-32b": (5120, 25600, 64, 64, 8, False, 0, 0),
    "qwen3-vl-30b-a3b": (2048, 6144, 48, 32, 4, False, 128, 768),
}


def published_count(
    hidden, intermediate, layers, heads, kv_heads, tied, experts, moe_intermediate, vocab=151_936, head_dim=128
):
    attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2 + 2 * head_dim  # q, o, k, v, q/k norms
    mlp = experts * (3 * hidden * moe_intermediate + hidden) if experts else 3 * hidden * intermediate  # + router
    per_layer = attention + mlp + 2 * hidden
    return vocab * hidden * (1 if tied else 2) + layers * per_layer + hidden


def test_the_2b_formula_gives_the_published_count():
    assert published_count(2048, 6144, 28, 16, 8, True, 0, 0) == QWEN3_VL_2B_LANGUAGE_MODEL


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_each_named_member_of_the_family_builds_its_published_language_model(name):
    named = [f"vlm.random.model={name}"]
    train = load_config("train-adapter", FULLSIZE / "train-adapter.yaml", named)
    bench = load_config("longbench", FULLSIZE / "longbench.yaml", named)
    assert train.vlm == bench.vlm and train.deepencoder == bench.deepencoder and train.vlm.source == "random"
    model = build_meta_qwen3_vl(train.vlm.random.dims())
    dims = FAMILY[name]
    assert parameter_count(model) == published_count(*dims)
    assert (model.lm_head.weight is model.get_input_embeddings().weight) == dims[5]
    assert type(model).__name__ == ("Qwen3VLMoeLanguageModel" if dims[6] else "Qwen3VLLanguageModel")
    hidden = model.config.text_config.hidden_size
    adapter = on_meta(
        lambda: OpticalAdapter(AdapterConfig(1280, train.adapter.hidden_dim, hidden, train.adapter.max_pages))
    )
    assert adapter.config.llm_dim == hidden == dims[0]  # the adapter writes the model's embedding width


def test_published_totals_are_the_advertised_sizes():
    """Sanity on the dims: the language models alone come to about the advertised sizes (the
    vision towers, 0.4-0.6B, are not built)."""
    billions = {name.removeprefix("qwen3-vl-"): published_count(*dims) / 1e9 for name, dims in FAMILY.items()}
    assert 3.9 < billions["4b"] < 4.5 and 7.5 < billions["8b"] < 8.5
    assert 32 < billions["32b"] < 34 and 30 < billions["30b-a3b"] < 31


def test_a_named_model_takes_overrides_of_only_what_differs():
    cfg = load_config("train-adapter", FULLSIZE / "train-adapter.yaml", ["vlm.random.num_hidden_layers=4"])
    dims = cfg.vlm.random.dims()
    assert cfg.vlm.random.model == "qwen3-vl-2b" and dims["num_hidden_layers"] == 4
    assert dims["hidden_size"] == 2048 and dims["head_dim"] == 128 and dims["tie_word_embeddings"]
