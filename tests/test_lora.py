"""LoRA on the frozen language model (peft), trained with the adapter: gradients, saving, exact resume, reading."""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from optical_cli.cli import app
from optical_cli.config.registry import load_config
from optical_cli.errors import InputError
from optical_cli.models.adapter import AdapterConfig, OpticalAdapter
from optical_cli.models.deepencoder.runner import DeepEncoderPages
from optical_cli.models.language_model import build_random_qwen3_vl
from optical_cli.models.lora import add_lora, load_lora, lora_config, lora_disabled, save_lora
from optical_cli.records import read_records
from optical_cli.train.checkpoints import open_checkpoint
from optical_cli.train.corpus import read_corpus
from optical_cli.train.loop import train_adapter
from optical_cli.train.objectives import collate, make_examples, reconstruction_loss
from optical_cli.train.pages import build_page_set
from optical_cli.train.setup import load_reader, training_runtime

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "tiny" / "train-adapter.yaml"
TINY_BENCH = REPO / "configs" / "tiny" / "longbench.yaml"
CVES = REPO / "tests" / "data" / "cves_200.jsonl"
LORA = ["train.lora.rank=4", "train.lora.alpha=8", "train.lora.dropout=0.1"]


def tiny_cfg(cache, *sets):
    base = [
        f"data.source={CVES}",
        f"data.cache_dir={cache}",
        "data.max_documents=10",
        "data.max_text_tokens=16",
        "train.batch_size=2",
        "train.read_pages=0",
        *LORA,
    ]
    return load_config("train-adapter", TINY, base + list(sets))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("features")


def fresh_reader(cache):
    cfg = tiny_cfg(cache)
    return load_reader(cfg, training_runtime(cfg.runtime))  # LoRA changes the model: every test gets its own


def test_only_the_adapter_and_lora_weights_get_gradients(cache):
    cfg = tiny_cfg(cache)
    reader = fresh_reader(cache)
    encoder = DeepEncoderPages(cfg.deepencoder, cfg.runtime, torch.device("cpu"))
    pages, _ = build_page_set(read_corpus(str(CVES), max_documents=2, min_chars=16), cfg, encoder, Path(cache))
    examples = make_examples(reader, pages, 16)
    adapter = OpticalAdapter(
        AdapterConfig(vision_dim=encoder.out_dim, hidden_dim=16, llm_dim=reader.hidden_size, max_pages=4)
    )
    params = add_lora(reader.model, lora_config(4, 8, 0.0, ["q_proj", "v_proj"]))
    assert len(params) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)
    with torch.no_grad():
        for p in params:
            p.add_(0.01 * torch.randn_like(p))  # B starts at zero; nudge it so A's gradient is not zero either
    adapted = adapter(pages.features, torch.tensor(pages.page_index))
    loss = reconstruction_loss(reader.model, adapted, collate(examples, reader.tokenizer.token_id("<|endoftext|>")))
    loss.backward()
    lora_names = {name for name, _ in reader.model.named_parameters() if ".lora_" in name}
    for name, p in reader.model.named_parameters():
        if name in lora_names:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0
        for p in adapter.parameters()
        if p is not adapter.page_embed.weight
    )


