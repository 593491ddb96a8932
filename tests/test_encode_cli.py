"""`optical encode` through the CLI: the reference-call contract, inputs, metrics, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image, ImageDraw
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

from optical_cli.cli import app
from optical_cli.encode import BatchRunner
from optical_cli.models.deepencoder import DeepEncoderConfig
from optical_cli.models.deepencoder.preprocess import prepare
from optical_cli.models.loading import load_deepencoder, save_deepencoder

runner = CliRunner()
TINY = ["--set", "deepencoder.weights=random", "--set", "deepencoder.architecture=tiny",
        "--set", "runtime.device=cpu", "--set", "runtime.dtype=float32"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def page(path, size=(300, 400)):
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).text((10, 10), "optical compression", fill="black")
    image.save(path)
    return path


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    model = load_deepencoder(None, config=DeepEncoderConfig.tiny(), seed=5)
    return model, save_deepencoder(model, tmp_path_factory.mktemp("w") / "W.safetensors")


def test_reference_call_writes_features_equal_to_the_model(tmp_path, tiny_weights):
    model, weights = tiny_weights
    image = page(tmp_path / "PAGE.png")
    out = tmp_path / "OUT.safetensors"
    result = invoke("encode", "--input", image, "--output", out, "--set", f"deepencoder.weights={weights}",
                    "--set", "deepencoder.mode=base", "--set", "runtime.device=cpu", "--set", "runtime.dtype=float32",
                    "--output-dir", tmp_path / "run")
    assert result.exit_code == 0, result.output
    features = load_file(str(out))["features"]
    assert features.shape == (1, 256, 48)
    with torch.inference_mode():
        expected = model(prepare(Image.open(image), "base").views[0][None])
    torch.testing.assert_close(features, expected)
    with safe_open(str(out), "pt") as handle:
        meta = handle.metadata()
    assert meta["mode"] == "base" and json.loads(meta["tokens_per_page"]) == [256]
    assert json.loads(meta["sources"]) == [str(image)]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["pages"][0]["vision_tokens"] == 256 and metrics["pages"][0]["spatial_compression"] == 16.0
    assert metrics["pages"][0]["text_tokens"] is None  # an image alone carries no known text


def test_gundam_pages_of_different_lengths_are_padded_and_counted(tmp_path):
    page(tmp_path / "a.png", (1500, 600)), page(tmp_path / "b.png", (200, 300))
    result = invoke("encode", "-i", tmp_path, *TINY, "--set", "deepencoder.mode=gundam",
                    "--set", "deepencoder.layout_tokens=true", "--set", "encode.batch_size=2", "--output-dir", tmp_path / "run", "--json")
    assert result.exit_code == 0, result.output
    tensors = load_file(str(tmp_path / "run" / "features.safetensors"))
    # a.png: 3x1 tiles -> 10 rows x (30+1) + global 16 x 17 + separator; b.png: global view only
    assert tensors["tokens"].tolist() == [10 * 31 + 273, 273]
    assert tensors["features"].shape == (2, 583, 48)
    assert tensors["features"][1, 273:].abs().sum() == 0
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["pages"] == 2 and summary["vision_tokens"] == 583 + 273


def test_text_and_render_run_directory_give_the_same_features_and_text_metrics(tmp_path):
    text = tmp_path / "doc.txt"
    text.write_text("The quick brown fox jumps over the lazy dog.\n" * 300, encoding="utf-8")
    rendered = tmp_path / "rendered"
    assert invoke("render", text, "--output-dir", rendered, "--set", "render.mode=tiny", "--set", "render.tokenizer=none").exit_code == 0
    direct = invoke("encode", "--text", text, *TINY, "--set", "deepencoder.mode=tiny", "--output-dir", tmp_path / "a")
    from_dir = invoke("encode", "-i", rendered, *TINY, "--set", "deepencoder.mode=tiny", "--output-dir", tmp_path / "b")
    assert direct.exit_code == 0 and from_dir.exit_code == 0, direct.output + from_dir.output
    a = load_file(str(tmp_path / "a" / "features.safetensors"))["features"]
    b = load_file(str(tmp_path / "b" / "features.safetensors"))["features"]
    assert a.shape[0] >= 2 and torch.equal(a, b)
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    doc = metrics["documents"][0]
    assert doc["source"] == str(text) and doc["pages"] == a.shape[0] and doc["vision_tokens"] == 64 * a.shape[0]
    assert doc["words"] == 9 * 300
    assert doc["words_per_vision_token"] == pytest.approx(doc["words"] / doc["vision_tokens"])
    assert doc["text_tokens_per_vision_token"] == pytest.approx(doc["text_tokens"] / doc["vision_tokens"])
    assert 3.0 < doc["entropy_bits_per_char"] < 5.0
    assert sum(p["words"] for p in metrics["pages"]) == doc["words"]


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_bad_inputs_give_one_line_and_exit_2(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    assert "not a readable image" in one_line_error(invoke("encode", "-i", tmp_path / "notes.png", *TINY))
    Image.new("L", (10, 40)).save(tmp_path / "small.png")
    assert "at least 16 px" in one_line_error(invoke("encode", "-i", tmp_path / "small.png", *TINY))
    page(tmp_path / "big.png", (300, 200))
    message = one_line_error(invoke("encode", "-i", tmp_path / "big.png", *TINY, "--set", "encode.max_image_side=256"))
    assert "over the limit of 256 px" in message
    assert "nothing to encode" in one_line_error(invoke("encode", *TINY))
    assert "no such file" in one_line_error(invoke("encode", "-i", tmp_path / "missing.png", *TINY))
    assert ".safetensors" in one_line_error(invoke("encode", "-i", tmp_path / "big.png", "--output", tmp_path / "x.npy", *TINY))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    assert "cannot decode as utf-8" in one_line_error(invoke("encode", "--text", tmp_path / "latin1.txt", *TINY))
    run_dir = tmp_path / "rendered"
    run_dir.mkdir()
    (run_dir / "layout.jsonl").write_text('{"page": 1}\n')
    assert "lacks source/image/lines" in one_line_error(invoke("encode", "-i", run_dir, *TINY))


def test_corrupt_weights_give_one_line_and_exit_2(tmp_path, tiny_weights):
    data = tiny_weights[1].read_bytes()
    corrupt = tmp_path / "W.safetensors"
    corrupt.write_bytes(data[: len(data) // 2])
    image = page(tmp_path / "p.png")
    result = invoke("encode", "-i", image, "--set", f"deepencoder.weights={corrupt}", "--set", "runtime.device=cpu",
                    "--output-dir", tmp_path / "run")
    assert "corrupt or truncated" in one_line_error(result)


def test_out_of_memory_halves_the_batch_and_retries():
    seen = []

    def fragile(batch):
        seen.append(len(batch))
        if len(batch) > 2:
            raise torch.cuda.OutOfMemoryError("fake")
        return batch.sum(dim=(1, 2, 3))[:, None]

    views = torch.arange(7, dtype=torch.float32)[:, None, None, None].expand(7, 1, 2, 2)
    run = BatchRunner(fragile, 8, torch.device("cpu"), torch.float32)
    assert run(views)[:, 0].tolist() == [4.0 * i for i in range(7)]
    assert run.batch_size == 2 and seen[:3] == [7, 4, 2]
