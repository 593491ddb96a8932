"""The benchmarks' own scorers, written from their definitions so our scores equal the published ones.

- RULER (NVIDIA/RULER ``scripts/eval/synthetic/constants.py`` and ``scripts/eval/evaluate.py``): the
  prediction is stripped and control characters become newlines; ``string_match_all`` is the share of
  references found in the prediction (case-insensitive), ``string_match_part`` 1 when any is. A task's
  score is the mean over items x100, rounded to 2 decimals.
- MRCR (openai/mrcr's grader): 0 unless the response starts with the item's random prefix; otherwise
  the prefix is removed from both and the score is difflib's ``SequenceMatcher(None, response,
  answer).ratio()``.
- LongBench v1 (THUDM/LongBench ``LongBench/metrics.py`` and ``eval.py``): the per-dataset metrics
  below, the maximum over the item's answers, the mean x100 rounded to 2 decimals; trec, triviaqa,
  samsum and lsht are scored on the prediction's first line.

Per item every scorer here returns a number in [0, 1]. The Chinese variants need ``jieba`` (the
``zh`` extra), the word segmenter LongBench uses.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from difflib import SequenceMatcher
from typing import Callable, Sequence

from ..errors import InputError

# ---------------------------------------------------------------------------------------
# RULER

_CONTROL = re.compile(r"[\x00-\x1f]")


def ruler_postprocess(prediction: str) -> str:
    """RULER's post-processing: strip, control characters (newlines, tabs included) become newlines, strip."""
    return _CONTROL.sub("\n", prediction.strip()).strip()


def string_match_all(prediction: str, references: Sequence[str]) -> float:
    """The share of references that occur in the prediction, case-insensitively."""
    found = sum(1.0 for ref in references if ref.lower() in prediction.lower())
    return found / len(references)


def string_match_part(prediction: str, references: Sequence[str]) -> float:
    """1 when any reference occurs in the prediction, case-insensitively; else 0."""
    return max(1.0 if ref.lower() in prediction.lower() else 0.0 for ref in references)


def task_score(item_scores: Sequence[float]) -> float:
    """A task's score as RULER and LongBench v1 print it: the mean x100, rounded to 2 decimals."""
    return round(sum(item_scores) / len(item_scores) * 100, 2) if item_scores else 0.0


# ---------------------------------------------------------------------------------------
# MRCR


def mrcr_grade(response: str, answer: str, random_prefix: str) -> float:
    """0 without the required prefix; else the sequence-match ratio of response and answer, prefix removed."""
    if not response.startswith(random_prefix):
        return 0.0
    response = response[len(random_prefix) :]
    if answer.startswith(random_prefix):
        answer = answer[len(random_prefix) :]
    return float(SequenceMatcher(None, response, answer).ratio())


# ---------------------------------------------------------------------------------------
# LongBench v1

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_ZH_PUNCTUATION = set(
    "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏."
)


def normalize_answer(text: str) -> str:
    """Lower case, punctuation out, articles out, whitespace collapsed (SQuAD's normalisation)."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return " ".join(_ARTICLES.sub(" ", text).split())


def normalize_zh_answer(text: str) -> str:
    """Lower case, Chinese and ASCII punctuation out, every whitespace out."""
    punctuation = _ZH_PUNCTUATION | set(string.punctuation)
    return "".join("".join(ch for ch in text.lower() if ch not in punctuation).split())


def token_f1(prediction: Sequence[str], truth: Sequence[str]) -> float:
    """F1 of the tokens two lists share (as multisets)."""
    same = sum((Counter(prediction) & Counter(truth)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(prediction), same / len(truth)
    return 2 * precision * recall / (precision + recall)


def qa_f1_score(prediction: str, truth: str, **_: object) -> float:
    return token_f1(normalize_answer(prediction).split(), normalize_answer(truth).split())


def _jieba_cut(text: str) -> list[str]:
    try:
        import jieba  # noqa: PLC0415 - the zh extra: the Chinese datasets' word segmenter, its one import
    except ImportError:
        raise InputError(
            "LongBench v1's Chinese datasets are scored on jieba's words: pip install 'optical[zh]'"
        ) from None
    return list(jieba.cut(text, cut_all=False))


def qa_f1_zh_score(prediction: str, truth: str, **_: object) -> float:
    pred = [t for t in (normalize_zh_answer(w) for w in _jieba_cut(prediction)) if t]
    gold = [t for t in (normalize_zh_answer(w) for w in _jieba_cut(truth)) if t]
    return token_f1(pred, gold)


def _sentences(text: str) -> list[str]:
    """The ``rouge`` package's sentences: split at every '.', each one's whitespace collapsed."""
    return [" ".join(part.split()) for part in text.split(".") if part]


def _words(sentences: Sequence[str]) -> list[str]:
    return [word for sentence in sentences for word in sentence.split(" ")]


def _lcs_words(x: Sequence[str], y: Sequence[str]) -> set[str]:
    """The words of one longest common subsequence of ``x`` and ``y``, traced back from the end: a match
    is taken, else the step goes up when the cell above is strictly larger, else left."""
    rows, cols = len(x), len(y)
    table = [[0] * (cols + 1) for _ in range(rows + 1)]
    for i in range(1, rows + 1):
        for j in range(1, cols + 1):
            table[i][j] = table[i - 1][j - 1] + 1 if x[i - 1] == y[j - 1] else max(table[i - 1][j], table[i][j - 1])
    words, i, j = set(), rows, cols
    while i and j:
        if x[i - 1] == y[j - 1]:
            words.add(x[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return words


def rouge_l_f(prediction: str, truth: str) -> float:
    """ROUGE-L F as the ``rouge`` package (1.0.1) computes it, the one LongBench calls: summary-level LCS
    over sentences split at '.', words as sets (its default ``exclusive``), F with a 1e-8 guard; an empty
    prediction or reference (no sentence) scores 0, as LongBench's try/except makes it."""
    hyp, ref = _sentences(prediction), _sentences(truth)
    if not hyp or not ref:
        return 0.0
    union: set[str] = set()
    hits = 0
    for ref_sentence in ref:
        before = len(union)
        for hyp_sentence in hyp:
            union |= _lcs_words(ref_sentence.split(" "), hyp_sentence.split(" "))
        hits += len(union) - before
    recall, precision = hits / len(set(_words(ref))), hits / len(set(_words(hyp)))
    return 2.0 * precision * recall / (precision + recall + 1e-8)


