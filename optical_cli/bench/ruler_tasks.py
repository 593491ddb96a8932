"""RULER's synthetic tasks, generated here: seeded, offline, to a length in the reader's own tokenizer.

The facts are NVIDIA/RULER's (Apache-2.0; read, not copied): the task settings of
``scripts/synthetic.yaml``, the templates, answer prefixes and tokens to generate of
``scripts/data/synthetic/constants.py``, and the generators of ``scripts/data/synthetic/`` (needle
kinds, haystacks, distractors, the one-shot examples of ``vt`` and ``cwe``, fwe's Zipf counts, the
singular wording of one-needle prompts). What differs, and why:

- the essay haystack is Isaac Newton's *Opticks* (1730, public domain; ``data/benchmarks/README.md``),
  not Paul Graham's essays, which may not be redistributed;
- the length is the prompt the reader reads (chat turn included) in its own tokenizer, and the haystack
  grows until that prompt is as long as it can be without passing the target (RULER: prompt text plus
  the tokens to generate, in a chat template of the user's choosing); ``count_generation`` adds the
  tokens to generate as RULER does. A noise haystack grows by sentences (RULER: blocks of five), so
  prompts land within 1% of the target from 1K tokens on;
- needle depths: the first needle of sample i of n sits at depth i/(n-1) of the context (evenly spread
  over the samples), further needles at depths drawn from RULER's 40-point grid;
- the answer prefix ends the user turn (as RULER sends prompts to chat APIs), so every engine and a
  server read the same prompt.

A prompt is kept in three parts: the instruction (with any one-shot example) before the context, the
context, and the question with the answer prefix after it; the context alone becomes pages.
"""

from __future__ import annotations

import json
import random
import re
import string
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from scipy.special import zeta

from ..errors import ConfigError, InputError
from ..paths import DATA_DIR
from ..prompts import PromptParts

ESSAY = DATA_DIR / "benchmarks" / "opticks.txt"
NOISE = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again.")
NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
DEPTHS = [round(100 * i / 39) for i in range(40)]  # RULER's 40 evenly spaced depths, in percent

# scripts/synthetic.yaml
TASKS: dict[str, dict[str, Any]] = {
    "niah_single_1": {"kind": "niah", "haystack": "noise", "k": "words", "v": "numbers", "nk": 1, "nv": 1, "nq": 1},
    "niah_single_2": {"kind": "niah", "haystack": "essay", "k": "words", "v": "numbers", "nk": 1, "nv": 1, "nq": 1},
    "niah_single_3": {"kind": "niah", "haystack": "essay", "k": "words", "v": "uuids", "nk": 1, "nv": 1, "nq": 1},
    "niah_multikey_1": {"kind": "niah", "haystack": "essay", "k": "words", "v": "numbers", "nk": 4, "nv": 1, "nq": 1},
    "niah_multikey_2": {"kind": "niah", "haystack": "needle", "k": "words", "v": "numbers", "nk": 1, "nv": 1, "nq": 1},
    "niah_multikey_3": {"kind": "niah", "haystack": "needle", "k": "uuids", "v": "uuids", "nk": 1, "nv": 1, "nq": 1},
    "niah_multivalue": {"kind": "niah", "haystack": "essay", "k": "words", "v": "numbers", "nk": 1, "nv": 4, "nq": 1},
    "niah_multiquery": {"kind": "niah", "haystack": "essay", "k": "words", "v": "numbers", "nk": 1, "nv": 1, "nq": 4},
    "vt": {"kind": "variable_tracking", "num_chains": 1, "num_hops": 4},
    "cwe": {"kind": "common_words_extraction", "freq_cw": 30, "freq_ucw": 3, "num_cw": 10},
    "fwe": {"kind": "freq_words_extraction", "alpha": 2.0},
    "qa_1": {"kind": "qa", "dataset": "squad"},
    "qa_2": {"kind": "qa", "dataset": "hotpotqa"},
}
GENERATED_TASKS = tuple(name for name in TASKS if not name.startswith("qa_"))

