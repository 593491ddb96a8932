"""scripts/gpu_check.sh --dry-run: every GPU step at tiny sizes on the CPU, every one run."""

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STEPS = ("parity", "encoder", "feed", "cost", "train", "ruler", "vllm", "serve")
NEEDS_VLLM = ("vllm", "serve")


def test_dry_run_measures_parity_and_accounts_for_every_step(tmp_path):
    result = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--dry-run", "--output-dir", str(tmp_path)],
        cwd=REPO,
        env={**os.environ, "PYTHON": sys.executable, "VLLM_PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "planned budget: parity" in result.stdout and "== summary" in result.stdout
    with open(tmp_path / "steps.csv", newline="") as handle:
        steps = {row["step"]: row for row in csv.DictReader(handle)}
    assert tuple(steps) == STEPS
    has_vllm = importlib.util.find_spec("vllm") is not None
    for name, row in steps.items():  # every step's script has landed: only vLLM's may be skipped, where it is missing
        if name in NEEDS_VLLM and not has_vllm:
            assert row["status"] == "skipped" and "vLLM is not installed" in result.stdout, row
            continue
        assert row["status"] == "ok" and (tmp_path / f"{name}.csv").is_file(), row
    with open(tmp_path / "parity.csv", newline="") as handle:
        parity = list(csv.DictReader(handle))
    assert {r["dtype"] for r in parity} == {"float32", "bfloat16"} and all(r["passed"] == "True" for r in parity)
    assert {r["attention"] for r in parity} >= {"mask", "folded"}
    assert all(1e-4 < float(r["centred_rel_error"]) < 0.05 for r in parity if r["dtype"] == "bfloat16")
