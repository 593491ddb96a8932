"""train-adapter's metrics in the trackers people watch: TensorBoard and MLflow, in the run directory,
read back with each tracker's own reader; a resume continues the same tracker runs; a tracker that is
not installed is one line, exit 2, before anything is written."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_sweep_cli import _invoke as sweep
from test_sweep_cli import tiny_corpus  # noqa: F401 - the sweep's planted corpus, made a fixture of this module too
from typer.testing import CliRunner

from optical_cli.artifacts import start_run
from optical_cli.cli import app
from optical_cli.config import schema as config_schema
from optical_cli.config.registry import dump_config, load_config
from optical_cli.records import read_records
from optical_cli.tracking import flat_numbers, log_summary
from optical_cli.train.checkpoints import open_checkpoint
from optical_cli.train.loop import train_adapter
from optical_cli.train.setup import load_reader, training_runtime

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "tiny" / "train-adapter.yaml"
TINY_BENCH = REPO / "configs" / "tiny" / "longbench.yaml"
CVES = REPO / "tests" / "data" / "cves_200.jsonl"
SETTINGS = [
    f"data.source={CVES}",
    "data.max_documents=10",
    "data.max_text_tokens=16",
    "train.batch_size=2",
    "train.read_max_new_tokens=4",
    "train.log_with=[tensorboard,mlflow]",
]


def tensorboard_scalars(run: Path, tag: str) -> dict[int, float]:
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return {event.step: event.value for event in events.Scalars(tag)}


def mlflow_history(run: Path, key: str) -> tuple[str, list[tuple[int, float]]]:
    client = MlflowClient(f"sqlite:///{run / 'mlflow.db'}")
    [experiment] = client.search_experiments(filter_string="name = 'train-adapter'")
    [found] = client.search_runs([experiment.experiment_id])
    return found.info.run_id, [(m.step, m.value) for m in client.get_metric_history(found.info.run_id, key)]


def test_a_tiny_run_logs_its_metrics_to_tensorboard_and_mlflow_in_the_run_directory(tmp_path):
    run = tmp_path / "run"
    sets = [*SETTINGS, f"data.cache_dir={tmp_path / 'cache'}", "train.max_steps=5", "train.eval_every=3"]
    args = ["train-adapter", "-c", str(TINY), "-o", str(run), "--json", "--set", "train.log_every=2", "--set"]
    result = CliRunner().invoke(app, args + "\n--set\n".join(sets + ["train.read_pages=1"]).split("\n"))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # stdout holds the JSON document only: the trackers' chatter is on stderr
    metrics = {m["step"]: m for m in read_records(run / "metrics.jsonl")}
    logged = [2, 3, 4, 5]  # every 2nd step, the eval step 3 and the last step
    assert tensorboard_scalars(run, "train/loss") == {step: pytest.approx(metrics[step]["loss"]) for step in logged}
    assert tensorboard_scalars(run, "eval/loss") == {
        step: pytest.approx(metrics[step]["eval_loss"]) for step in (0, 3, 5)
    }
    throughput = tensorboard_scalars(run, "train/tokens_per_s")
    assert throughput == {step: pytest.approx(metrics[step]["tokens_per_s"]) for step in logged}
    assert all(value > 0 for value in throughput.values())
    assert set(tensorboard_scalars(run, "memory/peak_cpu_rss_gib")) == {0, *logged}
    assert tensorboard_scalars(run, "reading/cer") == {5: pytest.approx(summary["reading"]["cer"])}

    run_id, history = mlflow_history(run, "train/loss")
    assert history == [(step, pytest.approx(metrics[step]["loss"])) for step in logged]
    assert json.loads((run / "trackers.json").read_text())["mlflow"]["run_id"] == run_id
    client = MlflowClient(f"sqlite:///{run / 'mlflow.db'}")
    assert client.get_run(run_id).data.params["train.lr"] == str(load_config("train-adapter", TINY).train.lr)
    manifest = json.loads((run / "manifest.json").read_text())
    assert {"tensorboard", "mlflow.db", "trackers.json"} <= set(manifest["artifacts"])


def test_resume_continues_the_same_tracker_runs(tmp_path):
    sets = [*SETTINGS, f"data.cache_dir={tmp_path / 'cache'}", "train.max_steps=4", "train.checkpoint_every=2"]
    cfg = load_config("train-adapter", TINY, [*sets, "train.read_pages=0", "train.eval_every=100"])
    runtime = training_runtime(cfg.runtime)
    reader = load_reader(cfg, runtime)
    run = tmp_path / "run"

    def crash_after_step_3(event):
        if event["event"] == "step" and event["step"] == 3:
            raise RuntimeError("simulated crash")

    with start_run("train-adapter", dump_config(cfg), output_dir=run):
        with pytest.raises(RuntimeError, match="simulated"):
            train_adapter(cfg, run, runtime, reader, progress=crash_after_step_3)
    first_id, _ = mlflow_history(run, "train/loss")
    assert MlflowClient(f"sqlite:///{run / 'mlflow.db'}").get_run(first_id).info.status == "FAILED"
    train_adapter(cfg, run, runtime, reader, resume=open_checkpoint(run))
    metrics = {m["step"]: m["loss"] for m in read_records(run / "metrics.jsonl") if m["loss"] is not None}
    assert sorted(metrics) == [1, 2, 3, 4]
    # TensorBoard hides what the crashed attempt logged after its checkpoint (step 3), as metrics.jsonl drops it
    assert tensorboard_scalars(run, "train/loss") == {step: pytest.approx(loss) for step, loss in metrics.items()}
    run_id, history = mlflow_history(run, "train/loss")  # one MLflow run, continued
    assert run_id == first_id and [step for step, _ in history] == [1, 2, 3, 3, 4]
    assert dict(history) == {step: pytest.approx(loss) for step, loss in metrics.items()}  # a step's last value
    assert MlflowClient(f"sqlite:///{run / 'mlflow.db'}").get_run(run_id).info.status == "FINISHED"


def test_a_tracker_that_is_not_installed_is_one_line_exit_2_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(
        config_schema, "module_installed", lambda module: module not in ("wandb", "tensorboard", "tensorboardX")
    )
    out = tmp_path / "out"
    for tracker, extra in (("wandb", "optical[wandb]"), ("tensorboard", "optical[tensorboard]")):
        result = CliRunner().invoke(
            app, ["train-adapter", "-c", str(TINY), "-o", str(out), "--set", f"train.log_with=[mlflow,{tracker}]"]
        )
        assert result.exit_code == 2, result.output
        [line] = result.stderr.strip().splitlines()
        assert f"{tracker} is not installed; pip install '{extra}'" in line and "train.log_with" in line
        assert not out.exists()
    result = CliRunner().invoke(app, ["bench", "longbench", "-o", str(out), "--set", "bench.log_with=[wandb]"])
    assert result.exit_code == 2 and "pip install 'optical[wandb]'" in result.stderr and not out.exists()


def test_a_summary_is_logged_once_by_its_paths(tmp_path):
    summary = {"conditions": {"optical": {"accuracy": 0.5, "n": 4, "label": "x", "ok": True}}, "chance": 0.25}
    assert flat_numbers(summary) == {"conditions/optical/accuracy": 0.5, "conditions/optical/n": 4, "chance": 0.25}
    log_summary(["tensorboard"], tmp_path, "bench-longbench", summary)
    assert tensorboard_scalars(tmp_path, "conditions/optical/accuracy") == {0: 0.5}
    log_summary(["tensorboard"], tmp_path, "bench-longbench", {**summary, "chance": 0.3})  # a resumed run's summary
    assert tensorboard_scalars(tmp_path, "chance") == {0: pytest.approx(0.3)}


def test_bench_and_sweep_log_their_summaries_to_the_trackers_of_their_run(tmp_path, request):
    lb = tmp_path / "lb"
    args = ["bench", "longbench", "-c", str(TINY_BENCH), "-o", str(lb), "--json", "--num-samples", "2"]
    result = CliRunner().invoke(
        app, [*args, "--conditions", "native,no-context", "--set", "bench.log_with=[tensorboard]"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert tensorboard_scalars(lb, "conditions/native/accuracy") == {0: summary["conditions"]["native"]["accuracy"]}

    corpus, cache = request.getfixturevalue("tiny_corpus")
    extra = [
        "--eta",
        "0.1",
        "--steps",
        "4",
        "--json",
        "--set",
        "tuning.enabled=false",
        "--set",
        "sweep.log_with=[mlflow]",
    ]
    result = sweep(corpus, cache, tmp_path / "sweep", *extra)
    assert result.exit_code == 0, result.output
    numbers = flat_numbers(json.loads(result.stdout))
    run_id = json.loads((tmp_path / "sweep" / "trackers.json").read_text())["mlflow"]["run_id"]
    logged = MlflowClient(f"sqlite:///{tmp_path / 'sweep' / 'mlflow.db'}").get_run(run_id).data.metrics
    assert len(logged) > 10 and logged == pytest.approx(numbers)


def test_the_tracker_overhead_script_writes_ratios_against_its_baseline(tmp_path):
    output = tmp_path / "trackers.csv"
    command = [sys.executable, str(REPO / "scripts" / "bench_trackers.py"), "--rounds", "1", "--steps", "1"]
    command += ["--trackers", "tensorboard", "--output", str(output), "--set", "data.max_documents=6"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {row["variant"]: row for row in csv.DictReader(output.open())}
    assert set(rows) == {"none", "tensorboard"} and float(rows["none"]["wall_ratio"]) == 1
    assert float(rows["tensorboard"]["step_s"]) > 0 and float(rows["tensorboard"]["load_before"]) >= 0
    assert "load average" in done.stdout