# scripts/data/synthetic/constants.py: (template, answer prefix, tokens to generate)
TEMPLATES: dict[str, tuple[str, str, int]] = {
    "niah": (
        "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. "
        "I will quiz you about the {type_needle_v} afterwards.\n{context}\n"
        "What are all the special magic {type_needle_v} for {query} mentioned in the provided text?",
        " The special magic {type_needle_v} for {query} mentioned in the provided text are",
        128,
    ),
    "variable_tracking": (
        "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
        "Question: Find all variables that are assigned the value {query} in the text above.",
        " Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are "
        "assigned the value {query}, they are: ",
        30,
    ),
    "common_words_extraction": (
        "Below is a numbered list of words. In these words, some appear more often than others. Memorize the "
        "ones that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above list?",
        " Answer: The top 10 words that appear most often in the list are:",
        120,
    ),
    "freq_words_extraction": (
        "Read the following coded text and track the frequency of each coded word. Find the three most "
        "frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore "
        "the dots '....'. What are the three most frequently appeared words in the above coded text?",
        " Answer: According to the coded text above, the three most frequently appeared words are:",
        50,
    ),
    "qa": (
        "Answer the question based on the given documents. Only give me the answer and do not output any other "
        "words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based on the given "
        "documents. Only give me the answer and do not output any other words.\n\nQuestion: {query}",
        " Answer:",
        32,
    ),
}
SCORERS = {"qa": "string_match_part"}  # every other kind: string_match_all


def scorer_name(task: str) -> str:
    return SCORERS.get(TASKS[task]["kind"], "string_match_all")


def tokens_to_generate(task: str) -> int:
    return TEMPLATES[TASKS[task]["kind"]][2]


@dataclass
class Sample:
    """One generated prompt in three parts, its references, and where its needles are."""

    instruction: str  # before the context: one-shot example and instruction (text in every condition)
    context: str  # what becomes pages
    question: str  # after the context: the question and the answer prefix
    outputs: list[str]
    answer_prefix: str
    depth: list[float] = field(default_factory=list)  # each needle's depth in percent of the context
    needles: list[str] = field(default_factory=list)  # strings a page must show for the needle to be read

    def parts(self) -> PromptParts:
        return PromptParts(self.instruction, self.context, self.question)


_MARK = "\x00context\x00"


def split_template(template: str, answer_prefix: str, **values: Any) -> tuple[str, str]:
    """(instruction, question): the template filled around its ``{context}``, the reader's newline between
    the context and what follows taken out of the question, the answer prefix appended to it."""
    head, _, tail = template.format(context=_MARK, **values).partition(_MARK)
    return head, (tail[1:] if tail.startswith("\n") else tail) + answer_prefix


def singular(template: str) -> str:
    """RULER's wording for one needle and one value: 'A ... is' instead of 'Some ... are'."""
    for plural, one in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
        template = template.replace(plural, one)
    return template


# ---------------------------------------------------------------------------------------
# Word sources


@lru_cache(maxsize=1)
def essay_words() -> tuple[str, ...]:
    try:
        return tuple(ESSAY.read_text(encoding="utf-8").split())
    except OSError as exc:
        raise InputError(f"the essay haystack {ESSAY} cannot be read ({exc}); reinstall the package") from None


@lru_cache(maxsize=1)
def word_lists() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(nouns, adjectives, verbs) of the ``wonderwords`` package: RULER's word source."""
    try:
        from wonderwords.random_word import _get_words_from_text_file  # noqa: PLC0415 - RULER's word lists, one place
    except ImportError:
        raise InputError("RULER's keys and words come from wonderwords: pip install wonderwords") from None
    lists = [_get_words_from_text_file(name) for name in ("nounlist.txt", "adjectivelist.txt", "verblist.txt")]
    return tuple(tuple(words) for words in lists)  # type: ignore[return-value]


@lru_cache(maxsize=1)
def key_words() -> tuple[str, ...]:
    nouns, adjectives, _ = word_lists()
    return tuple(sorted({f"{a}-{n}" for a in adjectives for n in nouns}))


@lru_cache(maxsize=4)
def cwe_words(seed: int) -> tuple[str, ...]:
    nouns, adjectives, verbs = word_lists()
    words = sorted(set(nouns + adjectives + verbs))
    random.Random(seed).shuffle(words)
    return tuple(words)


