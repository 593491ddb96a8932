"""`optical bench longbench` through the CLI: artifacts, JSON, resume and bad input (exit 2)."""

import csv
import json
from pathlib import Path

import pytest
from bench_fakes import FakeReader
from typer.testing import CliRunner

from optical_cli.cli import app
from optical_cli.config.registry import load_config
from optical_cli.render.pages import PageRenderer

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURE = REPO_ROOT / "tests" / "data" / "longbench_fixture.jsonl"
runner = CliRunner()


@pytest.fixture
def fake_reader(monkeypatch):
    reader = FakeReader()
    monkeypatch.setattr("optical_cli.engines.factory.build_reader", lambda spec, conditions: reader)
    monkeypatch.setattr("optical_cli.bench.longbench.model_downloads", lambda cfg: [])  # a fake reader loads nothing
    return reader


def _invoke(*args):
    return runner.invoke(
        app, ["bench", "longbench", "--set", f"bench.data={FIXTURE}", "--set", "bench.max_pages=2", *args]
    )


def test_fake_reader_end_to_end_with_json_and_resume(tmp_path, fake_reader):
    out = tmp_path / "run"
    result = _invoke("--num-samples", "6", "--conditions", "native,optical", "--output-dir", str(out), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["random_weights"] is True and summary["items"] == 6
    assert set(summary["conditions"]) == {"native", "optical"}
    assert "RANDOM WEIGHTS" in result.stderr
    with open(out / "items.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 12
    assert {
        "id",
        "condition",
        "length",
        "difficulty",
        "status",
        "answer",
        "prediction",
        "correct",
        "input_tokens",
        "pages",
        "truncated",
        "latency_s",
        "prefill_s",
        "output",
    } <= set(rows[0])
    for name in ("summary.json", "accuracy_by_length.png", "cost_vs_length.png", "config.yaml", "manifest.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "manifest.json").read_text())["status"] == "ok"
    # a second run on the same directory needs --resume; with it nothing is re-run
    assert _invoke("--num-samples", "6", "--conditions", "native,optical", "--output-dir", str(out)).exit_code == 2
    calls = len(fake_reader.calls)
    again = _invoke(
        "--num-samples", "6", "--conditions", "native,optical", "--output-dir", str(out), "--resume", "--json"
    )
    assert again.exit_code == 0 and len(fake_reader.calls) == calls
    assert json.loads(again.stdout)["conditions"] == summary["conditions"]
    # throughput counts the rows this invocation ran: all 12 the first time, none on the resume
    assert summary["throughput"]["rows"] == 12 and summary["throughput"]["in_flight"] == 1
    assert summary["throughput"]["items_per_s"] == pytest.approx(summary["throughput"]["rows_per_s"] / 2)
    assert json.loads(again.stdout)["throughput"]["rows"] == 0
    # resuming with other decoding would mix incomparable rows
    changed = _invoke("--num-samples", "6", "--output-dir", str(out), "--resume", "--set", "bench.temperature=0")
    assert changed.exit_code == 2 and "bench.temperature" in changed.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--conditions", "native,visual"], "unknown condition(s) visual"),
        (["--num-samples", "40"], "--num-samples 40 is larger than the 12"),
        (["--ids", "syn-short-easy-1,nope"], "unknown item id(s) nope"),
        (["--resume"], "--resume needs --output-dir"),
        (["--lengths", "huge"], "bench.lengths"),
        (["--num-samples", "0"], "bench.num_samples"),
        (["--lengths", "long", "--difficulties", "hard", "--num-samples", "3"], "--num-samples 3 is larger than the 2"),
        (["--set", "bench.conditions=[native, visual]"], "bench.conditions"),
    ],
)
def test_bad_usage_exits_2(args, message, fake_reader):
    result = _invoke(*args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert fake_reader.calls == []  # usage is checked before anything is read


def test_bad_data_file_names_the_item(tmp_path, fake_reader):
    records = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    records[2]["answer"] = "F"
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    result = runner.invoke(
        app, ["bench", "longbench", "--set", f"bench.data={path}", "--output-dir", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "syn-short-hard-1" in result.stderr and "A, B, C, D" in result.stderr
    assert not (tmp_path / "o").exists()  # bad input leaves no artifacts behind


def test_tiny_models_end_to_end(tmp_path, monkeypatch):
    """The real pipeline on tiny random models: render -> DeepEncoder -> adapter -> Qwen3-VL."""
    monkeypatch.chdir(REPO_ROOT)  # the tiny config names the fixture relative to the repository
    out = tmp_path / "tiny"
    result = runner.invoke(
        app,
        [
            "bench",
            "longbench",
            "--config",
            "configs/tiny/longbench.yaml",
            "--ids",
            "syn-short-easy-1,syn-long-hard-1",
            "--output-dir",
            str(out),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "RANDOM WEIGHTS" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["random_weights"] is True and summary["note"].startswith("RANDOM WEIGHTS")
    with open(out / "items.csv", newline="") as handle:
        rows = {(r["id"], r["condition"]): r for r in csv.DictReader(handle)}
    assert len(rows) == 8 and all(r["status"] == "ok" for r in rows.values()), [r["reason"] for r in rows.values()]
    optical = rows[("syn-long-hard-1", "optical")]
    assert optical["pages"] == "1" and optical["truncated"] == "1"  # the long item loses pages to max_pages=1
    assert int(optical["context_tokens"]) == 64  # one tiny-mode page = 64 vision tokens
    assert float(optical["encode_s"]) > 0 and float(optical["render_s"]) > 0
    assert rows[("syn-long-hard-1", "native-matched")]["context_tokens"] == optical["context_tokens"]
    native = rows[("syn-long-hard-1", "native")]
    assert native["truncated"] == "1" and int(native["context_tokens"]) == 96
    assert int(native["input_tokens"]) > int(rows[("syn-long-hard-1", "no-context")]["input_tokens"])
    # the latency split: stages measured inside latency_s, the adapter on its own, memory per row
    stages = ("render_s", "encode_s", "adapter_s", "prefill_s", "decode_s")
    assert float(optical["adapter_s"]) > 0 and float(native["adapter_s"]) == 0
    for row in (optical, native):
        assert 0 < sum(float(row[k]) for k in stages) <= float(row["latency_s"]) + 1e-3
        assert float(row["peak_memory_gib"]) > 0
    context = next(
        json.loads(line)["context"] for line in FIXTURE.read_text().splitlines() if "syn-long-hard-1" in line
    )
    laid_out = PageRenderer(load_config("longbench", "configs/tiny/longbench.yaml").render).layout(context)[0]
    assert float(optical["chars_per_page"]) == pytest.approx(len(context) / len(laid_out), abs=1e-3)
    # adapter 48 -> 3072 -> 64, LayerNorm(64), one page embedding (bench.max_pages=1)
    assert summary["parameters"]["adapter"] == (48 * 3072 + 3072) + (3072 * 64 + 64) + 2 * 64 + 1 * 64
    assert summary["parameters"]["language_model"] > summary["parameters"]["deepencoder"] > 0
    assert summary["peak_memory_gib"]["cpu_rss_gib"] >= max(float(r["peak_memory_gib"]) for r in rows.values())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parameters"] == summary["parameters"] and manifest["peak_memory_gib"] == summary["peak_memory_gib"]


def test_optical_without_an_adapter_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    result = runner.invoke(
        app,
        [
            "bench",
            "longbench",
            "--config",
            "configs/tiny/longbench.yaml",
            "--set",
            "bench.adapter=null",
            "--output-dir",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 2 and "bench.adapter is not set" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()  # refused before any weights load or the run directory exists


def test_a_condition_whose_every_item_failed_exits_1_and_keeps_its_results(tmp_path, fake_reader):
    import torch

    fake_reader.fail = {("", "pages"): torch.OutOfMemoryError("CUDA out of memory")}  # "" is in every question
    out = tmp_path / "run"
    result = _invoke("--num-samples", "4", "--conditions", "native,optical", "--output-dir", str(out), "--json")
    assert result.exit_code == 1, result.output
    assert "every item of condition(s) optical failed" in result.stderr and "Traceback" not in result.output
    conditions = json.loads(result.stdout)["conditions"]
    assert conditions["optical"]["completed"] == 0 and conditions["native"]["completed"] == 4
    with open(out / "items.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 8 and {r["status"] for r in rows if r["condition"] == "optical"} == {"oom"}
    assert (out / "summary.json").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "optical" in manifest["error"]


def test_tiny_models_read_with_an_adapter_in_the_published_layout(tmp_path, monkeypatch):
    """A plain state dict under the published names, at the tiny models' sizes, no sidecar:
    read in its own layout, with its own page preprocessing, and both named in the manifest."""
    from test_adapter import published_state

    monkeypatch.chdir(REPO_ROOT)
    torch_path = tmp_path / "P.pth"
    import torch

    torch.save(published_state(vision_dim=48, hidden_dim=32, llm_dim=64, max_pages=4), torch_path)
    out = tmp_path / "published"
    result = runner.invoke(
        app,
        [
            "bench",
            "longbench",
            "--config",
            "configs/tiny/longbench.yaml",
            "--ids",
            "syn-short-easy-1",
            "--conditions",
            "optical",
            "--set",
            f"bench.adapter={torch_path}",
            "--output-dir",
            str(out),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["conventions"] == {"adapter_layout": "published", "pixels": "published"}
    assert summary["conditions"]["optical"]["completed"] == 1
    assert summary["parameters"]["adapter"] == (48 * 32 + 32) + (32 * 64 + 64) + 2 * 64 + 4 * 64
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["conventions"]["adapter_layout"] == "published"
    assert manifest["attention_auto"] and {c["path"] for c in manifest["attention_auto"]} <= {
        "mask",
        "chunked",
        "folded",
    }
    # our own preprocessing on request, still in the published forward
    official = runner.invoke(
        app,
        [
            "bench",
            "longbench",
            "--config",
            "configs/tiny/longbench.yaml",
            "--ids",
            "syn-short-easy-1",
            "--conditions",
            "optical",
            "--set",
            f"bench.adapter={torch_path}",
            "--set",
            "deepencoder.pixels=official",
            "--output-dir",
            str(tmp_path / "o"),
            "--json",
        ],
    )
    assert official.exit_code == 0, official.output
    assert json.loads(official.stdout)["conventions"] == {"adapter_layout": "published", "pixels": "official"}


def test_offline_every_missing_download_is_named_in_the_first_error(tmp_path, monkeypatch):
    """The quick-start command offline with an empty cache: one error naming the dataset, the adapter, Qwen3-VL
    and DeepSeek-OCR, each with its `hf download` line, before anything is created (issue 31)."""
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    out = tmp_path / "run"
    result = runner.invoke(app, ["bench", "longbench", "--num-samples", "1", "-o", str(out)])
    assert result.exit_code == 2, result.output
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip().startswith("hf download")]
    assert lines == [
        "hf download THUDM/LongBench-v2 data.json --repo-type dataset    # LongBench v2's items (bench.data)",
        "hf download Qwen/Qwen3-VL-2B-Instruct    # Qwen3-VL (vlm.source)",
        "hf download Volkopat/Qwen-VLM-Optical-Encoder qwen3_vl_2b.pth    # the adapter (bench.adapter)",
        "hf download deepseek-ai/DeepSeek-OCR    # DeepSeek-OCR's encoder (deepencoder.weights)",
    ]
    assert "4 download(s)" in result.stderr and not out.exists()
