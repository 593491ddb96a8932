"""The speed scripts run end to end at tiny size and write what they promise (timings are not checked)."""

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_script(name, *args):
    done = subprocess.run([sys.executable, str(REPO / "scripts" / name), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_bench_encoder_times_every_cpu_path_against_the_reference(tmp_path):
    out = tmp_path / "encoder.csv"
    done = run_script(
        "bench_encoder.py",
        "--size",
        "tiny",
        "--mode",
        "tiny",
        "--batch-sizes",
        "2",
        "--rounds",
        "1",
        "--device",
        "cpu",
        "--output",
        str(out),
    )
    table = rows(out)
    assert [r["variant"].split(" ")[0] for r in table] == ["mask", "chunked", "folded", "auto"]  # flex skipped on CPU
    assert "skipped: flex" in done.stderr and "baseline: our mask path" in done.stderr
    assert all(
        r["baseline"] == "mask" and float(r["pages_per_s"]) > 0 and float(r["max_abs_diff"]) < 1e-4 for r in table
    )
    assert table[0]["ratio_vs_baseline"] == "1.000" and "global:" in table[-1]["variant"]
    # the share of the machine's matmul rate, measured in the same run, and the load it ran under
    assert all(float(r["matmul_tflop_s"]) > 0 and float(r["matmul_share"]) > 0 for r in table)
    assert all(r["load_before"] and r["load_after"] for r in table)
    assert float(table[0]["achieved_tflop_s"]) == pytest.approx(
        float(table[0]["pages_per_s"]) * float(table[0]["tflops_per_page"]), rel=1e-2
    )


def test_bench_encoder_measures_widened_products_beside_the_dtypes_own_kernels(tmp_path):
    out = tmp_path / "encoder.csv"
    common = ["--size", "tiny", "--mode", "tiny", "--dtype", "bfloat16", "--paths", "auto", "--rounds", "1"]
    done = run_script("bench_encoder.py", *common, "--device", "cpu", "--widen", "always", "--output", str(out))
    table = rows(out)
    assert [r["variant"].split(" ")[0] for r in table] == ["mask", "auto"]  # the baseline joins the asked path
    row = table[-1]
    assert row["dtype"] == "bfloat16" and row["widened_products"] == "true"
    # every product shape measured three ways: the dtype's two kernels and widened; the ceiling is the fastest
    # way to each shape, the kernel column the dtype's kernels alone
    shapes = [line for line in done.stderr.splitlines() if line.strip().startswith("matmul bfloat16")]
    ways = [re.findall(r"(torch\.matmul|F\.linear|widened to float32) ([0-9.e+-]+)", line) for line in shapes]
    assert shapes and all(
        [name for name, _ in found] == ["torch.matmul", "F.linear", "widened to float32"] for found in ways
    )
    assert all(float(rate) > 0 for found in ways for _, rate in found)
    assert float(row["matmul_tflop_s"]) > 0 and float(row["kernel_tflop_s"]) > 0
    run_script("bench_encoder.py", *common, "--device", "cpu", "--widen", "never", "--output", str(out))
    assert {r["widened_products"] for r in rows(out)} == {"false"}


def test_bench_train_measures_each_loss_at_each_batch_size(tmp_path):
    out = tmp_path / "train.csv"
    run_script(
        "bench_train.py",
        "--size",
        "tiny",
        "--batch-sizes",
        "1,2",
        "--steps",
        "1",
        "--device",
        "cpu",
        "--output",
        str(out),
    )
    table = rows(out)
    training = [(r["variant"], r["batch"]) for r in table if r["stage"] == "training"]
    assert training == [(v, b) for b in ("1", "2") for v in ("full-logits", "label-positions", "checkpointing")]
    assert [r["variant"] for r in table if r["stage"] == "caching"] == [
        "cold (render + encode)",
        "warm (feature cache)",
    ]
    for row in (r for r in table if r["stage"] == "training"):
        assert (
            float(row["seconds"]) > 0 and float(row["peak_memory_gib"]) > 0 and float(row["ratio_vs_full_logits"]) > 0
        )
