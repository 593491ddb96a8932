"""Official answer extraction, Wilson intervals, McNemar's exact test, middle truncation."""

import pytest
from scipy.stats import binomtest

from optical_cli.bench.scoring import extract_answer, mcnemar_exact, summarize_run, wilson_interval
from optical_cli.prompts import middle_truncate

OUTPUTS = [
    ("The correct answer is (B)", "B"),
    ("Let me think. The passage says 97 sacks.\nThe correct answer is (B).", "B"),
    ("The correct answer is C", "C"),  # without parentheses
    ("**The correct answer is (D)**", "D"),  # markdown bold
    ("The correct answer is (A). Wait, The correct answer is (C)", "A"),  # several: the first wins
    ("The correct answer is B, or maybe The correct answer is (C)", "C"),  # parenthesised form first
    ("the correct answer is (b)", None),  # lower case: no match (official)
    ("The correct answer is (E)", None),  # not a choice
    ("I think it is B.", None),  # no answer sentence
    ("", None),
    (None, None),
]


@pytest.mark.parametrize("output, expected", OUTPUTS)
def test_official_extraction(output, expected):
    assert extract_answer(output) == expected


def test_wilson_known_values():
    low, high = wilson_interval(6, 50)
    # by hand: centre (0.12 + z^2/100)/(1 + z^2/50), z = 1.959964
    assert low == pytest.approx(0.05623, abs=1e-4) and high == pytest.approx(0.23809, abs=1e-4)
    ref = binomtest(6, 50).proportion_ci(confidence_level=0.95, method="wilson")
    assert (low, high) == pytest.approx((ref.low, ref.high), abs=1e-9)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_mcnemar_exact_known_values():
    assert mcnemar_exact(1, 7) == pytest.approx(2 * 9 / 256)  # P(X<=1 | n=8) = 9/256
    assert mcnemar_exact(7, 1) == pytest.approx(2 * 9 / 256)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(2, 12) == pytest.approx(binomtest(2, 14, 0.5).pvalue)
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)


def test_middle_truncation_keeps_both_ends():
    assert middle_truncate(list(range(10)), 4) == ([0, 1, 8, 9], True)
    assert middle_truncate(list(range(10)), 5) == ([0, 1, 7, 8, 9], True)
    assert middle_truncate(list(range(3)), 5) == ([0, 1, 2], False)
    assert middle_truncate(list(range(3)), 0) == ([], True)
    assert middle_truncate(["p1", "p2", "p3"], 1) == (["p3"], True)


def _row(id_, condition, correct, status="ok", length="short", difficulty="easy"):
    return {
        "id": id_,
        "condition": condition,
        "correct": correct,
        "status": status,
        "length": length,
        "difficulty": difficulty,
        "input_tokens": 100,
        "context_tokens": 80,
        "doc_tokens": 400,
        "pages": 0,
        "chars_per_page": None,
        "truncated": False,
        "render_s": 0.0,
        "encode_s": 0.0,
        "adapter_s": 0.0,
        "prefill_s": 0.1,
        "decode_s": 0.2,
        "latency_s": 0.3,
        "peak_memory_gib": 1.5,
    }


def test_summary_counts_failures_as_wrong():
    rows = [
        _row("a", "native", True),
        _row("b", "native", False, status="oom"),
        _row("c", "native", True, length="long"),
        _row("d", "native", False, status="context_exceeded", length="long"),
        _row("a", "optical", False),
        _row("b", "optical", True),
        _row("c", "optical", True, length="long"),
        _row("d", "optical", True, length="long"),
    ]
    summary = summarize_run(rows, ["native", "optical"])
    native = summary["conditions"]["native"]
    assert native["accuracy"] == 0.5 and native["completion_rate"] == 0.5 and native["accuracy_on_completed"] == 1.0
    assert native["failures"] == {"oom": 1, "context_exceeded": 1}
    assert native["by_length"]["long"]["n"] == 2 and native["compression_ratio"] == pytest.approx(5.0)
    test = summary["mcnemar"][0]
    assert (test["only_first_correct"], test["only_second_correct"], test["both_correct"]) == (1, 2, 1)
    assert test["p_value"] == pytest.approx(1.0)


def test_template_document_first_then_question_and_choices():
    from pathlib import Path

    from optical_cli.bench.data import load_items
    from optical_cli.bench.prompts import document_prompt, no_context_prompt

    item = load_items(str(Path(__file__).parent / "data" / "longbench_fixture.jsonl"))[0]
    prompt = document_prompt(item, "DOC")
    text = prompt.text
    assert prompt.preamble.endswith("<document>\n") and prompt.question.startswith("</document>")
    assert text.index("DOC") < text.index(item.question) < text.index("(A) 412") < text.index("(D) 12")
    assert text.rstrip().endswith('"The correct answer is (X)", where X is A, B, C or D.')
    bare = no_context_prompt(item)
    assert "<document>" not in bare.text and item.question in bare.text and bare.document == ""
    # the same answer instruction in every condition
    assert bare.question.split("Question:")[1] == prompt.question.split("Question:")[1]
