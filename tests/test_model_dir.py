"""The optical model directory (engines/model_dir.py) and its vision tower (engines/tower.py),
without vLLM: what is written, the chat template token for token against models/vlm.build_layout,
the tower against our own encoder and adapter, the cache key, and `optical export-model`."""

import json
import os

import pytest
import torch
from conftest import REPO_ROOT
from hf_checkpoint import engine_model_dir
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

from optical_cli.cli import app
from optical_cli.config.registry import load_config
from optical_cli.engines import ARCHITECTURE
from optical_cli.engines.chain import ChainSpec, fit_adapter
from optical_cli.engines.model_dir import (
    INDEX_FILE,
    PROVENANCE_FILE,
    cached_model_dir,
    model_dir_key,
    read_settings,
    write_model_dir,
)
from optical_cli.engines.tower import OpticalTower, PageSettings, page_view
from optical_cli.models.adapter import AdapterConfig, OpticalAdapter, PublishedAdapter, save_adapter
from optical_cli.models.deepencoder import DeepEncoderConfig
from optical_cli.models.deepencoder.runner import DeepEncoderPages
from optical_cli.models.language_model import build_random_qwen3_vl
from optical_cli.models.tokenizers import QWEN_TIKTOKEN, load_chat_tokenizer
from optical_cli.models.vlm import IMAGE_PAD, build_layout, chat_ids
from optical_cli.prompts import AFTER_DOCUMENT, PREAMBLE
from optical_cli.render.pages import PageRenderer

runner = CliRunner()
TINY = REPO_ROOT / "configs" / "tiny" / "serve.yaml"


def tiny_spec(*sets: str) -> ChainSpec:
    return ChainSpec.from_config(load_config("serve", TINY, list(sets)), "serve", engine="vllm")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_model_dir(tiny_spec(), tmp_path_factory.mktemp("models") / "tiny")


