"""scripts/compare_demo.py: two demo runs have the same numbers when every shared number agrees (timings,
memory and paths aside), and a changed result is named."""

import json
import subprocess
import sys

from conftest import REPO_ROOT

STEPS = ("render", "encode", "index", "search_energy", "search_cosine", "sweep")


def write_run(directory, sweep_mrr: float, seconds: float) -> None:
    directory.mkdir()
    for step in STEPS:
        report = {"pages": 2, "seconds": seconds, "output_dir": f"/{directory.name}"}
        if step == "sweep":
            report["baselines"] = {"cosine": {"mrr": sweep_mrr, "build_seconds": seconds, "peak_memory_gib": seconds}}
        text = json.dumps(report)
        if step.startswith("search"):  # JSON lines, as index search --json prints them
            text = "\n".join(json.dumps({"rank": rank, "score": 0.5 / rank}) for rank in (1, 2)) + "\n"
        (directory / f"{step}.json").write_text(text)


def compare(before, after):
    script = REPO_ROOT / "scripts" / "compare_demo.py"
    return subprocess.run([sys.executable, str(script), str(before), str(after)], capture_output=True, text=True)


def test_timings_and_paths_differ_but_the_numbers_are_the_same(tmp_path):
    write_run(tmp_path / "a", 0.5, 1.0)
    write_run(tmp_path / "b", 0.5 + 1e-17, 9.0)
    done = compare(tmp_path / "a", tmp_path / "b")
    assert done.returncode == 0 and "same numbers" in done.stdout, done.stdout


def test_a_changed_result_is_named_and_fails(tmp_path):
    write_run(tmp_path / "a", 0.5, 1.0)
    write_run(tmp_path / "b", 0.51, 1.0)
    done = compare(tmp_path / "a", tmp_path / "b")
    assert done.returncode == 1 and "sweep: baselines.cosine.mrr: 0.5 -> 0.51" in done.stdout
