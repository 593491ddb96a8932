"""`bench mrcr` and `bench longbench-v1`: their data formats, prompts, scorers through the one runner, and a
missing dataset naming its download."""

import csv
import json

import pytest
from conftest import REPO_ROOT
from typer.testing import CliRunner

from optical_cli.bench import longbench_v1, mrcr
from optical_cli.bench.benchmark import doubling_bin
from optical_cli.cli import app
from optical_cli.config.registry import load_config
from optical_cli.engines.reader import Generation

runner = CliRunner()
TINY_MRCR = REPO_ROOT / "configs" / "tiny" / "mrcr.yaml"
TINY_V1 = REPO_ROOT / "configs" / "tiny" / "longbench-v1.yaml"


class EchoReader:
    """Answers every text prompt with the context's first line (pages: nothing): predictable scores."""

    random_weights = True
    description = "echo reader (tests)"
    parameters = {}
    device = None
    conventions = {}

    def __init__(self, answer=None):
        self.answer = answer
        self.prompts = []

    def encode_text(self, text):
        return text.split()

    def decode_text(self, ids):
        return " ".join(ids)

    def read_text(self, prompt, *, max_new_tokens, temperature, seed):
        self.prompts.append((prompt, max_new_tokens))
        text = self.answer(prompt) if self.answer else prompt.document.split("\n")[0]
        return Generation(text, len(prompt.text.split()), 0.0, 0.0)

    def render(self, text, max_pages):
        return [text], 1

    def vision_tokens(self, pages):
        return 4 * len(pages)

    def read_pages(self, prompt, pages, *, max_new_tokens, temperature, seed):
        return Generation("", 4, 0.0, 0.0)


@pytest.fixture
def fake(monkeypatch):
    def install(reader):
        monkeypatch.setattr("optical_cli.engines.factory.build_reader", lambda spec, conditions: reader)
        return reader

    return install


def test_mrcr_items_prompts_and_grades(fake, tmp_path):
    items = mrcr.select_mrcr(load_config("mrcr", TINY_MRCR)).items
    assert len(items) == 6 and {i.needles for i in items} == {2, 4, 8}
    first = items[0]
    assert first.transcript.startswith("User: write a short poem about tapirs\n\nAssistant: Poem 1")
    assert first.request.startswith("Prepend ") and first.bin == 8192
    # a reader that answers with the right poem after the prefix scores 1; the same without the prefix, 0
    record = [json.loads(line) for line in (REPO_ROOT / "tests/data/mrcr_fixture.jsonl").read_text().splitlines()]
    answers = {r["random_string_to_prepend"]: r["answer"] for r in record}
    prefixed = lambda prompt: answers[prompt.question.split()[1]]
    fake(EchoReader(prefixed))
    out = tmp_path / "run"
    result = runner.invoke(
        app, ["bench", "mrcr", "-c", str(TINY_MRCR), "--conditions", "native,no-context", "-o", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["conditions"]["native"]["accuracy"] == 1.0 and set(
        summary["conditions"]["native"]["by_needles"]
    ) == {"2", "4", "8"}
    with open(out / "items.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {"needles", "length", "score", "prediction"} <= set(rows[0]) and len(rows) == 12


def test_longbench_v1_prompts_answer_lengths_and_metrics(fake, tmp_path):
    selection = longbench_v1.select_v1(load_config("longbench-v1", TINY_V1))
    bench = selection.benchmark
    hotpot = next(i for i in selection.items if i.dataset == "hotpotqa")
    parts = bench.document_prompt(hotpot, hotpot.context)
    # the fixture's own template (tests/data/longbench_v1/prompts.json), split at {context}
    assert parts.preamble == "Read the passages below and answer the question with a few words only.\n\nPassages:\n"
    assert parts.question == f"\nQuestion: {hotpot.input}\nAnswer:"
    assert parts.document == hotpot.context
    assert (
        bench.max_new_tokens(hotpot) == 32
        and bench.max_new_tokens(next(i for i in selection.items if i.dataset == "gov_report")) == 512
    )
    item_of = lambda p: next(i for i in selection.items if i.input in p.question and i.context == p.document)
    fake(EchoReader(lambda prompt: "I think: " + item_of(prompt).answers[0]))
    out = tmp_path / "run"
    result = runner.invoke(
        app, ["bench", "longbench-v1", "-c", str(TINY_V1), "--conditions", "native", "-o", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    table = json.loads(result.stdout)["longbench_v1"]["native"]
    assert set(table) == {"hotpotqa", "gov_report", "trec", "passage_count", "lcc", "average"}
    assert table["hotpotqa"] == 50.0  # 'i think cityn' against 'cityn': precision 1/3, recall 1


def test_longbench_v1_without_its_prompts_file_exits_2_saying_where_to_get_it(tmp_path):
    args = ["bench", "longbench-v1", "-c", str(TINY_V1), "--set", "bench.prompts=null", "-o", str(tmp_path / "r")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert (
        "curl -LO https://raw.githubusercontent.com/THUDM/LongBench/" in result.stderr and not (tmp_path / "r").exists()
    )


@pytest.mark.parametrize(
    ("command", "config", "download"),
    [
        ("mrcr", TINY_MRCR, "hf download openai/mrcr 2needle.parquet --repo-type dataset"),
        ("longbench-v1", TINY_V1, "hf download THUDM/LongBench data.zip --repo-type dataset"),
    ],
)
def test_a_missing_dataset_exits_2_naming_its_download(command, config, download, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    data = "openai/mrcr" if command == "mrcr" else "THUDM/LongBench"
    args = ["bench", command, "-c", str(config), "--set", f"bench.data={data}", "-o", str(tmp_path / "r")]
    if command == "mrcr":
        args += ["--needles", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert download in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_length_bins_follow_each_benchmarks_edges():
    # MRCR: 0-8,192 tokens is the first bin, its upper end included
    assert [doubling_bin(n, 8192, upper_inclusive=True) for n in (1, 8192, 8193, 16384, 16385)] == [
        8192,
        8192,
        16384,
        16384,
        32768,
    ]
    # LongBench-E: 0-4,000, 4,000-8,000, ...: 4,000 starts the second bin
    assert [doubling_bin(n, 4000, upper_inclusive=False) for n in (0, 3999, 4000, 7999, 8000)] == [
        4000,
        4000,
        8000,
        8000,
        16000,
    ]
