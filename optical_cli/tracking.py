"""Experiment trackers: accelerate's own (TensorBoard, MLflow, W&B, trackio, Comet, Aim, ClearML,
DVCLive, SwanLab), started in their offline forms inside the run directory; the one place that
brings them in (accelerate imports each tracker's package when it starts; MLflow's store is set here).

Where each writes by default (the tracker's own environment variable wins):

- tensorboard: ``RUN/tensorboard/`` event files; a resume appends there with ``purge_step``, so the
  steps an interrupted attempt logged after its last checkpoint are hidden, as they are cut from
  metrics.jsonl;
- mlflow: ``RUN/mlflow.db``, a SQLite store (MLflow 3 refuses its old file store unless told
  otherwise), artifacts under ``RUN/mlflow-artifacts/`` (``MLFLOW_TRACKING_URI`` wins); a resume
  continues the same MLflow run, which keeps both values of a step logged twice (MLflow cannot
  delete a metric value);
- wandb: ``RUN/wandb/``, offline (``WANDB_MODE`` wins); a resume reuses the run id, so ``wandb sync``
  uploads every attempt into one run;
- trackio: ``RUN/trackio/`` (``TRACKIO_DIR`` wins; trackio reads it once per process); a resume
  continues the run of the same name;
- aim, dvclive: ``RUN/aim/``, ``RUN/dvclive/``; comet_ml, clearml, swanlab: as their own settings say.

The ids a resume needs are kept in ``RUN/trackers.json``. Only the caller's main process opens
trackers (``accelerate launch``: the others log nothing). Trackers print to stdout; here that goes
to stderr, so ``--json`` output stays one document.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterator

from accelerate import PartialState
from accelerate.tracking import LOGGER_TYPE_TO_CLASS, GeneralTracker

from .artifacts import atomic_write_json

STATE_FILE = "trackers.json"
MLFLOW_STORE = "mlflow.db"
# what a run directory holds once its trackers have written (for the manifest's artifacts)
TRACKER_ARTIFACTS = (STATE_FILE, "tensorboard", MLFLOW_STORE, "mlflow-artifacts", "wandb", "trackio", "aim", "dvclive")


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    with contextlib.redirect_stdout(sys.stderr):
        yield


_MLFLOW_URIS_SET: set[str] = set()  # set_tracking_uri also exports MLFLOW_TRACKING_URI: tell ours from the user's


def _mlflow():
    """mlflow (the mlflow extra), imported in this one place: its tracker keeps a process-wide store and run."""
    import mlflow  # noqa: PLC0415 - the mlflow extra's one import (optional; seconds to import)

    return mlflow


def _use_mlflow_store(run_dir: Path) -> None:
    """MLflow's tracking store: ``RUN/mlflow.db`` unless the user's ``MLFLOW_TRACKING_URI`` names another."""
    for name in ("mlflow", "alembic"):  # their set-up chatter, not ours to show
        logging.getLogger(name).setLevel(logging.WARNING)
    if os.environ.get("MLFLOW_TRACKING_URI", "") in _MLFLOW_URIS_SET | {""}:
        uri = f"sqlite:///{(run_dir / MLFLOW_STORE).resolve()}"
        _MLFLOW_URIS_SET.add(uri)
        _mlflow().set_tracking_uri(uri)


def _make(name: str, run_dir: Path, project: str, saved: dict, resume_step: int | None) -> GeneralTracker:
    """accelerate's tracker ``name``, pointed at the run directory (``saved``: its ids from an earlier attempt)."""
    tracker_class = LOGGER_TYPE_TO_CLASS[name]
    if name == "tensorboard":
        purge = {} if resume_step is None else {"purge_step": resume_step + 1}
        return tracker_class("tensorboard", str(run_dir), **purge)
    if name == "mlflow":
        _use_mlflow_store(run_dir)
        return tracker_class(
            experiment_name=project,
            logging_dir=str((run_dir / "mlflow-artifacts").resolve()),
            run_id=saved.get("run_id"),
            run_name=run_dir.name,
        )
    if name == "wandb":
        mode = os.environ.get("WANDB_MODE", "offline")
        return tracker_class(
            project, dir=str(run_dir), mode=mode, id=saved.get("id"), resume="allow", name=run_dir.name
        )
    if name == "trackio":
        os.environ.setdefault("TRACKIO_DIR", str((run_dir / "trackio").resolve()))
        return tracker_class(project, name=saved.get("name", run_dir.name), resume="allow")
    if name == "dvclive":
        return tracker_class(project, dir=str(run_dir / "dvclive"), resume=resume_step is not None)
    if tracker_class.requires_logging_directory:
        return tracker_class(project, str(run_dir / name))
    return tracker_class(project)