def random_value(kind: str, rng: random.Random) -> str:
    if kind == "numbers":
        return str(rng.randint(10**6, 10**7 - 1))
    if kind == "words":
        return rng.choice(key_words())
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    raise ConfigError(f"unknown needle kind {kind!r}")


# ---------------------------------------------------------------------------------------
# Haystacks: text of ``units`` units with needles inserted at depths


def noise_lines(sentences: int) -> list[str]:
    """RULER's noise: its five sentences repeated, five to a line; the last line may be cut short."""
    cycle = [NOISE[i % len(NOISE)] for i in range(sentences)]
    return [" ".join(cycle[i : i + len(NOISE)]) for i in range(0, len(cycle), len(NOISE))]


def insert_lines(lines: list[str], needles: list[str], depths: list[float]) -> str:
    """The needles as lines of their own, each at its depth (percent) of the lines, joined by newlines."""
    out = list(lines)
    for needle, depth in sorted(zip(needles, depths), key=lambda pair: -pair[1]):
        out.insert(round(depth / 100 * len(lines)), needle)
    return "\n".join(out)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def insert_sentences(words: list[str], needles: list[str], depths: list[float]) -> str:
    """The essay cut to ``words``, the needles placed between its sentences at their depths, joined by spaces."""
    sentences = _SENTENCE_END.split(" ".join(words)) if words else []
    out = list(sentences)
    for needle, depth in sorted(zip(needles, depths), key=lambda pair: -pair[1]):
        out.insert(int(len(sentences) * depth / 100), needle)
    return " ".join(out)


def essay_haystack(units: int) -> list[str]:
    words = essay_words()
    return [words[i % len(words)] for i in range(units)]


def needle_depths(count: int, first: float, rng: random.Random) -> list[float]:
    """The first needle at ``first``; the others at depths drawn from RULER's grid without repeats."""
    others = rng.sample([d for d in DEPTHS if d != round(first)], count - 1) if count > 1 else []
    return [float(first)] + [float(d) for d in others]


# ---------------------------------------------------------------------------------------
# The tasks: build(units) -> Sample, the same needles whatever the number of units


Builder = Callable[[int], Sample]


def niah_builder(task: str, rng_seed: int, depth: float) -> Builder:
    spec = TASKS[task]
    rng = random.Random(rng_seed)
    nk = max(spec["nk"], spec["nq"])
    keys = [random_value(spec["k"], rng) for _ in range(nk)]
    values = [[random_value(spec["v"], rng) for _ in range(spec["nv"])] for _ in keys]
    needles = [NEEDLE.format(type_needle_v=spec["v"], key=k, value=v) for k, vs in zip(keys, values) for v in vs]
    rng.shuffle(needles)
    depths = needle_depths(len(needles), depth, rng)
    queried = rng.sample(range(nk), spec["nq"])
    answers = [v for i in queried for v in values[i]]
    queries = [keys[i] for i in queried]
    query = queries[0] if len(queries) == 1 else ", ".join(queries[:-1]) + ", and " + queries[-1]
    template, prefix, _ = TEMPLATES["niah"]
    type_v = spec["v"]
    if spec["nq"] * spec["nv"] == 1:
        template, prefix, type_v = singular(template), singular(prefix), type_v[:-1]
    distractor_seed = rng.getrandbits(64)

    def build(units: int) -> Sample:
        if spec["haystack"] == "essay":
            context = insert_sentences(essay_haystack(units), needles, depths)
        else:
            if spec["haystack"] == "noise":
                lines = noise_lines(units)
            else:  # other needles: keys and values that are not the real ones
                extra = random.Random(distractor_seed)
                lines = [
                    NEEDLE.format(
                        type_needle_v=spec["v"],
                        key=random_value(spec["k"], extra),
                        value=random_value(spec["v"], extra),
                    )
                    for _ in range(units)
                ]
            context = insert_lines(lines, needles, depths)
        answer_prefix = prefix.format(type_needle_v=type_v, query=query)
        instruction, question = split_template(template, answer_prefix, type_needle_v=type_v, query=query)
        return Sample(instruction, context, question, answers, answer_prefix, depths, list(answers))

    return build


