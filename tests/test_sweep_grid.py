"""Grid parsing, the resumable cell log, the CSV schema and the heatmap file."""

import csv

import numpy as np
import pytest

from optical_cli.errors import InputError
from optical_cli.records import RecordLog
from optical_cli.sweep import grid
from optical_cli.sweep.metrics import METRIC_NAMES
from optical_cli.sweep.plots import metric_grid, write_heatmaps


def test_parse_lists():
    assert grid.parse_eta_list("0.05, 0.1,0.15,0.2") == [0.05, 0.1, 0.15, 0.2]
    assert grid.parse_steps_list("2,4,6,8") == [2, 4, 6, 8]
    assert grid.parse_steps_list("4,4,2") == [4, 2]  # repeats dropped, order kept


@pytest.mark.parametrize(
    "text, message",
    [
        ("0.1,abc", "'abc' is not a number"),
        ("", "empty list"),
        (" , ", "empty list"),
        ("0.1,,0.2", "empty entry"),
        ("-0.1", r"must be a number in \(0, 1\]"),
        ("nan", r"must be a number in \(0, 1\]"),
        ("0", "eta 0 is no diffusion"),
        ("1.5", r"must be a number in \(0, 1\]"),
    ],
)
def test_bad_eta_lists(text, message):
    with pytest.raises(InputError, match=message):
        grid.parse_eta_list(text)


@pytest.mark.parametrize(
    "text, message",
    [
        ("2,x", "not a whole number"),
        ("2.5", "not a whole number"),
        ("-1", ">= 1"),
        ("0", "0 steps is no diffusion"),
        ("", "empty list"),
    ],
)
def test_bad_steps_lists(text, message):
    with pytest.raises(InputError, match=message):
        grid.parse_steps_list(text)


def _row(method, eta=None, steps=None, value=0.5):
    row = {
        "method": method,
        "eta": eta,
        "steps": steps,
        "build_seconds": 0.1,
        "search_seconds": 0.2,
        "n_queries": 3,
        "n_items": 9,
    }
    for name in METRIC_NAMES:
        row.update({name: value, f"{name}_low": value - 0.1, f"{name}_high": value + 0.1})
    row["per_query"] = {name: [value] * 3 for name in METRIC_NAMES}
    return row


def test_cell_log_resumes_and_refuses_other_setups(tmp_path):
    path = tmp_path / "cells.jsonl"
    log = grid.open_cell_log(path, "fp1", resume=False)
    calls = []

    def evaluate(cell):
        calls.append(cell)
        return {k: v for k, v in _row("energy").items() if k not in ("method", "eta", "steps")}

    cells = grid.grid_cells([0.1, 0.2], [2, 4])
    grid.run_cells(log, cells[:3], evaluate)
    assert len(calls) == 3
    resumed = grid.open_cell_log(path, "fp1", resume=True)
    skipped = []
    grid.run_cells(resumed, cells, evaluate, on_done=lambda record, was_skipped: skipped.append(was_skipped))
    assert len(calls) == 4 and skipped == [True, True, True, False]
    assert len(RecordLog(path).read()) == 4
    with pytest.raises(InputError, match="different setup"):
        grid.open_cell_log(path, "fp2", resume=True)
    grid.open_cell_log(path, "fp2", resume=False)  # a fresh run starts over
    assert not path.exists()


def test_sweep_csv_schema_and_per_query_csv(tmp_path):
    rows = [_row("cosine", value=0.4), _row("energy", 0.1, 2), _row("energy", 0.1, 4, value=0.6)]
    grid.write_sweep_csv(tmp_path / "sweep.csv", rows)
    with open(tmp_path / "sweep.csv") as handle:
        table = list(csv.DictReader(handle))
    required = {
        "method",
        "eta",
        "steps",
        "mrr",
        "map_cut_20",
        "ndcg_at_10",
        "recall_at_10",
        "recall_at_20",
        "precision_at_10",
        "build_seconds",
    }
    assert required <= set(table[0])
    assert "ndcg_at_10_low" in table[0] and "recall_at_20_high" in table[0]
    assert [r["method"] for r in table] == ["cosine", "energy", "energy"]
    assert table[0]["eta"] == "" and table[2]["steps"] == "4" and float(table[2]["mrr"]) == 0.6
    grid.write_per_query_csv(tmp_path / "per_query.csv", rows, ["q1", "q2", "q3"])
    with open(tmp_path / "per_query.csv") as handle:
        per_query = list(csv.DictReader(handle))
    assert len(per_query) == 9 and per_query[3]["query_id"] == "q1" and per_query[3]["eta"] == "0.1"


def test_heatmaps_written(tmp_path):
    rows = [_row("energy", eta, steps, value=0.1 * i) for i, (eta, steps) in enumerate([(0.1, 2), (0.1, 4), (0.2, 2)])]
    assert np.isnan(metric_grid(rows, "mrr", [0.1, 0.2], [2, 4])[1, 1])
    out = write_heatmaps(tmp_path / "heatmaps.png", rows, [0.1, 0.2], [2, 4], baseline=_row("cosine", value=0.15))
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert not list(tmp_path.glob(".*tmp*"))  # no temp file left behind