def _resume_ids(tracker: GeneralTracker) -> dict:
    """What a resume needs to continue ``tracker``'s run."""
    if tracker.name == "mlflow":
        return {"run_id": tracker.active_run.info.run_id}
    if tracker.name == "wandb":
        return {"id": tracker.run.id}
    if tracker.name == "trackio":
        return {"name": tracker.run.name}
    return {}


def flat_numbers(document: dict, prefix: str = "") -> dict[str, float]:
    """The finite numbers of a nested document, keyed by their path (``conditions/optical/accuracy``;
    characters some trackers refuse in a name, such as ``=`` or ``,``, become ``_``)."""
    numbers: dict[str, float] = {}
    for key, value in document.items():
        name = prefix + re.sub(r"[^\w./ -]", "_", str(key))
        if isinstance(value, dict):
            numbers.update(flat_numbers(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            numbers[name] = value
    return numbers


def flat_settings(document: dict, prefix: str = "") -> dict[str, Any]:
    """A config as trackers take hyperparameters: dotted keys, scalar values (lists and None as text)."""
    settings: dict[str, Any] = {}
    for key, value in document.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            settings.update(flat_settings(value, name + "."))
        else:
            settings[name] = value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
    return settings


class Trackers:
    """The trackers of one run; empty when none are configured (and in every process but the main one)."""

    def __init__(self, trackers: list[GeneralTracker] | None = None):
        self.trackers = trackers or []

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def log(self, values: dict[str, float], step: int) -> None:
        values = {key: value for key, value in values.items() if value is not None}
        with _stdout_to_stderr():
            for tracker in self.trackers:
                tracker.log(values, step=step)

    def finish(self, failed: bool = False) -> None:
        """Close every tracker; a failed run's MLflow run ends FAILED (its other trackers just close)."""
        with _stdout_to_stderr():
            for tracker in self.trackers:
                if failed and tracker.name == "mlflow":
                    _mlflow().end_run("FAILED")
                else:
                    tracker.finish()
        self.trackers = []


def open_trackers(
    names: list[str], run_dir: Path, project: str, settings: dict | None = None, resume_step: int | None = None
) -> Trackers:
    """Start ``names`` (accelerate's tracker names) for the run in ``run_dir``. ``resume_step``: the step a
    resumed run continues from (the earlier attempt's tracker runs continue; nothing is re-logged
    before it); ``settings``: the config, stored as hyperparameters by a fresh run."""
    if not names:
        return Trackers()
    PartialState()  # accelerate's trackers log through its logger, which needs its state (made here outside training)
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path = run_dir / STATE_FILE
    saved = json.loads(state_path.read_text(encoding="utf-8")) if state_path.is_file() else {}
    trackers = [_make(name, run_dir, project, saved.get(name, {}), resume_step) for name in names]
    with _stdout_to_stderr():
        for tracker in trackers:
            tracker.start()
            if settings and resume_step is None:
                tracker.store_init_configuration(flat_settings(settings))
    atomic_write_json(state_path, {**saved, **{tracker.name: _resume_ids(tracker) for tracker in trackers}})
    return Trackers(trackers)


def log_summary(names: list[str], run_dir: Path, project: str, summary: dict) -> None:
    """A finished run's summary (its numbers, by path) logged once, at step 0, to ``names``."""
    if not names:
        return
    resumed = (run_dir / STATE_FILE).is_file()  # a resumed run's summary replaces the one logged before
    trackers = open_trackers(names, run_dir, project, resume_step=-1 if resumed else None)
    try:
        trackers.log(flat_numbers(summary), step=0)
    finally:
        trackers.finish()
