"""`optical encode` through the CLI: the reference-call contract, inputs, metrics, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from deepencoder_files import save_deepencoder
from PIL import Image, ImageDraw
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

from optical_cli.cli import app
from optical_cli.encode.features import FeatureFiles
from optical_cli.models.deepencoder import DeepEncoderConfig, products, widens
from optical_cli.models.deepencoder.preprocess import prepare
from optical_cli.models.deepencoder.runner import BatchRunner
from optical_cli.models.deepencoder.weights import load_deepencoder
from optical_cli.records import read_records

runner = CliRunner()
REPO_ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "--set",
    "deepencoder.weights=random",
    "--set",
    "deepencoder.architecture=tiny",
    "--set",
    "runtime.device=cpu",
    "--set",
    "runtime.dtype=float32",
]


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
    result = invoke(
        "encode",
        "--input",
        image,
        "--output",
        out,
        "--set",
        f"deepencoder.weights={weights}",
        "--set",
        "deepencoder.mode=base",
        "--set",
        "runtime.device=cpu",
        "--set",
        "runtime.dtype=float32",
        "--output-dir",
        tmp_path / "run",
    )
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
    pages = read_records(tmp_path / "run" / "pages.jsonl")
    assert pages[0]["vision_tokens"] == 256 and pages[0]["spatial_compression"] == 16.0
    assert pages[0]["text_tokens"] is None  # an image alone carries no known text


def test_the_summary_says_whether_reduced_precision_products_ran_in_float32(tmp_path):
    page(tmp_path / "a.png")
    for dtype in ("float32", "bfloat16"):
        result = invoke(
            "encode",
            "-i",
            tmp_path,
            *TINY,
            "--set",
            f"runtime.dtype={dtype}",
            "--output-dir",
            tmp_path / dtype,
            "--json",
        )
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout[result.stdout.index("{") :])
        assert summary["dtype"] == dtype
        assert summary["widened_products"] is widens(getattr(torch, dtype), torch.device("cpu"))
    assert summary["widened_products"] is not products._cpu_has_native(torch.bfloat16)  # bfloat16: the CPU decides


def test_gundam_pages_of_different_lengths_are_padded_and_counted(tmp_path):
    page(tmp_path / "a.png", (1500, 600)), page(tmp_path / "b.png", (200, 300))
    result = invoke(
        "encode",
        "-i",
        tmp_path,
        *TINY,
        "--set",
        "deepencoder.mode=gundam",
        "--set",
        "deepencoder.layout_tokens=true",
        "--set",
        "encode.batch_size=2",
        "--output-dir",
        tmp_path / "run",
        "--json",
    )
    assert result.exit_code == 0, result.output
    tensors = load_file(str(tmp_path / "run" / "features.safetensors"))
    # a.png: 3x1 tiles -> 10 rows x (30+1) + global 16 x 17 + separator; b.png: global view only
    assert tensors["tokens"].tolist() == [10 * 31 + 273, 273]
    assert tensors["features"].shape == (2, 583, 48)
    assert tensors["features"][1, 273:].abs().sum() == 0
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    assert summary["pages"] == 2 and summary["vision_tokens"] == 583 + 273
    # one page per shard: shards of different lengths, padded to the longest when read as one
    result = invoke(
        "encode",
        "-i",
        tmp_path,
        *TINY,
        "--set",
        "deepencoder.mode=gundam",
        "--set",
        "deepencoder.layout_tokens=true",
        "--set",
        "encode.shard_pages=1",
        "--output",
        tmp_path / "out" / "pages.safetensors",
        "--output-dir",
        tmp_path / "run2",
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "pages-00001-of-00002.safetensors",
        "pages-00002-of-00002.safetensors",
        "pages.index.json",
    ]
    assert load_file(str(tmp_path / "out" / "pages-00002-of-00002.safetensors"))["features"].shape == (1, 273, 48)
    features, tokens = FeatureFiles.open(tmp_path / "out" / "pages.index.json").load()
    torch.testing.assert_close(features, tensors["features"])  # batched differently: equal up to rounding
    assert tokens.tolist() == [583, 273] and features[1, 273:].abs().sum() == 0


def test_text_and_render_run_directory_give_the_same_features_and_text_metrics(tmp_path):
    text = tmp_path / "doc.txt"
    text.write_text("The quick brown fox jumps over the lazy dog.\n" * 300, encoding="utf-8")
    rendered = tmp_path / "rendered"
    assert (
        invoke(
            "render", text, "--output-dir", rendered, "--set", "render.mode=tiny", "--set", "render.tokenizer=none"
        ).exit_code
        == 0
    )
    direct = invoke("encode", "--text", text, *TINY, "--set", "deepencoder.mode=tiny", "--output-dir", tmp_path / "a")
    from_dir = invoke("encode", "-i", rendered, *TINY, "--set", "deepencoder.mode=tiny", "--output-dir", tmp_path / "b")
    assert direct.exit_code == 0 and from_dir.exit_code == 0, direct.output + from_dir.output
    a = load_file(str(tmp_path / "a" / "features.safetensors"))["features"]
    b = load_file(str(tmp_path / "b" / "features.safetensors"))["features"]
    assert a.shape[0] >= 2 and torch.equal(a, b)
    [doc] = read_records(tmp_path / "a" / "documents.jsonl")
    assert doc["source"] == str(text) and doc["pages"] == a.shape[0] and doc["vision_tokens"] == 64 * a.shape[0]
    assert doc["words"] == 9 * 300
    assert doc["words_per_vision_token"] == pytest.approx(doc["words"] / doc["vision_tokens"])
    assert doc["text_tokens_per_vision_token"] == pytest.approx(doc["text_tokens"] / doc["vision_tokens"])
    assert 3.0 < doc["entropy_bits_per_char"] < 5.0
    assert sum(p["words"] for p in read_records(tmp_path / "a" / "pages.jsonl")) == doc["words"]


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
    assert ".safetensors" in one_line_error(
        invoke("encode", "-i", tmp_path / "big.png", "--output", tmp_path / "x.npy", *TINY)
    )
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    assert "cannot decode as utf-8" in one_line_error(invoke("encode", "--text", tmp_path / "latin1.txt", *TINY))
    run_dir = tmp_path / "rendered"
    run_dir.mkdir()
    (run_dir / "layout.jsonl").write_text('{"page": 1}\n')
    assert "lacks source/image/lines" in one_line_error(invoke("encode", "-i", run_dir, *TINY))
    (run_dir / "layout.jsonl").write_text("")
    assert "no pages to encode" in one_line_error(invoke("encode", "-i", run_dir, *TINY))
    assert "--resume needs --output-dir" in one_line_error(
        invoke("encode", "-i", tmp_path / "big.png", *TINY, "--resume")
    )


def test_corrupt_weights_give_one_line_and_exit_2(tmp_path, tiny_weights):
    data = tiny_weights[1].read_bytes()
    corrupt = tmp_path / "W.safetensors"
    corrupt.write_bytes(data[: len(data) // 2])
    image = page(tmp_path / "p.png")
    result = invoke(
        "encode",
        "-i",
        image,
        "--set",
        f"deepencoder.weights={corrupt}",
        "--set",
        "runtime.device=cpu",
        "--output-dir",
        tmp_path / "run",
    )
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


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried"),
        MemoryError(),
    ],
    ids=["cpu-allocator", "memory-error"],
)
def test_a_cpu_out_of_memory_halves_the_batch_too(error):
    def fragile(batch):
        if len(batch) > 1:
            raise error
        return batch.sum(dim=(1, 2, 3))[:, None]

    run = BatchRunner(fragile, 4, torch.device("cpu"), torch.float32)
    assert run(torch.ones(3, 1, 2, 2))[:, 0].tolist() == [4.0, 4.0, 4.0] and run.batch_size == 1


def test_other_errors_are_not_taken_for_out_of_memory():
    def broken(batch):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes"):
        BatchRunner(broken, 4, torch.device("cpu"), torch.float32)(torch.ones(3, 1, 2, 2))


def encode_text(text, out, *args):
    return invoke("encode", "--text", text, *TINY, "--set", "deepencoder.mode=tiny", "--output-dir", out, *args)


@pytest.fixture(scope="module")
def long_text(tmp_path_factory):
    """Seven tiny pages of real CVE text."""
    records = [json.loads(line) for line in (REPO_ROOT / "tests" / "data" / "cves_200.jsonl").read_text().splitlines()]
    path = tmp_path_factory.mktemp("text") / "cves.txt"
    path.write_text("\n\n".join(r["description"] for r in records[:60]), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def one_file_run(long_text, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    assert encode_text(long_text, out).exit_code == 0
    return out


def test_many_pages_stream_into_shards_equal_to_one_file(long_text, one_file_run, tmp_path):
    out = tmp_path / "sharded"
    result = encode_text(long_text, out, "--set", "encode.shard_pages=2", "--json")
    assert result.exit_code == 0, result.output
    whole = load_file(str(one_file_run / "features.safetensors"))["features"]
    pages = whole.shape[0]
    shards = -(-pages // 2)
    assert pages >= 5 and json.loads(result.stdout)["shards"] == shards
    index = json.loads((out / "features.index.json").read_text())
    assert [s["file"] for s in index["shards"]] == [
        f"features-{k:05d}-of-{shards:05d}.safetensors" for k in range(1, shards + 1)
    ]
    assert index["pages"] == pages and index["sources"] == [[str(long_text), pages]]
    assert torch.equal(torch.cat([load_file(str(out / s["file"]))["features"] for s in index["shards"]]), whole)
    assert not (out / "features.safetensors").exists() and not list(out.glob("features-?????.safetensors"))
    for name in ("pages.jsonl", "documents.jsonl"):  # metrics assembled from the shards equal one file's
        assert read_records(out / name) == read_records(one_file_run / name)


def test_document_metrics_from_page_tallies_equal_the_joined_text(long_text, one_file_run, tmp_path):
    from collections import Counter

    from optical_cli.textstats import entropy_of_counts

    rendered = tmp_path / "rendered"
    assert (
        invoke(
            "render", long_text, "--output-dir", rendered, "--set", "render.mode=tiny", "--set", "render.tokenizer=none"
        ).exit_code
        == 0
    )
    joined = "\n".join("\n".join(r["lines"]) for r in read_records(rendered / "layout.jsonl"))
    [doc] = read_records(one_file_run / "documents.jsonl")
    assert doc["characters"] == len(joined) and doc["words"] == len(joined.split())
    assert doc["entropy_bits_per_char"] == pytest.approx(entropy_of_counts(Counter(joined)), abs=1e-12)
    pages = read_records(one_file_run / "pages.jsonl")
    assert doc["text_tokens"] == sum(p["text_tokens"] for p in pages) and doc["pages"] == len(pages)


def dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_interrupted_run_resumes_after_its_complete_shards(long_text, one_file_run, tmp_path, monkeypatch):
    from optical_cli.encode.features import ShardedFeatures

    out, write = tmp_path / "run", ShardedFeatures.write
    written = []

    def power_cut_after_two(self, k, *args, **kwargs):
        if len(written) == 2:
            raise RuntimeError("power cut")
        written.append(k)
        return write(self, k, *args, **kwargs)

    monkeypatch.setattr(ShardedFeatures, "write", power_cut_after_two)
    assert encode_text(long_text, out, "--set", "encode.shard_pages=2").exit_code == 1
    assert sorted(p.name for p in out.glob("features*")) == ["features-00001.safetensors", "features-00002.safetensors"]
    unfinished = invoke("index", "build-energy", "--input", out, "-o", tmp_path / "ix")
    assert unfinished.exit_code == 2 and "did not finish" in unfinished.output
    monkeypatch.setattr(ShardedFeatures, "write", write)
    moved = invoke(
        "encode",
        "--text",
        long_text,
        *TINY,
        "--set",
        "deepencoder.mode=small",
        "--set",
        "encode.shard_pages=2",
        "--output-dir",
        out,
        "--resume",
    )
    assert "deepencoder.mode" in one_line_error(moved)
    other = tmp_path / "other.txt"
    other.write_text(long_text.read_text()[::-1])
    assert "other pages" in one_line_error(encode_text(other, out, "--set", "encode.shard_pages=2", "--resume"))

    # as a kill -9 leaves it: a half-written shard and a manifest that still says running
    stale = out / ".features-00003.ab12cd34.tmp.safetensors"
    stale.write_bytes(b"half a shard")
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "status": "running", "pid": dead_pid()}))
    # a new process knows no attention choice, and here could make none: the shards' own are reused
    from optical_cli.encode.features import read_header
    from optical_cli.models.deepencoder import ATTENTION_MODES, attention, clear_auto_choices

    chosen = json.loads(read_header(out / "features-00001.safetensors")["attention_auto"])
    assert chosen and {c["path"] for c in chosen} <= set(ATTENTION_MODES)
    clear_auto_choices()
    monkeypatch.setattr(attention, "_auto_candidates", lambda device: ())  # measuring again would fail
    resumed = encode_text(long_text, out, "--set", "encode.shard_pages=2", "--resume", "--json")
    assert resumed.exit_code == 0, resumed.output
    assert "2 of " in resumed.stderr and "shards on disk" in resumed.stderr  # what the resume found
    assert "attention paths chosen before" in resumed.stderr
    assert not stale.exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "ok" and [a["status"] for a in manifest["attempts"]] == ["interrupted"]
    assert [(c["q_shape"], c["path"]) for c in manifest["attention_auto"]] == [
        (c["q_shape"], c["path"]) for c in chosen
    ]
    assert (
        json.loads((out / "features.index.json").read_text())["metadata"]["attention_auto"]
        == manifest["attention_auto"]
    )
    pages = json.loads(resumed.stdout)["pages"]
    [report] = manifest["process_pages"]
    assert report["resumed_shards"] == 2 and report["pages"] == pages - 4 and report["shards"][0] == 3
    index = json.loads((out / "features.index.json").read_text())
    features = torch.cat([load_file(str(out / s["file"]))["features"] for s in index["shards"]])
    assert torch.equal(features, load_file(str(one_file_run / "features.safetensors"))["features"])
    assert read_records(out / "pages.jsonl") == read_records(one_file_run / "pages.jsonl")
