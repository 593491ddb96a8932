"""`optical bench ruler`: RULER's tasks generated to a length, read under the four conditions over a render
grid, scored by RULER's own definitions, needles judged on their pages, killed and resumed."""

import copy
import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest
from bench_fakes import TOKENS_PER_PAGE, WORDS_PER_PAGE
from conftest import REPO_ROOT
from typer.testing import CliRunner

from optical_cli.bench import ruler, ruler_tasks
from optical_cli.bench.benchmark import item_columns
from optical_cli.bench.runner import log_path, read_rows, run_benchmark, settings_from
from optical_cli.cli import app
from optical_cli.config.registry import load_config
from optical_cli.engines.reader import Generation
from optical_cli.models.tokenizers import QWEN_TIKTOKEN, load_chat_tokenizer
from optical_cli.models.vlm import build_layout
from optical_cli.prompts import middle_truncate
from optical_cli.render.pages import PageRenderer

TINY = REPO_ROOT / "configs" / "tiny" / "ruler.yaml"
DONE_WHEN_TASKS = "[niah_single_1,niah_multikey_1,vt,cwe]"
runner = CliRunner()


def tiny(*sets):
    return load_config("ruler", TINY, list(sets))


@pytest.fixture(scope="module")
def counter():
    return ruler.PromptCounter(load_chat_tokenizer(QWEN_TIKTOKEN))


@pytest.fixture(scope="module")
def items(counter):
    """The done-when selection: four tasks at 1,024 and 2,048 tokens, two samples each."""
    return ruler.generate(tiny(f"bench.tasks={DONE_WHEN_TASKS}", "bench.lengths=[1024,2048]"), counter)


def test_native_prompts_are_within_one_percent_of_their_targets_and_every_needle_shows(items, counter):
    tokenizer = load_chat_tokenizer(QWEN_TIKTOKEN)
    renderers = [PageRenderer(s.section(tiny().render)) for s in ruler.render_grid(tiny())]
    assert len(items) == 16 and len(renderers) == 2
    for item in items:
        parts = item.sample.parts()
        assert 0 <= item.target - item.length <= 0.01 * item.target, item.id
        # the count is the reader's: the hf engine's native chat layout, token for token
        layout = build_layout(tokenizer, parts.question, document_text=parts.document, preamble=parts.preamble)
        assert layout.length == item.length == counter.prompt(parts)
        needles = item.sample.needles or []
        assert (len(needles) > 0) == (item.task != "cwe")
        for needle in needles:
            assert needle in parts.text and needle in item.sample.context, (item.id, needle)
            for renderer in renderers:  # whole on one line of the pages' layout, in every font of the grid
                assert ruler.needle_spans(renderer.layout(item.sample.context)[0], needle) is not None
        assert set(item.sample.outputs) <= set(needles) or item.task == "cwe"


def test_generation_follows_rulers_definitions(items):
    by_id = {item.id: item for item in items}
    single = by_id["niah_single_1-1024-000"].sample
    assert single.instruction.startswith("A special magic number is hidden within the following text.")
    assert single.question.endswith("mentioned in the provided text is")  # the singular answer prefix
    assert single.context.split("\n")[1] == " ".join(ruler_tasks.NOISE)  # the noise haystack, five to a line
    assert len(single.outputs[0]) == 7 and single.outputs[0].isdigit()
    multikey = by_id["niah_multikey_1-2048-001"].sample
    assert multikey.context.count("One of the special magic numbers for") == 4 and len(multikey.outputs) == 1
    assert "Refractions" in multikey.context  # the essay haystack: Newton's Opticks
    vt = by_id["vt-1024-000"].sample
    assert len(vt.outputs) == 5 and all(len(v) == 5 and v.isupper() for v in vt.outputs)
    assert vt.instruction.count("Memorize and track the chain(s)") == 2  # the one-shot example, then the task
    assert "5 variables are assigned the value" in vt.question
    cwe = by_id["cwe-2048-000"].sample
    counts = {word: cwe.context.split().count(word) for word in cwe.outputs}
    assert len(cwe.outputs) == 10 and set(counts.values()) == {6}  # below 4K: common words six times
    # depths spread evenly over the samples: the first and the last sample of a task
    assert by_id["niah_single_1-1024-000"].sample.depth[0] == 0.0
    assert by_id["niah_single_1-1024-001"].sample.depth[0] == 100.0
    # seeded: generating again gives the same set
    again = ruler.generate_one("vt", 1024, 0, tiny(), ruler.PromptCounter(load_chat_tokenizer(QWEN_TIKTOKEN)))
    assert again.sample == vt


def ruler_string_match_all(preds, refs):
    """RULER's definition, restated here: mean over items of the share of references found (case-insensitive), x100."""
    return round(
        sum(sum(r.lower() in p.lower() for r in ref) / len(ref) for p, ref in zip(preds, refs)) / len(preds) * 100, 2
    )


