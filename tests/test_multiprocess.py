"""Two CPU processes under `accelerate launch` (gloo): encode, bench and train-adapter agree with one process.

`accelerate launch --cpu --num_processes 2` starts ONE process (its CPU launcher needs mpirun);
`--multi_gpu --num_processes 2` starts two through torchrun, and with runtime.device=cpu they
join over gloo. Each launch costs a few seconds of start-up per process.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from optical_cli.cli import app
from optical_cli.encode.features import FeatureFiles
from optical_cli.encode.page_cache import PageFeatureCache

REPO = Path(__file__).resolve().parent.parent
ACCELERATE = Path(sys.executable).with_name("accelerate")
MEASURED = {
    "latency_s",
    "render_s",
    "encode_s",
    "adapter_s",
    "prefill_s",
    "decode_s",
    "peak_memory_gib",
}  # differ run to run


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_failure(result: subprocess.CompletedProcess) -> str:
    """What a failed launch printed: each process's own fatal lines first (the launcher's traceback
    that ends stderr would otherwise push them out of the message), then the tails."""
    fatal = [line for line in result.stderr.splitlines() if "terminate" in line or "Fatal" in line or "Error" in line]
    return (
        "\n".join(fatal[:20])
        + "\n--- stdout ---\n"
        + result.stdout[-2000:]
        + "\n--- stderr ---\n"
        + result.stderr[-3000:]
    )


def run_accelerate(launcher_flags: list[str], args) -> subprocess.CompletedProcess:
    """`accelerate launch` of the CLI with ``launcher_flags``, offline and one thread per process."""
    command = [
        str(ACCELERATE),
        "launch",
        *launcher_flags,
        "--main_process_port",
        str(free_port()),
        "-m",
        "optical_cli.cli",
        *map(str, args),
    ]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, launch_failure(result)
    return result


def launch(*args: str, processes: int = 2) -> subprocess.CompletedProcess:
    flags = ["--multi_gpu", "--num_processes", str(processes), "--num_machines", "1"]
    return run_accelerate([*flags, "--mixed_precision", "no", "--dynamo_backend", "no"], args)


def one_process(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    records = [json.loads(line) for line in (REPO / "tests" / "data" / "cves_200.jsonl").read_text().splitlines()]
    path = tmp_path_factory.mktemp("text") / "cves.txt"
    path.write_text("\n\n".join(r["description"] for r in records[:60]), encoding="utf-8")  # seven tiny pages
    return path


def test_two_processes_encode_the_features_of_one(text, tmp_path):
    # a pinned attention path: under `auto` each process times its own, and paths agree only to rounding
    args = [
        "encode",
        "--config",
        "configs/tiny/encode.yaml",
        "--text",
        text,
        "--set",
        "encode.shard_pages=2",
        "--set",
        "deepencoder.attention=mask",
    ]
    launch(*args, "--output-dir", tmp_path / "two")
    one_process(*args, "--output-dir", tmp_path / "one")
    two, one = FeatureFiles.open(tmp_path / "two"), FeatureFiles.open(tmp_path / "one")
    assert torch.equal(two.load()[0], one.load()[0]) and len(one) >= 5
    assert [p.name for p in two.files] == [p.name for p in one.files]
    for name in ("pages.jsonl", "documents.jsonl"):
        assert (tmp_path / "two" / name).read_text() == (tmp_path / "one" / name).read_text()
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["processes"] == 2 and manifest["result"]["processes"] == 2 and manifest["status"] == "ok"
    shards = len(one.files)
    assert [(r["process"], r["shards"]) for r in manifest["process_pages"]] == [
        (0, list(range(1, shards + 1, 2))),
        (1, list(range(2, shards + 1, 2))),
    ]
    assert sum(r["pages"] for r in manifest["process_pages"]) == len(one)


def read_items_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return [{k: v for k, v in row.items() if k not in MEASURED} for row in csv.DictReader(handle)]


def test_two_processes_answer_longbench_as_one(tmp_path):
    args = [
        "bench",
        "longbench",
        "--config",
        "configs/tiny/longbench.yaml",
        "--ids",
        "syn-short-easy-1,syn-long-hard-1",
        "--set",
        "deepencoder.attention=mask",
    ]  # one item per process
    two = launch(*args, "--output-dir", tmp_path / "two", "--json")
    one = one_process(*args, "--output-dir", tmp_path / "one", "--json")
    rows = read_items_csv(tmp_path / "two" / "items.csv")
    assert len(rows) == 8 and rows == read_items_csv(tmp_path / "one" / "items.csv")
    assert not list((tmp_path / "two").glob("items.part-*"))
    assert (
        json.loads(two.stdout)["conditions"].keys() == json.loads(one.stdout)["conditions"].keys()
    )  # one JSON document
    assert json.loads((tmp_path / "two" / "manifest.json").read_text())["processes"] == 2


def test_two_processes_train_the_adapter_on_the_streamed_cache(tmp_path):
    out = tmp_path / "run"
    result = launch(
        "train-adapter",
        "--config",
        "configs/tiny/train-adapter.yaml",
        "--output-dir",
        out,
        "--json",
        "--set",
        f"data.source={REPO / 'tests' / 'data' / 'cves_200.jsonl'}",
        "--set",
        f"data.cache_dir={tmp_path / 'cache'}",
        "--set",
        "data.max_documents=8",
        "--set",
        "data.max_text_tokens=16",
        "--set",
        "train.max_steps=2",
        "--set",
        "train.batch_size=2",
        "--set",
        "train.read_pages=0",
        "--set",
        "train.log_with=[tensorboard]",
    )
    summary = json.loads(result.stdout)
    assert summary["steps"] == 2 and summary["cache_hit"] is False and (out / "adapter.safetensors").is_file()
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1  # only the main process logs
    assert json.loads((out / "manifest.json").read_text())["processes"] == 2
    corpora = list((tmp_path / "cache" / "corpora").glob("*.json"))  # training and held-out documents, packed apart
    assert len(corpora) == 2
    pages = PageFeatureCache.at(tmp_path / "cache", 1.0).entries()  # the page-feature cache: one entry a page
    assert len(pages) == summary["train_pages"] + summary["eval_pages"]


def fsdp_launch(*args: str) -> subprocess.CompletedProcess:
    return run_accelerate(["--config_file", "configs/accelerate/fsdp.yaml", "--num_processes", "2"], args)


def test_fsdp_shards_the_frozen_llm_and_trains_as_ddp_does(tmp_path):
    """configs/accelerate/fsdp.yaml on 2 gloo processes: each holds half the language model, the
    adapter and LoRA train to the weights DDP gives, and --resume from a checkpoint is exact."""
    from safetensors.torch import load_file

    settings = [
        "train-adapter",
        "--config",
        "configs/tiny/train-adapter.yaml",
        "--json",
        "--set",
        "runtime.device=cpu",
        "--set",
        f"data.source={REPO / 'tests' / 'data' / 'cves_200.jsonl'}",
        "--set",
        f"data.cache_dir={tmp_path / 'cache'}",
        "--set",
        "data.max_documents=12",
        "--set",
        "data.max_text_tokens=16",
        "--set",
        "train.max_steps=2",
        "--set",
        "train.batch_size=2",
        "--set",
        "train.checkpoint_every=1",
        "--set",
        "train.lora.rank=2",
        "--set",
        "train.read_pages=1",
        "--set",
        "train.read_max_new_tokens=4",
    ]
    fsdp = json.loads(fsdp_launch(*settings, "--output-dir", tmp_path / "fsdp").stdout)
    ddp = json.loads(launch(*settings, "--output-dir", tmp_path / "ddp").stdout)
    assert fsdp["layout"] == "fsdp" and ddp["layout"] == "ddp"
    assert fsdp["parameters"] == ddp["parameters"]
    # each process holds half of every layer and of the embedding and head tables (the tiny model's
    # tied head becomes a second table, sharded too)
    untied = ddp["language_model_local_parameters"] + 151_936 * 64
    assert fsdp["language_model_local_parameters"] < 0.51 * untied
    assert (tmp_path / "fsdp" / "reading.jsonl").is_file()

    def weights(run):
        adapter = load_file(str(tmp_path / run / "adapter.safetensors"))
        return {**adapter, **load_file(str(tmp_path / run / "lora" / "adapter_model.safetensors"))}

    for name, tensor in weights("ddp").items():
        torch.testing.assert_close(weights("fsdp")[name], tensor, rtol=1e-5, atol=1e-6, msg=name)

    straight = weights("fsdp")
    fsdp_launch("train-adapter", "--resume", tmp_path / "fsdp" / "checkpoints" / "step-0000001", "--json")
    for name, tensor in weights("fsdp").items():
        assert torch.equal(tensor, straight[name]), name