def test_the_directory_holds_the_chain_under_our_architecture(model_dir):
    spec = tiny_spec()
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == [ARCHITECTURE] and config["model_type"] == "qwen3_vl"
    assert config["vision_config"]["depth"] == 0 and config["vision_config"]["deepstack_visual_indexes"] == []
    settings = read_settings(model_dir)
    assert (settings.mode, settings.pixels, settings.tokens_per_page, settings.max_pages) == ("tiny", "official", 64, 8)
    assert settings.adapter == {"vision_dim": 48, "hidden_dim": 3072, "llm_dim": 64, "max_pages": 8}
    # the index names every tensor of every file, and nothing else
    index = json.loads((model_dir / INDEX_FILE).read_text())["weight_map"]
    stored = {}
    for file in set(index.values()):
        with safe_open(str(model_dir / file), framework="pt") as handle:
            stored.update({name: file for name in handle.keys()})
    assert stored == index
    # the weights are the ones the hf engine builds from the same seeds
    lm = load_file(str(model_dir / "language-model.safetensors"))
    for name, value in build_random_qwen3_vl(spec.vlm.random.dims(), seed=0).state_dict().items():
        if name != "lm_head.weight":  # tied: stored once, as the embeddings
            assert torch.equal(lm[name], value), name
    tower = load_file(str(model_dir / "optical.safetensors"))
    encoder = DeepEncoderPages(spec.deepencoder, spec.runtime, torch.device("cpu"))
    encoder.load()
    for name, value in encoder.runner.model.state_dict().items():
        assert torch.equal(tower[f"optical.encoder.{name}"], value), name
    adapter = fit_adapter(spec, None, 48, 64)
    for name, value in adapter.state_dict().items():
        assert torch.equal(tower[f"optical.adapter.{name}"], value), name
    generation = json.loads((model_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [151645, 151643, 151654] and "temperature" not in generation
    assert json.loads((model_dir / PROVENANCE_FILE).read_text())["key"] == model_dir_key(spec)


def page_message(pages: int, question: str) -> list[dict]:
    """A user turn as vLLM hands it to the chat template (its "openai" content format)."""
    return [{"role": "user", "content": [{"type": "image"}] * pages + [{"type": "text", "text": question}]}]


@pytest.mark.parametrize("pages", [1, 3])
def test_the_chat_template_gives_the_optical_layout_token_for_token(model_dir, pages):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(model_dir)
    ours = load_chat_tokenizer(QWEN_TIKTOKEN)
    question = "What happened to the ships in 1887?\nAnswer in one line."
    rendered = hf.apply_chat_template(page_message(pages, question), add_generation_prompt=True, tokenize=False)
    ids = hf.encode(rendered, add_special_tokens=False)
    pad = ours.token_id(IMAGE_PAD)
    expanded = [t for token in ids for t in ([pad] * 64 if token == pad else [token])]  # what the processor does
    layout = build_layout(ours, AFTER_DOCUMENT + question, [64] * pages, preamble=PREAMBLE)
    assert expanded == layout.input_ids.tolist()
    # text before the pages is the instruction, read as it is (bench ruler's instruction, pages, question)
    instruction = "Some special magic numbers are hidden within the following text.\n"
    lead = [
        {
            "role": "user",
            "content": [{"type": "text", "text": instruction}, *page_message(pages, question)[0]["content"]],
        }
    ]
    ids = hf.encode(hf.apply_chat_template(lead, add_generation_prompt=True, tokenize=False), add_special_tokens=False)
    expanded = [t for token in ids for t in ([pad] * 64 if token == pad else [token])]
    assert expanded == build_layout(ours, question, [64] * pages, preamble=instruction).input_ids.tolist()
    # a turn without pages is plain Qwen chat
    plain = [{"role": "user", "content": [{"type": "text", "text": question}]}]
    text = hf.apply_chat_template(plain, add_generation_prompt=True, tokenize=False)
    assert hf.encode(text, add_special_tokens=False) == chat_ids(ours, [question])[0]
    # an empty user message (no pages, no text) is refused, not answered
    for empty in ([], [{"type": "text", "text": "  "}], "", "\n"):
        with pytest.raises(Exception, match="the user message is empty"):
            hf.apply_chat_template([{"role": "user", "content": empty}], add_generation_prompt=True, tokenize=False)


def test_the_tower_gives_what_our_encoder_and_adapter_give(model_dir):
    spec = tiny_spec()
    settings = read_settings(model_dir)
    tower = OpticalTower(settings)
    weights = load_file(str(model_dir / "optical.safetensors"))
    tower.load_weights((name.removeprefix("optical."), value) for name, value in weights.items())
    with torch.no_grad():  # distinct page embeddings, so a page's place matters
        tower.adapter.page_embed.weight.normal_(generator=torch.Generator().manual_seed(1))
    renderer = PageRenderer(spec.render.model_copy(update={"mode": "tiny"}))
    pages = [renderer.draw([f"page {n}: the keeper counted ships", "every evening"]) for n in range(3)]
    encoder = DeepEncoderPages(spec.deepencoder, spec.runtime, torch.device("cpu"))
    with torch.no_grad():
        expected = tower.adapter(encoder.encode(pages))  # bench's hf path: pages 0, 1, 2 of one document
        views = torch.stack([page_view(page, settings) for page in pages])
        got = tower(views, torch.tensor([0, 1, 2]), torch.tensor([True] * 3))
    assert got.shape == (3, 64, 64)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_the_published_tower_adds_page_embeddings_only_to_documents_of_several_pages():
    """Pages of several requests share one tower call: a one-page document gets no page embedding
    (the published adapter's rule), a page of a longer one gets its place's."""
    settings = PageSettings(
        mode="tiny",
        pixels="published",
        layout_tokens=False,
        attention="mask",
        encoder=json.loads(DeepEncoderConfig.tiny().to_json()),
        adapter_layout="published",
        adapter={"vision_dim": 48, "hidden_dim": 32, "llm_dim": 64, "max_pages": 4},
        max_pages=4,
        encode_batch_size=2,
    )
    torch.manual_seed(0)
    tower = OpticalTower(settings)
    with torch.no_grad():
        for parameter in tower.parameters():
            parameter.normal_(0, 0.5)
    assert isinstance(tower.adapter, PublishedAdapter)
    views = torch.rand(3, 3, 512, 512)
    with torch.no_grad():
        together = tower(views, torch.tensor([0, 0, 1]), torch.tensor([False, True, True]))
        features = torch.stack([tower.encoder.arrange(None, (1, 1), f, False) for f in tower.encoder(views)])
        alone = tower.adapter(features[:1])  # a one-page document
        pair = tower.adapter(features[1:])  # pages 0 and 1 of a two-page document
    torch.testing.assert_close(together[:1], alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(together[1:], pair, rtol=1e-5, atol=1e-5)


def test_the_key_follows_the_adapters_contents_and_the_cache_reuses_a_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTICAL_CACHE", str(tmp_path / "cache"))
    adapter = OpticalAdapter(AdapterConfig(vision_dim=48, hidden_dim=16, llm_dim=64, max_pages=8))
    path = save_adapter(adapter, tmp_path / "run" / "adapter.pth")
    spec = tiny_spec(f"serve.adapter={path}")
    first = cached_model_dir(spec)
    stamp = (first / "optical.safetensors").stat().st_mtime_ns
    assert cached_model_dir(spec) == first and (first / "optical.safetensors").stat().st_mtime_ns == stamp
    with torch.no_grad():
        adapter.norm.bias.fill_(0.5)  # retrained in place: the same path, other weights
    save_adapter(adapter, path)
    assert model_dir_key(spec) != first.name.removeprefix("optical-")
    assert model_dir_key(tiny_spec("serve.max_pages=4")) != model_dir_key(tiny_spec())
    assert model_dir_key(tiny_spec("ask.max_new_tokens=3")) == model_dir_key(tiny_spec())  # not the model


def test_a_real_language_model_is_linked_not_copied_and_its_own_template_gives_way(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTICAL_CACHE", str(tmp_path / "cache"))
    spec = tiny_spec()
    source, _ = engine_model_dir("random", QWEN_TIKTOKEN, spec.vlm.random.dims(), seed=0)
    tokenizer_config = json.loads((source / "tokenizer_config.json").read_text())
    tokenizer_config["chat_template"] = "{{ 'not ours' }}"
    (source / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    real = tiny_spec(f"vlm.source={source}", "vlm.tokenizer=auto")
    target = write_model_dir(real, tmp_path / "real")
    link = target / "model.safetensors"
    assert link.is_symlink() and os.path.samefile(link, source / "model.safetensors")
    index = json.loads((target / INDEX_FILE).read_text())["weight_map"]
    assert not any(name.startswith("model.visual.") for name in index)  # Qwen's own vision tower stays out
    assert any(name.startswith("model.language_model.") for name in index)
    from transformers import AutoTokenizer

    template = AutoTokenizer.from_pretrained(target).chat_template
    assert "optical" in template and "not ours" not in template
    copied = write_model_dir(real, tmp_path / "copied", copy_weights=True)
    assert not (copied / "model.safetensors").is_symlink()


def test_export_model_writes_a_directory_once_and_refuses_to_clobber(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    out = tmp_path / "exported"
    result = runner.invoke(app, ["export-model", "-c", str(TINY), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model_dir"] == str(out)
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["temperature"] == 0.0 and generation["max_new_tokens"] == 1024  # requests that set none
    assert (out / "optical-config.yaml").is_file() and (out / "chat_template.jinja").is_file()
    again = runner.invoke(app, ["export-model", "-c", str(TINY), "-o", str(out)])
    assert again.exit_code == 2 and "--overwrite" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    assert runner.invoke(app, ["export-model", "-c", str(TINY), "-o", str(out), "--overwrite"]).exit_code == 0
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    refused = runner.invoke(app, ["export-model", "-c", str(TINY), "-o", str(foreign), "--overwrite"])
    assert refused.exit_code == 2 and (foreign / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported", "foreign"]  # no staging left behind