def test_scorers_on_hand_computed_cases():
    from optical_cli.bench.metrics import ruler_postprocess, string_match_all, string_match_part, task_score

    assert string_match_all("The numbers are 1234567 and 7654321.", ["1234567", "7654321", "1111111"]) == 2 / 3
    assert string_match_all("ALPHA-beta", ["alpha-BETA"]) == 1.0
    assert string_match_part("Paris, France", ["London", "paris"]) == 1.0
    assert string_match_part("Rome", ["London", "Paris"]) == 0.0
    assert ruler_postprocess("  1234\t567\x00x  ") == "1234\n567\nx"
    assert task_score([1.0, 0.5, 0.0]) == 50.0 and task_score([1 / 3]) == 33.33


class ScriptedReader:
    """Reads like an engine and answers from the prompt: native finds the needles, pages find half."""

    random_weights = True
    description = "scripted reader (tests)"
    parameters = {}
    device = None
    conventions = {}

    def __init__(self, label="", crash_after=None, log=None):
        self.label, self.crash_after, self.log = label, crash_after, log if log is not None else []

    def encode_text(self, text):
        return text.split()

    def decode_text(self, ids):
        return " ".join(ids)

    def with_pages(self, render, mode):
        variant = copy.copy(self)
        variant.label = f"{render.font_size}px"
        return variant

    def _answer(self, values, tokens):
        self.log.append(self.label)
        if self.crash_after is not None and len(self.log) > self.crash_after:
            raise KeyboardInterrupt  # the process killed mid-run (not an item failing)
        return Generation(" ".join(values), tokens, prefill_s=0.0, decode_s=0.0)

    def read_text(self, prompt, *, max_new_tokens, temperature, seed):
        found = [w.strip(".") for w in prompt.document.split() if w.strip(".").isdigit() and len(w.strip(".")) == 7]
        return self._answer(found, len(prompt.text.split()))

    def render(self, text, max_pages):
        words = text.split()
        pages = [words[i : i + WORDS_PER_PAGE] for i in range(0, len(words), WORDS_PER_PAGE)]
        kept, _ = middle_truncate(pages, max_pages)
        return kept, len(pages)

    def vision_tokens(self, pages):
        return TOKENS_PER_PAGE * len(pages)

    def read_pages(self, prompt, pages, *, max_new_tokens, temperature, seed):
        words = [w.strip(".") for page in pages[::2] for w in page]
        return self._answer([w for w in words if w.isdigit() and len(w) == 7], len(pages))


def _grid_run(items, path, reader, resume=False):
    cfg = tiny("bench.font_sizes=[12,8,6]")
    grid = ruler.render_grid(cfg)
    settings = replace(settings_from(cfg.bench, 0), renders=tuple(s.label for s in grid))
    return run_benchmark(
        reader,
        items,
        settings,
        path,
        resume=resume,
        benchmark=ruler.Ruler(cfg.bench.max_new_tokens),
        page_readers=ruler.page_readers(reader, grid, cfg.render),
    )


def _without_timing(rows):
    return [{k: v for k, v in r.items() if not k.endswith("_s") and k != "peak_memory_gib"} for r in rows]


def test_scores_equal_rulers_definition_on_the_recorded_predictions(items, tmp_path):
    niah = [item for item in items if item.task.startswith("niah")]
    rows = _grid_run(niah, tmp_path / "items.csv", ScriptedReader())
    assert len(rows) == len(niah) * (2 + 2 * 3)  # native, no-context; optical and native-matched per setting
    assert {r["score"] for r in rows if r["condition"] == "native"} == {1.0}  # the scripted reader found them
    for row in rows:
        assert row["score"] == ruler_string_match_all([row["prediction"]], [row["references"]]) / 100
    table = ruler.task_table(rows)
    for key, per_length in table.items():
        for length, scores in per_length.items():
            for task, score in scores.items():
                if task == "average":
                    continue
                chosen = [
                    r
                    for r in rows
                    if ruler.condition_key(r) == key and r["task"] == task and str(r["length"]) == length
                ]
                assert score == ruler_string_match_all(
                    [r["prediction"] for r in chosen], [r["references"] for r in chosen]
                )


def test_a_killed_grid_run_resumes_to_the_rows_of_an_uninterrupted_one(items, tmp_path):
    chosen = [item for item in items if item.target == 1024]
    whole = _grid_run(chosen, tmp_path / "whole" / "items.csv", ScriptedReader())
    path = tmp_path / "killed" / "items.csv"
    with pytest.raises(KeyboardInterrupt):
        _grid_run(chosen, path, ScriptedReader(crash_after=13))
    assert 0 < len(read_rows(path, item_columns(ruler.Ruler(0)))) < len(whole)
    text = log_path(path).read_text()
    log_path(path).write_text(text[: text.rstrip("\n").rfind("\n") + 30])  # and its last record torn
    resumed = _grid_run(chosen, path, ScriptedReader(), resume=True)
    assert _without_timing(resumed) == _without_timing(whole)
    with open(path, newline="") as handle:
        assert [r["render"] for r in csv.DictReader(handle)] == [r["render"] or "" for r in whole]