def vt_chain(rng: random.Random, hops: int, letters: int) -> tuple[list[str], list[str], str]:
    """(variables, statements, value) of one chain: VAR A = value, VAR B = VAR A, ..."""
    names: list[str] = []
    while len(names) < hops + 1:
        name = "".join(rng.choices(string.ascii_uppercase, k=letters))
        if name not in names:
            names.append(name)
    value = str(rng.randint(10000, 99999))
    statements = [f"VAR {names[0]} = {value}"] + [f"VAR {names[j + 1]} = VAR {names[j]}" for j in range(hops)]
    return names, statements, value


def vt_example(rng: random.Random, hops: int, measure: Callable[[str], int]) -> str:
    """RULER's one-shot example: a chain of three-letter variables in noise, the prompt within 500 tokens
    of text, followed by its answer."""
    names, statements, value = vt_chain(rng, hops, 3)
    depths = sorted(rng.sample(DEPTHS, len(statements)))
    template, prefix, _ = TEMPLATES["variable_tracking"]

    def text(units: int) -> str:
        context = insert_lines(noise_lines(units), statements, depths)
        return template.format(context=context, query=value) + prefix.format(num_v=hops + 1, query=value)

    units = fit_units(lambda u: measure(text(u)), 500, start=5)
    return text(units) + " " + " ".join(names) + "\n"


def vt_builder(task: str, rng_seed: int, depth: float, measure_text: Callable[[str], int]) -> Builder:
    spec = TASKS[task]
    rng = random.Random(rng_seed)
    names, statements, value = vt_chain(rng, spec["num_hops"], 5)
    depths = sorted(needle_depths(len(statements), depth, rng))
    example = vt_example(random.Random(rng.getrandbits(64)), spec["num_hops"], measure_text)
    template, prefix, _ = TEMPLATES["variable_tracking"]
    answer_prefix = prefix.format(num_v=spec["num_hops"] + 1, query=value)

    def build(units: int) -> Sample:
        context = insert_lines(noise_lines(units), statements, depths)
        instruction, question = split_template(template, answer_prefix, query=value)
        return Sample(example + instruction, context, question, list(names), answer_prefix, depths, list(names))

    return build


def cwe_list(rng: random.Random, words: tuple[str, ...], count: int, common: int, freq: int, ufreq: int):
    if count > len(words):
        raise InputError(f"cwe at this length needs {count} distinct words; the word list has {len(words)}")
    chosen = rng.sample(words, count)
    listed = chosen[:common] * freq + chosen[common:] * ufreq
    rng.shuffle(listed)
    return " ".join(f"{i + 1}. {word}" for i, word in enumerate(listed)), chosen[:common]


def cwe_builder(task: str, rng_seed: int, target: int, seed: int) -> Builder:
    spec = TASKS[task]
    words, common = cwe_words(seed), spec["num_cw"]
    short = target < 4096  # RULER: fewer repeats below 4K, in the example and the task
    example_shape, shape = ((20, 3, 1), (6, 1)) if short else ((40, 10, 3), (spec["freq_cw"], spec["freq_ucw"]))
    template, prefix, _ = TEMPLATES["common_words_extraction"]
    example_seed = random.Random(rng_seed).getrandbits(64)
    ex_context, ex_answer = cwe_list(random.Random(example_seed), words, example_shape[0], common, *example_shape[1:])
    example = (
        template.format(context=ex_context) + prefix + " " + " ".join(f"{i + 1}. {w}" for i, w in enumerate(ex_answer))
    )

    def build(units: int) -> Sample:
        context, answer = cwe_list(random.Random(rng_seed), words, max(units, common + 1), common, *shape)
        instruction, question = split_template(template, prefix)
        return Sample(example + "\n" + instruction, context, question, list(answer), prefix)

    return build


