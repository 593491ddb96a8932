"""train-adapter on real CVE text with tiny random models: loss falls, exact resume, clear errors."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from optical_cli.artifacts import start_run
from optical_cli.cli import app
from optical_cli.config.registry import dump_config, load_config
from optical_cli.errors import InputError
from optical_cli.models.adapter import AdapterConfig, OpticalAdapter, save_adapter
from optical_cli.models.deepencoder.runner import DeepEncoderPages
from optical_cli.records import read_records
from optical_cli.render.pages import PageRenderer, non_space
from optical_cli.train.checkpoints import open_checkpoint
from optical_cli.train.corpus import read_corpus
from optical_cli.train.loop import train_adapter
from optical_cli.train.objectives import batch_loss, collate, make_examples, mse_loss, reconstruction_loss
from optical_cli.train.pages import build_page_set, page_render_section, split_documents
from optical_cli.train.reading import character_error_rate
from optical_cli.train.setup import enable_gradient_checkpointing, load_reader, training_mode, training_runtime

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "tiny" / "train-adapter.yaml"
CVES = REPO / "tests" / "data" / "cves_200.jsonl"


def tiny_cfg(cache, *sets):
    base = [
        f"data.source={CVES}",
        f"data.cache_dir={cache}",
        "data.max_documents=10",
        "data.max_text_tokens=16",
        "train.batch_size=2",
        "train.read_pages=0",
    ]
    return load_config("train-adapter", TINY, base + list(sets))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("features")


@pytest.fixture(scope="module")
def runtime(cache):
    return training_runtime(tiny_cfg(cache, "runtime.device=cpu", "runtime.dtype=float32").runtime)


@pytest.fixture(scope="module")
def reader(cache, runtime):
    return load_reader(tiny_cfg(cache, "runtime.device=cpu", "runtime.dtype=float32"), runtime)


def test_tiny_run_on_real_text_loss_falls_and_writes_artifacts(tmp_path, cache):
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        [
            "train-adapter",
            "--config",
            str(TINY),
            "--output-dir",
            str(out),
            "--json",
            "--set",
            f"data.source={CVES}",
            "--set",
            f"data.cache_dir={cache}",
            "--set",
            "data.max_documents=10",
            "--set",
            "data.max_text_tokens=16",
            "--set",
            "train.max_steps=10",
            "--set",
            "train.batch_size=2",
            "--set",
            "train.lr=0.01",
            "--set",
            "train.read_pages=1",
            "--set",
            "train.read_max_new_tokens=8",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["random_weights"] is True and "RANDOM WEIGHTS" in result.stderr  # tiny models: not a result
    for name in ("adapter.safetensors", "adapter.json", "metrics.jsonl", "loss.png", "reading.jsonl", "manifest.json"):
        assert (out / name).is_file(), name
    # no adapter.pth: this layout's trained page embeddings (after the LayerNorm) have no published form
    assert not (out / "adapter.pth").exists()
    metrics = read_records(out / "metrics.jsonl")
    evals = [m["eval_loss"] for m in metrics if m["eval_loss"] is not None]
    assert metrics[0]["step"] == 0 and metrics[-1]["step"] == 10 == summary["steps"]
    assert evals[-1] < evals[0] - 0.05, evals  # held-out pages get easier to read
    assert {"step", "loss", "eval_loss", "lr", "pages_per_s"} <= set(metrics[-1])
    reading = read_records(out / "reading.jsonl")[0]
    assert reading["vision_tokens"] == 64 and reading["cer"] >= 0 and reading["reference"]
    assert summary["reading"]["compression"] == pytest.approx(reading["text_tokens"] / 64)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "ok" and manifest["random_weights"] is True
    # sizes and cost of the run, in the JSON and the manifest
    parameters = summary["parameters"]
    assert (
        parameters["adapter"] == (48 * 96 + 96) + (96 * 64 + 64) + 2 * 64 + 8 * 64
    )  # tiny adapter 48 -> 96 -> 64, 8 pages
    assert parameters["language_model"] > parameters["deepencoder"] > 0
    assert manifest["parameters"] == parameters and manifest["peak_memory_gib"] == summary["peak_memory_gib"]
    assert summary["peak_memory_gib"]["cpu_rss_gib"] > 0.1 and summary["step_s"] > 0
    pages = summary["training_pages"]
    assert pages["text_tokens_per_vision_token"] == pytest.approx(pages["text_tokens_per_page"] / 64, abs=1e-3)
    assert 0 < pages["target_coverage"] <= 1


def test_resume_continues_exactly(tmp_path, cache, runtime, reader):
    cfg = tiny_cfg(cache, "train.max_steps=4", "train.checkpoint_every=2", "train.eval_every=100")
    train_adapter(cfg, tmp_path / "straight", runtime, reader)

    def crash_after_step_3(event):
        if event["event"] == "step" and event["step"] == 3:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated"):
        train_adapter(cfg, tmp_path / "resumed", runtime, reader, progress=crash_after_step_3)
    assert [m["step"] for m in read_records(tmp_path / "resumed" / "metrics.jsonl")][-1] == 3
    train_adapter(cfg, tmp_path / "resumed", runtime, reader, resume=open_checkpoint(tmp_path / "resumed"))
    straight = load_file(str(tmp_path / "straight" / "adapter.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "adapter.safetensors"))
    assert (tmp_path / "resumed" / "checkpoints" / "step-0000004" / "adapter.safetensors").is_file()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    losses = lambda run: [m["loss"] for m in read_records(tmp_path / run / "metrics.jsonl")]
    assert losses("straight") == losses("resumed")


def test_gradients_reach_only_the_adapter(cache, reader):
    cfg = tiny_cfg(cache)
    encoder = DeepEncoderPages(cfg.deepencoder, cfg.runtime, torch.device("cpu"))
    pages, _ = build_page_set(read_corpus(str(CVES), max_documents=2, min_chars=16), cfg, encoder, Path(cache))
    examples = make_examples(reader, pages, 16)
    adapter = OpticalAdapter(
        AdapterConfig(vision_dim=encoder.out_dim, hidden_dim=16, llm_dim=reader.hidden_size, max_pages=4)
    )
    adapted = adapter(pages.features, torch.tensor(pages.page_index))
    pad = reader.tokenizer.token_id("<|endoftext|>")
    loss = reconstruction_loss(reader.model, adapted, collate(examples, pad)) + mse_loss(
        reader.model, adapted, examples
    )
    loss.backward()
    assert all(p.grad is None for p in reader.model.parameters())
    assert all(p.grad is not None for p in adapter.parameters())
    assert adapter.mlp[0].weight.grad.abs().sum() > 0


def test_gradient_checkpointing_recomputes_the_frozen_llm_and_gives_the_same_gradients(cache, reader):
    cfg = tiny_cfg(cache)
    encoder = DeepEncoderPages(cfg.deepencoder, cfg.runtime, torch.device("cpu"))
    pages, _ = build_page_set(read_corpus(str(CVES), max_documents=2, min_chars=16), cfg, encoder, Path(cache))
    examples = make_examples(reader, pages, 16)
    torch.manual_seed(0)
    adapter = OpticalAdapter(
        AdapterConfig(vision_dim=encoder.out_dim, hidden_dim=16, llm_dim=reader.hidden_size, max_pages=4)
    )
    model, pad = reader.model, reader.tokenizer.token_id("<|endoftext|>")
    layers = model.model.language_model.layers

    def gradients(checkpointing: bool):
        calls = []
        # a pre-hook: the recompute stops once it has what backward needs, before the MLP returns
        hooks = [layer.mlp.register_forward_pre_hook(lambda *_: calls.append(1)) for layer in layers]
        if checkpointing:
            enable_gradient_checkpointing(model)
        training_mode(adapter, model, True, checkpointing)
        try:
            adapter.zero_grad()
            batch_loss(
                "reconstruction", model, adapter, pages, examples, [0, 1], pad, torch.device("cpu"), False
            ).backward()
            return [p.grad.clone() for p in adapter.parameters()], len(calls)
        finally:
            for hook in hooks:
                hook.remove()
            (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()
            training_mode(adapter, model, False, False)

    plain, plain_calls = gradients(False)
    recomputed, recomputed_calls = gradients(True)
    assert plain_calls == len(layers) and recomputed_calls == 2 * len(layers)  # every layer ran again in backward
    for a, b in zip(plain, recomputed):
        torch.testing.assert_close(a, b)
    assert not model.training


class CountingEncoder:
    """A DeepEncoderPages that counts the pages it encodes."""

    def __init__(self, encoder):
        self.inner, self.pages = encoder, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode(self, images, mode=None):
        self.pages += len(images)
        return self.inner.encode(images, mode=mode)


def test_features_are_cached_once_per_page_in_the_shared_page_cache(tmp_path, reader):
    from optical_cli.encode.page_cache import PageFeatureCache

    cfg = tiny_cfg(tmp_path)
    docs = read_corpus(str(CVES), max_documents=3, min_chars=16)
    encoder = CountingEncoder(DeepEncoderPages(cfg.deepencoder, cfg.runtime, torch.device("cpu")))
    first, hit1 = build_page_set(docs, cfg, encoder, tmp_path / "cache")
    again = CountingEncoder(DeepEncoderPages(cfg.deepencoder, cfg.runtime, torch.device("cpu")))
    second, hit2 = build_page_set(docs, cfg, again, tmp_path / "cache")
    assert (hit1, hit2) == (False, True) and (encoder.pages, again.pages) == (len(first), 0)
    assert torch.equal(first.features, second.features) and first.texts == second.texts and len(first) == 3
    assert first.features.shape[1:] == (64, encoder.out_dim)
    assert all(t.split()[0] in d for t, d in zip(first.texts, docs))  # each page holds its document's text
    cache = PageFeatureCache.at(tmp_path / "cache", 1.0)
    assert len(cache.entries()) == 3 and len(list((tmp_path / "cache" / "corpora").glob("*.json"))) == 1
    # another corpus sharing two of these pages (documents 1 and 2; packing off: one page each) encodes one page
    cfg_unpacked = tiny_cfg(tmp_path, "data.pack=false")
    shared = CountingEncoder(DeepEncoderPages(cfg.deepencoder, cfg.runtime, torch.device("cpu")))
    pages, hit = build_page_set(
        docs[:2] + ["A new document about something else entirely."], cfg_unpacked, shared, tmp_path / "cache"
    )
    assert not hit and len(pages) == 3 and shared.pages == 1
    # evicted pages are encoded again, not read: the corpus stays complete under any bound
    for _, _, path in cache.entries():
        path.unlink()
    third = CountingEncoder(DeepEncoderPages(cfg.deepencoder, cfg.runtime, torch.device("cpu")))
    rebuilt, hit3 = build_page_set(docs, cfg, third, tmp_path / "cache")
    assert not hit3 and third.pages == 3 and torch.equal(rebuilt.features, first.features)


def test_packed_pages_are_full_and_hold_every_document_in_order(tmp_path):
    cfg = tiny_cfg(tmp_path, "data.pack=true", "render.reflow=true", "adapter.max_pages=2")
    docs = read_corpus(str(CVES), max_documents=12, min_chars=16)
    pages, _ = build_page_set(docs, cfg, DeepEncoderPages(cfg.deepencoder, cfg.runtime, torch.device("cpu")), tmp_path)
    assert non_space("".join(pages.texts)) == non_space("".join(docs))  # nothing lost, nothing repeated
    assert 1 < len(pages) < len(docs) / 2
    renderer = PageRenderer(page_render_section(cfg))
    capacity = renderer.lines_per_page * len(max(pages.texts[0].splitlines(), key=len))
    assert all(len(text) > 0.8 * capacity for text in pages.texts[:-1])  # full pages, the last one excepted
    assert pages.page_index == [i % 2 for i in range(len(pages))]  # runs of adapter.max_pages pages
    assert pages.document == [i // 2 for i in range(len(pages))]


def test_held_out_documents_are_split_off_before_packing():
    docs = [f"document {i}" for i in range(10)]
    train, held = split_documents(docs, 0.25, seed=3)
    assert len(held) == 2 and sorted(train + held) == sorted(docs) and not set(train) & set(held)
    assert train == [d for d in docs if d in train]  # corpus order kept on both sides
    assert split_documents(docs, 0.25, seed=3) == (train, held) != split_documents(docs, 0.25, seed=4)
    assert split_documents(docs[:2], 0.01, seed=0)[1] != [] and split_documents(docs, 0.0, seed=0) == (docs, [])


def test_character_error_rate():
    assert character_error_rate("kitten", "sitting") == pytest.approx(3 / 7)
    assert character_error_rate("same text", "same text") == 0
    assert (
        character_error_rate("", "abcd") == 1 and character_error_rate("abcd", "") == 4
    )  # empty reference: edits per 1
    assert character_error_rate("ab", "abcd") == pytest.approx(0.5)  # a truncated transcription is 2 deletions


def _invoke(tmp_path, *extra):
    return CliRunner().invoke(
        app,
        [
            "train-adapter",
            "--config",
            str(TINY),
            "--output-dir",
            str(tmp_path / "out"),
            "--set",
            f"data.cache_dir={tmp_path / 'cache'}",
            *extra,
        ],
    )


def test_corpus_without_usable_text_exits_2(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"description": "   "}\n{"other": "field"}\n')
    result = _invoke(tmp_path, "--set", f"data.source={empty}")
    assert result.exit_code == 2, result.output
    assert "no usable text" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()  # no config.yaml/manifest.json of a run that never started
    with pytest.raises(InputError, match="not found"):
        read_corpus(str(tmp_path / "missing.txt"))


def test_adapter_not_matching_the_llm_exits_2(tmp_path):
    wrong = save_adapter(
        OpticalAdapter(AdapterConfig(vision_dim=48, hidden_dim=8, llm_dim=2048, max_pages=8)), tmp_path / "wrong.pth"
    )
    result = _invoke(
        tmp_path, "--set", f"data.source={CVES}", "--set", "data.max_documents=4", "--set", f"adapter.init={wrong}"
    )
    assert result.exit_code == 2, result.output
    assert "hidden size is 64" in result.output
    assert not (tmp_path / "out").exists()  # checked before the run directory is made


def test_model_that_cannot_load_fails_before_the_run_and_its_progress_bar(tmp_path):
    result = _invoke(
        tmp_path,
        "--set",
        f"data.source={CVES}",
        "--set",
        "data.max_documents=4",
        "--set",
        f"vlm.source={tmp_path / 'no-such-model'}",
    )
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("RANDOM WEIGHTS")]
    assert len(lines) == 1 and lines[0].startswith("error:") and "no-such-model" in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


def test_missing_deepencoder_weights_fail_before_anything_is_written_or_shown(tmp_path, monkeypatch):
    """The shipped config with a random Qwen3-VL and DeepSeek-OCR's weights not downloaded, offline: exit 2,
    no run directory (with -o or without), no RANDOM WEIGHTS banner and no empty progress bar (issue 31.5)."""
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    for extra in ([], ["-o", str(tmp_path / "run")]):
        args = ["train-adapter", "-c", "configs/train-adapter.yaml", "--set", "vlm.source=random", *extra]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "hf download deepseek-ai/DeepSeek-OCR" in result.stderr
        assert "RANDOM WEIGHTS" not in result.stderr and "training" not in result.stderr
        assert not (tmp_path / "run").exists() and not (tmp_path / "results").exists()


def test_corrupt_checkpoint_on_resume_exits_2(tmp_path, cache, runtime, reader):
    cfg = tiny_cfg(cache, "train.max_steps=2", "train.checkpoint_every=1", "train.eval_every=100")
    run = tmp_path / "run"
    with start_run("train-adapter", dump_config(cfg), output_dir=run):  # what the CLI's run directory holds
        train_adapter(cfg, run, runtime, reader)
    newest = sorted((run / "checkpoints").glob("step-*"))[-1]
    (newest / "trainer_state.pth").write_bytes(b"not a checkpoint")
    result = CliRunner().invoke(app, ["train-adapter", "--resume", str(run)])
    assert result.exit_code == 2, result.output
    assert "corrupt" in result.output
    torch.save({"step": 2}, newest / "trainer_state.pth")  # loads, but is not a trainer state
    result = CliRunner().invoke(app, ["train-adapter", "--resume", str(run)])
    assert result.exit_code == 2, result.output
    assert "lacks optimizer, scheduler, rng" in result.output and "Traceback" not in result.output


def test_hub_dataset_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match="cannot read hub dataset 'someone/missing-corpus'"):
        read_corpus("hf:someone/missing-corpus", field_name="text", max_documents=5)


def test_mse_objective_trains_and_records_eval(tmp_path, cache, runtime, reader):
    cfg = tiny_cfg(cache, "train.objective=mse", "train.max_steps=6", "train.eval_every=3", "train.lr=0.01")
    result = train_adapter(cfg, tmp_path / "mse", runtime, reader)
    metrics = read_records(tmp_path / "mse" / "metrics.jsonl")
    evals = [m["eval_loss"] for m in metrics if m["eval_loss"] is not None]
    assert result.steps == 6 and [m["step"] for m in metrics if m["eval_loss"] is not None] == [0, 3, 6]
    assert evals[-1] < 0.5 * evals[0], evals  # held-out pages: pooled tokens move towards pooled text embeddings
    assert json.loads((tmp_path / "mse" / "adapter.json").read_text())["training"]["objective"] == "mse"