def test_resume_with_lora_continues_exactly(tmp_path, cache):
    cfg = tiny_cfg(cache, "train.max_steps=4", "train.checkpoint_every=2", "train.eval_every=100")
    runtime = training_runtime(cfg.runtime)
    train_adapter(cfg, tmp_path / "straight", runtime, fresh_reader(cache))

    def crash_after_step_3(event):
        if event["event"] == "step" and event["step"] == 3:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated"):
        train_adapter(cfg, tmp_path / "resumed", runtime, fresh_reader(cache), progress=crash_after_step_3)
    assert (tmp_path / "resumed" / "checkpoints" / "step-0000002" / "lora" / "adapter_model.safetensors").is_file()
    resume = open_checkpoint(tmp_path / "resumed")
    train_adapter(cfg, tmp_path / "resumed", runtime, fresh_reader(cache), resume=resume)
    from safetensors.torch import load_file

    straight = load_file(str(tmp_path / "straight" / "lora" / "adapter_model.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "lora" / "adapter_model.safetensors"))
    assert straight.keys() == resumed.keys() and any(".lora_B." in k for k in straight)
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    assert any(straight[k].abs().sum() > 0 for k in straight if ".lora_B." in k)  # LoRA did train
    for name, tensor in load_file(str(tmp_path / "straight" / "adapter.safetensors")).items():
        assert torch.equal(tensor, load_file(str(tmp_path / "resumed" / "adapter.safetensors"))[name]), name
    losses = lambda run: [m["loss"] for m in read_records(tmp_path / run / "metrics.jsonl")]
    assert losses("straight") == losses("resumed")


def test_saved_lora_is_a_peft_adapter_directory(tmp_path):
    """PEFT's own loader reads the directory and gives the same logits as ours."""
    from peft import PeftModel

    dims = load_config("train-adapter", TINY).vlm.random.dims()
    model = build_random_qwen3_vl(dims, seed=0)
    config = lora_config(4, 8, 0.0, ["q_proj", "k_proj", "v_proj", "o_proj"])
    params = add_lora(model, config, seed=1)
    with torch.no_grad():
        for p in params:
            p.add_(0.05 * torch.randn_like(p))
    save_lora(model, config, tmp_path / "lora")
    assert json.loads((tmp_path / "lora" / "adapter_config.json").read_text())["r"] == 4

    ours = build_random_qwen3_vl(dims, seed=0)
    load_lora(ours, tmp_path / "lora")
    theirs = PeftModel.from_pretrained(build_random_qwen3_vl(dims, seed=0), str(tmp_path / "lora")).eval()
    base = build_random_qwen3_vl(dims, seed=0)
    embeds = torch.randn(1, 7, dims["hidden_size"])
    positions = torch.arange(7).expand(4, 1, 7)
    with torch.no_grad():
        got = ours.eval()(inputs_embeds=embeds, position_ids=positions).logits
        want = theirs.base_model.model(inputs_embeds=embeds, position_ids=positions).logits
        plain = base.eval()(inputs_embeds=embeds, position_ids=positions).logits
        with lora_disabled(ours):
            off = ours(inputs_embeds=embeds, position_ids=positions).logits
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, plain)
    torch.testing.assert_close(off, plain)  # disabled: the base model, as the native conditions read
    assert not any(p.requires_grad for p in ours.parameters())

    other = build_random_qwen3_vl(dict(dims, hidden_size=32, head_dim=8, mrope_section=[2, 1, 1]), seed=0)
    with pytest.raises(InputError, match="does not fit this language model"):
        load_lora(other, tmp_path / "lora")


def test_unknown_target_module_is_a_clear_error(tmp_path):
    model = build_random_qwen3_vl(load_config("train-adapter", TINY).vlm.random.dims())
    with pytest.raises(InputError, match="qkv_proj name no linear layer.*choose from"):
        add_lora(model, lora_config(4, 8, 0.0, ["qkv_proj"]))


def test_cli_trains_with_lora_resumes_and_bench_reads_with_it(tmp_path):
    runner = CliRunner()
    run = tmp_path / "run"
    args = [
        "train-adapter",
        "-c",
        str(TINY),
        "-o",
        str(run),
        "--json",
        "--set",
        "train.lora.rank=4",
        "--set",
        f"data.cache_dir={tmp_path / 'cache'}",
        "--set",
        "data.max_documents=12",
        "--set",
        "train.max_steps=2",
        "--set",
        "train.checkpoint_every=1",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["parameters"]["lora"] == 2 * (4 * (64 + 128) * 2 + 4 * (64 + 64) * 2)  # q, o: 64<->128; k, v: 64->64
    assert (run / "lora" / "adapter_config.json").is_file() and (run / "adapter.safetensors").is_file()
    assert (run / "reading.jsonl").is_file()  # the reading check ran with the LoRA model

    result = runner.invoke(app, ["train-adapter", "--resume", str(run / "checkpoints" / "step-0000001"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["steps"] == 2

    bench = runner.invoke(
        app,
        [
            "bench",
            "longbench",
            "-c",
            str(TINY_BENCH),
            "-o",
            str(tmp_path / "lb"),
            "--json",
            "--set",
            f"bench.adapter={run}",  # the run directory: its adapter.safetensors and lora/
            "--set",
            "vlm.random.initializer_range=0.1",
            "--num-samples",
            "2",
            "--conditions",
            "native,optical",
        ],
    )
    assert bench.exit_code == 0, bench.output
    report = json.loads(bench.stdout)
    assert report["parameters"]["lora"] == summary["parameters"]["lora"]
    assert report["conditions"]["optical"]["completed"] == 2 and report["conditions"]["native"]["completed"] == 2
