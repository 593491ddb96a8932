"""LongBench v2 loading, validation and seeded stratified sampling (synthetic fixture)."""

import json
from collections import Counter
from pathlib import Path

import pytest

from optical_cli.bench.data import HUB_ID, load_items, select_items, stratified_sample
from optical_cli.errors import InputError

FIXTURE = Path(__file__).parent / "data" / "longbench_fixture.jsonl"


def _records():
    return [json.loads(line) for line in FIXTURE.read_text().splitlines()]


def _write(tmp_path, records, name="data.jsonl"):
    path = tmp_path / name
    if name.endswith(".jsonl"):
        path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    else:
        path.write_text(json.dumps(records))
    return path


def test_fixture_loads_with_all_strata():
    items = load_items(str(FIXTURE))
    assert len(items) == 12
    assert Counter((i.length, i.difficulty) for i in items) == {
        (length, d): 2 for length in ("short", "medium", "long") for d in ("easy", "hard")
    }
    first = items[0]
    assert first.id == "syn-short-easy-1" and first.answer == "B" and first.choices[1] == "97"


def test_json_list_same_as_jsonl(tmp_path):
    path = _write(tmp_path, _records(), "data.json")
    assert load_items(str(path)) == load_items(str(FIXTURE))


def test_missing_field_names_the_item(tmp_path):
    records = _records()
    del records[3]["choice_C"]
    with pytest.raises(InputError, match="syn-short-hard-2.*choice_C"):
        load_items(str(_write(tmp_path, records)))


def test_answer_outside_a_to_d_names_the_item(tmp_path):
    records = _records()
    records[5]["answer"] = "E"
    with pytest.raises(InputError, match="syn-medium-easy-2.*'E'.*A, B, C, D"):
        load_items(str(_write(tmp_path, records)))


def test_offline_hub_error_names_the_id_and_the_fix(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match=f"{HUB_ID}.*bench.data"):
        load_items("THUDM/LongBench-v2-not-cached")


def test_stratified_sample_is_deterministic_and_proportional():
    items = load_items(str(FIXTURE))
    first = stratified_sample(items, 6, seed=3)
    again = stratified_sample(list(reversed(items)), 6, seed=3)  # input order must not matter
    assert [i.id for i in first] == [i.id for i in again]
    assert Counter((i.length, i.difficulty) for i in first) == {
        (length, d): 1 for length in ("short", "medium", "long") for d in ("easy", "hard")
    }
    draws = {tuple(i.id for i in stratified_sample(items, 6, seed=s)) for s in range(8)}
    assert len(draws) > 1  # the seed matters


def test_sample_larger_than_data_is_an_error():
    items = load_items(str(FIXTURE))
    with pytest.raises(InputError, match="--num-samples 13 is larger than the 12"):
        stratified_sample(items, 13, seed=0)


def test_filters_and_ids():
    items = load_items(str(FIXTURE))
    long_hard = select_items(items, num_samples=None, lengths=["long"], difficulties=["hard"])
    assert {i.id for i in long_hard} == {"syn-long-hard-1", "syn-long-hard-2"}
    picked = select_items(items, num_samples=3, ids=["syn-long-easy-2", "syn-short-easy-1"])
    assert [i.id for i in picked] == ["syn-long-easy-2", "syn-short-easy-1"]
    assert {i.domain for i in select_items(items, num_samples=None, domains=["multi-document qa"])} == {
        "Multi-Document QA"
    }
    with pytest.raises(InputError, match="unknown item id"):
        select_items(items, num_samples=None, ids=["nope"])