def rouge_score(prediction: str, truth: str, **_: object) -> float:
    return rouge_l_f(prediction, truth)


def rouge_zh_score(prediction: str, truth: str, **_: object) -> float:
    return rouge_l_f(" ".join(_jieba_cut(prediction)), " ".join(_jieba_cut(truth)))


def classification_score(prediction: str, truth: str, *, all_classes: Sequence[str] = (), **_: object) -> float:
    """1/k when the true class is among the k classes named in the prediction (a named class that is part
    of the true one's name, but not it, does not count), else 0."""
    named = _drop_substrings_of_truth([name for name in all_classes if name in prediction], truth)
    return 1.0 / len(named) if truth in named else 0.0


def _drop_substrings_of_truth(named: list[str], truth: str) -> list[str]:
    """LongBench drops, while iterating over the same list, each named class that is a proper substring of
    the truth; removing during iteration skips the element after each removal, and that is kept here."""
    kept = list(named)
    index = 0
    while index < len(kept):
        name = kept[index]
        if name in truth and name != truth:
            kept.remove(name)  # list.remove: the first equal element, as the official code does
        index += 1
    return kept


def _number_share(prediction: str, wanted: str) -> float:
    numbers = re.findall(r"\d+", prediction)
    return sum(1 for n in numbers if n == wanted) / len(numbers) if numbers else 0.0


def retrieval_score(prediction: str, truth: str, **_: object) -> float:
    """The share of numbers in the prediction equal to the paragraph number in the truth ('Paragraph N')."""
    return _number_share(prediction, re.findall(r"Paragraph (\d+)", truth)[0])


def retrieval_zh_score(prediction: str, truth: str, **_: object) -> float:
    return _number_share(prediction, re.findall(r"段落(\d+)", truth)[0])


def count_score(prediction: str, truth: str, **_: object) -> float:
    """The share of numbers in the prediction equal to the true count."""
    return _number_share(prediction, str(truth))


def code_sim_score(prediction: str, truth: str, **_: object) -> float:
    """The first line of the prediction without a backtick, '#' or '//', against the truth by fuzzywuzzy's
    ``fuzz.ratio`` (difflib's ratio x100 rounded to an integer; 100 when equal, 0 when either is empty)."""
    line = next((ln for ln in prediction.lstrip("\n").split("\n") if not any(m in ln for m in ("`", "#", "//"))), "")
    if line == truth:
        return 1.0
    if not line or not truth:
        return 0.0
    return int(round(100 * SequenceMatcher(None, line, truth).ratio())) / 100


LONGBENCH_V1_METRICS: dict[str, Callable[..., float]] = {
    "narrativeqa": qa_f1_score,
    "qasper": qa_f1_score,
    "multifieldqa_en": qa_f1_score,
    "multifieldqa_zh": qa_f1_zh_score,
    "hotpotqa": qa_f1_score,
    "2wikimqa": qa_f1_score,
    "musique": qa_f1_score,
    "dureader": rouge_zh_score,
    "gov_report": rouge_score,
    "qmsum": rouge_score,
    "multi_news": rouge_score,
    "vcsum": rouge_zh_score,
    "trec": classification_score,
    "triviaqa": qa_f1_score,
    "samsum": rouge_score,
    "lsht": classification_score,
    "passage_retrieval_en": retrieval_score,
    "passage_count": count_score,
    "passage_retrieval_zh": retrieval_zh_score,
    "lcc": code_sim_score,
    "repobench-p": code_sim_score,
}
FIRST_LINE_DATASETS = ("trec", "triviaqa", "samsum", "lsht")


def longbench_v1_score(dataset: str, prediction: str, answers: Sequence[str], all_classes: Sequence[str] = ()) -> float:
    """One item's score: the dataset's metric, the best over its answers (first line only where LongBench
    takes it)."""
    if dataset in FIRST_LINE_DATASETS:
        prediction = prediction.lstrip("\n").split("\n")[0]
    metric = LONGBENCH_V1_METRICS[dataset]
    return max((metric(prediction, answer, all_classes=all_classes) for answer in answers), default=0.0)