def fwe_builder(task: str, rng_seed: int, target: int) -> Builder:
    alpha = TASKS[task]["alpha"]
    rng = random.Random(rng_seed)
    size = max(4, target // 50)  # RULER's vocabulary size: the length over 50
    vocab: list[str] = []
    while len(set(vocab)) < size:
        vocab.append("".join(rng.choices(string.ascii_lowercase, k=6)))
    vocab = sorted(set(vocab))
    rng.shuffle(vocab)
    vocab[0] = "..."  # the most frequent 'word' is noise
    shuffle_seed = rng.getrandbits(64)
    template, prefix, _ = TEMPLATES["freq_words_extraction"]
    norm = zeta(alpha)

    def build(units: int) -> Sample:
        listed = [w for k, w in enumerate(vocab, start=1) for _ in range(int(units * k**-alpha / norm))]
        random.Random(shuffle_seed).shuffle(listed)
        context = " ".join(listed)
        instruction, question = split_template(template, prefix)
        return Sample(instruction, context, question, vocab[1:4], prefix)

    return build


def qa_builder(task: str, rng_seed: int, index: int, source: "QASource") -> Builder:
    question, answers, gold = source.questions[index % len(source.questions)]
    rng = random.Random(rng_seed)
    others = [i for i in range(len(source.documents)) if i not in gold]
    rng.shuffle(others)
    template, prefix, _ = TEMPLATES["qa"]

    def build(units: int) -> Sample:
        pool = list(gold) + others  # past every document, RULER repeats them
        chosen = [pool[i % len(pool)] for i in range(max(units, len(gold)))]
        random.Random(rng_seed).shuffle(chosen)
        context = "\n\n".join(f"Document {i + 1}:\n{source.documents[d]}" for i, d in enumerate(chosen))
        instruction, question_text = split_template(template, prefix, query=question)
        return Sample(instruction, context, question_text, list(answers), prefix)

    return build


# ---------------------------------------------------------------------------------------
# QA sources (local files only)


@dataclass
class QASource:
    documents: list[str]
    questions: list[tuple[str, list[str], list[int]]]  # (question, answers, gold document indices)


def read_squad(path: Path) -> QASource:
    """SQuAD 2.0's JSON (``data`` -> paragraphs -> qas; impossible questions left out), as RULER reads it."""
    data = _read_json(path)
    docs = sorted({p["context"] for d in data["data"] for p in d["paragraphs"]})
    where = {c: i for i, c in enumerate(docs)}
    questions = [
        (qa["question"], [a["text"] for a in qa["answers"]], [where[p["context"]]])
        for d in data["data"]
        for p in d["paragraphs"]
        for qa in p["qas"]
        if not qa.get("is_impossible", False)
    ]
    return QASource(docs, questions)


def read_hotpotqa(path: Path) -> QASource:
    """HotpotQA's dev JSON (a list of items, ``context`` as [title, sentences] pairs), as RULER reads it."""
    data = _read_json(path)
    doc = lambda title, sentences: f"{title}\n{''.join(sentences)}"
    docs = sorted({doc(t, s) for item in data for t, s in item["context"]})
    where = {c: i for i, c in enumerate(docs)}
    return QASource(docs, [(i["question"], [i["answer"]], [where[doc(t, s)] for t, s in i["context"]]) for i in data])


def _read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable JSON file ({exc})") from None


# ---------------------------------------------------------------------------------------
# Fitting a haystack to a length


def fit_units(length_of: Callable[[int], int], target: int, start: int = 8) -> int:
    """The most units whose prompt is at most ``target`` tokens (the fewest, 1, when none fits):
    doubling to an upper bound, then a binary search."""
    if length_of(1) > target:
        return 1
    low, high = 1, max(2, start)
    while length_of(high) <= target:
        low, high = high, high * 2
        if high > 1 << 26:
            raise InputError(f"a haystack of {high} units still fits {target} tokens; the task cannot grow")
    while high - low > 1:
        middle = (low + high) // 2
        if length_of(middle) <= target:
            low = middle
        else:
            high = middle
    return low


def builder(task: str, *, rng_seed: int, index: int, depth: float, target: int, seed: int, measure_text, qa=None):
    """The task's builder for one sample."""
    kind = TASKS[task]["kind"]
    if kind == "niah":
        return niah_builder(task, rng_seed, depth)
    if kind == "variable_tracking":
        return vt_builder(task, rng_seed, depth, measure_text)
    if kind == "common_words_extraction":
        return cwe_builder(task, rng_seed, target, seed)
    if kind == "freq_words_extraction":
        return fwe_builder(task, rng_seed, target)
    if qa is None:
        raise ConfigError(f"{task} reads a local {TASKS[task]['dataset']} file: set bench.qa_files")
    return qa_builder(task, rng_seed, index, qa)
