"""The benchmarks' own scorers against their official code's output on the same cases, and by hand.

tests/data/official_scorer_cases.json holds our own cases with the scores the official code gave them,
run side by side outside this repository: THUDM/LongBench ``LongBench/metrics.py`` with ``eval.py``'s
per-item rule (rouge 1.0.1, fuzzywuzzy 0.18.0 without python-Levenshtein, jieba 0.42.1), NVIDIA/RULER
``scripts/eval/synthetic/constants.py`` with ``evaluate.py``'s post-processing, and the MRCR grader as
Glyph's client writes it (thu-coai/Glyph ``evaluation/mrcr/scripts/post_api_mrcr.py``).
"""

import json
from pathlib import Path

import pytest

from optical_cli.bench.metrics import (
    classification_score,
    code_sim_score,
    count_score,
    longbench_v1_score,
    mrcr_grade,
    qa_f1_score,
    retrieval_score,
    rouge_l_f,
    ruler_postprocess,
    string_match_all,
    string_match_part,
    task_score,
)

CASES = json.loads((Path(__file__).parent / "data" / "official_scorer_cases.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("case", CASES["longbench_v1"], ids=lambda c: f"{c['dataset']}:{c['prediction'][:20]}")
def test_longbench_v1_scores_as_its_official_scorer(case):
    if case["dataset"] in ("multifieldqa_zh", "dureader", "vcsum"):
        pytest.importorskip("jieba")
    answers = [str(a) for a in case["answers"]]
    assert longbench_v1_score(case["dataset"], case["prediction"], answers, case["all_classes"]) == pytest.approx(
        case["official"], abs=1e-12
    )


@pytest.mark.parametrize("case", CASES["ruler"], ids=lambda c: c["prediction"][:20])
def test_ruler_scores_as_its_official_scorer(case):
    prediction = ruler_postprocess(case["prediction"])
    assert task_score([string_match_all(prediction, case["references"])]) == case["string_match_all"]
    assert task_score([string_match_part(prediction, case["references"])]) == case["string_match_part"]


def test_ruler_task_scores_as_its_official_scorer():
    batch = CASES["ruler_batch"]
    predictions = [ruler_postprocess(p) for p in batch["predictions"]]
    for name, match in (("string_match_all", string_match_all), ("string_match_part", string_match_part)):
        assert task_score([match(p, r) for p, r in zip(predictions, batch["references"])]) == batch[name]


@pytest.mark.parametrize("case", CASES["mrcr"], ids=lambda c: c["response"][:20])
def test_mrcr_grades_as_its_official_grader(case):
    assert mrcr_grade(case["response"], case["answer"], case["prefix"]) == pytest.approx(case["official"], abs=1e-12)


def test_hand_computed_cases():
    assert qa_f1_score("The Eiffel tower!", "eiffel Tower") == 1.0
    assert qa_f1_score("red blue", "red green") == 0.5  # precision 1/2, recall 1/2
    # ROUGE-L F by hand: hyp 'a b c d', ref 'a c d e': LCS a c d (3); p = 3/4, r = 3/4
    assert rouge_l_f("a b c d", "a c d e") == pytest.approx(2 * 0.75 * 0.75 / (1.5 + 1e-8))
    assert rouge_l_f("...", "a b") == 0.0 and rouge_l_f("", "a") == 0.0
    classes = ["Human", "Location", "Numeric value", "value"]
    assert classification_score("Location", "Location", all_classes=classes) == 1.0
    assert classification_score("Human or Location", "Location", all_classes=classes) == 0.5
    assert retrieval_score("Paragraph 4 and 4 and 9", "Paragraph 4") == pytest.approx(2 / 3)
    assert count_score("I count 7", "7") == 1.0 and count_score("none", "7") == 0.0
    assert code_sim_score("# a comment\nx = 1", "x = 1") == 1.0
    assert mrcr_grade("no prefix here", "PFXanswer", "PFX") == 0.0
    assert mrcr_grade("PFXanswer", "PFXanswer", "PFX") == 1.0