def test_needle_legible_falls_as_the_font_shrinks(counter):
    pytest.importorskip("rapidocr_onnxruntime")
    from optical_cli.render.frontier import OcrJudge

    cfg = tiny("bench.tasks=[niah_multivalue]", "bench.lengths=[1024]", "bench.num_samples=3")
    chosen = ruler.generate(cfg, counter)
    judge = OcrJudge(threads=1)
    share = {}
    for size in (12, 6):
        records = [ruler.judge_item(item, ruler.RenderSetting(size, "tiny"), cfg, judge) for item in chosen]
        block = ruler.legibility_summary(records, [ruler.RenderSetting(size, "tiny")])[f"{size}px-tiny"]
        assert block["needles"] == 12 and block["shown"] == 12
        share[size] = block["share"]
    assert share[12] >= 0.9 and share[6] < share[12], share


def test_the_tiny_run_end_to_end_on_the_hf_engine(tmp_path):
    out = tmp_path / "run"
    args = ["bench", "ruler", "-c", str(TINY), "--lengths", "1024", "--tasks", "niah_single_1,vt"]
    args += ["--num-samples", "1", "--font-sizes", "12", "-o", str(out), "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["random_weights"] and set(summary["conditions"]) == {
        "native",
        "optical@12px-tiny",
        "native-matched@12px-tiny",
        "no-context",
    }
    with open(out / "items.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 8
    assert {"task", "length", "condition", "input_tokens", "prediction", "references", "score"} <= set(rows[0])
    native = [r for r in rows if r["condition"] == "native"]
    assert all(abs(int(r["input_tokens"]) - 1024) <= 10 for r in native)  # the engine read the prompt generated
    record = json.loads((out / "set" / "1024" / "vt" / "validation.jsonl").read_text().splitlines()[0])
    assert {"index", "input", "outputs", "length", "task", "depth", "image_paths"} <= set(record)
    assert record["image_paths"] and all((out / p).is_file() for p in record["image_paths"])
    for name in ("score_by_length.png", "score_by_compression.png", "needles.csv", "summary.json"):
        assert (out / name).is_file(), name
    assert summary["needle_legible"]["12px-tiny"]["needles"] == 6  # one value, five variables
    assert summary["lengths"]["within_1_percent"] == 2
    # the generated set reads the same on a resume: nothing is run again
    again = runner.invoke(app, [*args[:-1], "--resume"])
    assert again.exit_code == 0, again.output


def test_a_missing_qa_file_is_named_and_exits_2(tmp_path):
    result = runner.invoke(app, ["bench", "ruler", "-c", str(TINY), "--tasks", "qa_1", "-o", str(tmp_path / "r")])
    assert result.exit_code == 2 and "bench.qa_files={qa_1: PATH}" in result.stderr


def test_qa_tasks_read_local_squad_and_hotpotqa_files(counter, tmp_path):
    squad = {
        "data": [
            {
                "paragraphs": [
                    {
                        "context": f"Paragraph {i} says the capital of Land{i} is City{i}.",
                        "qas": [
                            {
                                "question": f"What is the capital of Land{i}?",
                                "answers": [{"text": f"City{i}"}],
                                "is_impossible": False,
                            }
                        ],
                    }
                    for i in range(40)
                ]
            }
        ]
    }
    hotpot = [
        {
            "question": f"Who built Tower{i}?",
            "answer": f"Builder{i}",
            "context": [[f"Tower{i}", [f"Tower{i} was built by Builder{i}."]]],
        }
        for i in range(40)
    ]
    (tmp_path / "squad.json").write_text(json.dumps(squad))
    (tmp_path / "hotpot.json").write_text(json.dumps(hotpot))
    files = f"bench.qa_files={{qa_1: {tmp_path / 'squad.json'}, qa_2: {tmp_path / 'hotpot.json'}}}"
    found = ruler.generate(
        tiny("bench.tasks=[qa_1,qa_2]", "bench.lengths=[1024]", "bench.num_samples=1", files), counter
    )
    assert [item.task for item in found] == ["qa_1", "qa_2"]
    for item in found:
        assert item.sample.outputs[0] in item.sample.context and item.length <= 1024
        assert item.sample.question.endswith(" Answer:") and "Document 1:" in item.sample.context
    assert Path(ruler_tasks.ESSAY).is_file()
