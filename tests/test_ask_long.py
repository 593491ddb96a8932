"""`optical ask` on documents longer than the reader: pages chosen by retrieval (where the middle cut misses
the answer), positions kept, scans falling back to the middle, a second question encoding no page, and
--budget choosing the rendering from the render frontier."""

import base64
import io
import json
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT
from PIL import Image
from test_documents import make_pdf
from typer.testing import CliRunner

from optical_cli.cli import app
from optical_cli.config.registry import load_config
from optical_cli.serving.budget import choose_mode, choose_rendering, read_frontier
from optical_cli.serving.paged import paginate, read_ask_document
from optical_cli.serving.select import page_positions, page_slots, split_passages

runner = CliRunner()
TINY = str(REPO_ROOT / "configs" / "tiny" / "serve.yaml")
CVES = REPO_ROOT / "data" / "cve" / "cves.jsonl"
FACT = "The vault beneath the old mill on Harrow Lane is opened with the brass key numbered 4417."
QUESTION = "Which key opens the vault beneath the old mill on Harrow Lane?"
LARGE_TYPE = ["--set", "render.font_size=32"]  # few characters a page: several hundred pages from a short text


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)


@pytest.fixture
def index_config(tmp_path) -> str:
    """configs/tiny/index.yaml with the embedding cache in this test's folder."""
    data = yaml.safe_load((REPO_ROOT / "configs" / "tiny" / "index.yaml").read_text())
    data["embed"]["cache_dir"] = str(tmp_path / "embeddings")
    path = tmp_path / "index.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def cve_paragraphs(count: int = 400) -> list[str]:
    """The first ``count`` descriptions of the bundled CVE records: varied prose, every one different."""
    with open(CVES, encoding="utf-8") as handle:
        return [json.loads(line)["description"] for line, _ in zip(handle, range(count))]


def long_document(folder: Path, share: float = 0.7) -> Path:
    """CVE descriptions, with FACT planted ``share`` of the way in."""
    paragraphs = cve_paragraphs(400)
    paragraphs.insert(int(len(paragraphs) * share), FACT)
    path = folder / "long.txt"
    path.write_text("\n\n".join(paragraphs))
    return path


def ask_json(*args: str) -> dict:
    result = runner.invoke(app, ["ask", *args, "-c", TINY, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def fact_page(path: Path, *sets: str) -> tuple[int, int]:
    """(the 1-based page holding FACT's key number, the document's pages) as ask lays it out."""
    cfg = load_config("serve", TINY, list(sets))
    paged = paginate(read_ask_document(str(path), cfg.render), cfg.render.model_copy(update={"mode": "tiny"}))
    return next(n + 1 for n, text in enumerate(paged.texts) if "4417" in text), paged.count


def test_retrieve_reads_the_page_of_a_fact_planted_70_percent_in_where_middle_does_not(tmp_path, index_config):
    doc = long_document(tmp_path)
    sets = ["render.font_size=32"]
    page, pages = fact_page(doc, *sets)
    assert pages >= 200 and 0.6 < page / pages < 0.8
    common = [str(doc), QUESTION, *LARGE_TYPE, "--set", f"ask.index_config={index_config}"]
    retrieved = ask_json(*common, "--select", "retrieve")
    middle = ask_json(*common, "--select", "middle")
    for answer in (retrieved, middle):
        assert answer["pages"] == 8 and answer["document_pages"] == pages and len(answer["pages_read"]) == 8
    read = {entry["page"]: entry for entry in retrieved["pages_read"]}
    assert retrieved["select"] == "retrieve" and page in read, (page, sorted(read))
    assert "4417" in read[page]["passage"] or read[page]["rank"] <= 8
    assert sorted(read) == [entry["page"] for entry in retrieved["pages_read"]]  # reading order
    assert retrieved["citations"] == [f"{doc}:{p}" for p in sorted(read)]
    positions = [entry["position"] for entry in retrieved["pages_read"]]
    assert positions == sorted(set(positions)) and positions[-1] < 8  # places kept within the adapter's 8
    assert middle["select"] == "middle" and page not in [entry["page"] for entry in middle["pages_read"]]
    assert [entry["page"] for entry in middle["pages_read"]] == [1, 2, 3, 4, pages - 3, pages - 2, pages - 1, pages]
    assert any("do not fit 8 page slots" in note for note in retrieved["notes"])


def test_a_second_ask_of_the_same_document_encodes_no_page_and_gives_the_same_answer(tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text("\n\n".join(cve_paragraphs(40)))
    first = ask_json(str(doc), "What can remote attackers do?")
    second = ask_json(str(doc), "What can remote attackers do?")
    assert first["pages"] > 1 and first["timings"]["pages_encoded"] == first["pages"]
    assert second["timings"]["pages_encoded"] == 0 and second["timings"]["pages_cached"] == second["pages"]
    assert second["answer"] == first["answer"] and second["input_tokens"] == first["input_tokens"]
    uncached = ask_json(str(doc), "What can remote attackers do?", "--set", "page_cache.max_gb=0")
    assert uncached["timings"]["pages_encoded"] == uncached["pages"] and uncached["answer"] == first["answer"]


def test_a_scan_under_retrieve_is_read_by_its_middle_saying_so(tmp_path):
    scan = make_pdf(tmp_path / "scan.pdf", pages=5, with_text=False)
    answer = ask_json(str(scan), "What is on the page?", "--set", "serve.max_pages=2", "--select", "retrieve")
    assert answer["select"] == "middle" and [entry["page"] for entry in answer["pages_read"]] == [1, 5]
    notes = " ".join(answer["notes"])
    assert "has no text layer (a scan)" in notes and "cannot rank scanned pages" in notes


def test_budget_picks_the_most_legible_rendering_that_fits_and_selects_pages_when_none_does(tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text("\n\n".join(cve_paragraphs()[:6]))
    fits = ask_json(str(doc), "What is this?", "--budget", "2000")
    chosen = fits["rendering"]["budget"]
    assert fits["vision_tokens"] <= 2000 and fits["pages"] == chosen["pages"] and fits["select"] == "all"
    cells, _ = read_frontier(None)
    assert chosen["cer"] == min(cell["cer"] for cell in cells if cell["mode"] != "gundam")  # nothing more legible
    assert (fits["rendering"]["mode"], fits["rendering"]["font_size"]) == (chosen["mode"], chosen["font_size"])
    long = long_document(tmp_path)
    tight = ask_json(str(long), QUESTION, "--budget", "256", "--select", "middle")
    assert "budget" not in tight["rendering"] and tight["vision_tokens"] <= 256 and tight["pages"] == 4
    assert tight["select"] == "middle" and any("no rendering fits" in note for note in tight["notes"])
    small = runner.invoke(app, ["ask", str(doc), "Why?", "-c", TINY, "--budget", "10"])
    assert small.exit_code == 2 and "holds no page" in small.stderr


def test_choose_rendering_keeps_the_lowest_error_cell_whose_pages_fit():
    cfg = load_config("serve", TINY)
    text = "\n\n".join(cve_paragraphs()[:40])
    render = cfg.render.model_copy(update={"reflow": True})
    modes = ("tiny", "small", "base", "large")
    generous, _ = choose_rendering(text, render, 100_000, 200, modes, False)
    assert (generous.mode, generous.font_size, generous.cer) == ("large", 12, 0.002)
    tight, _ = choose_rendering(text, render, 2 * 256, 200, modes, False)
    assert tight.vision_tokens <= 512 and tight.cer >= generous.cer
    whole = "\n\n".join(cve_paragraphs(400))
    assert choose_rendering(whole, render, 64, 200, modes, False)[0] is None  # one tiny page cannot hold it
    assert choose_mode(3, 1000, 8, modes, False).mode == "base"  # 3 x 256 fits, 3 x 400 does not
    assert choose_mode(9, 10_000, 8, modes, False) is None  # more pages than slots


def test_passages_page_slots_and_positions():
    passages, owners = split_passages(["a\nb", "", "x" * 25 + "\n" + "y" * 4], 10)
    assert passages == ["a\nb", "x" * 10, "x" * 10, "x" * 5 + "\n" + "y" * 4] and owners == [0, 2, 2, 2]
    assert page_slots(200, None, 256) == 200 and page_slots(200, 1000, 256) == 3
    assert page_positions([0, 3, 5], 10, 8) == [0, 3, 5]  # every page within the adapter's positions: its own
    assert page_positions([2, 150, 151, 299], 300, 8) == [0, 4, 5, 7]  # scaled, increasing, within 0..7
    assert page_positions(list(range(292, 300)), 300, 8) == list(range(8))


def test_through_a_server_the_same_pages_are_chosen_on_the_client_and_sent_in_reading_order(tmp_path, index_config):
    from test_ask import FakeServer, expected_tokens

    doc = long_document(tmp_path)
    common = [str(doc), QUESTION, *LARGE_TYPE, "--set", f"ask.index_config={index_config}"]
    local = ask_json(*common)
    server = FakeServer(tokens=expected_tokens(8, QUESTION))
    try:
        served = ask_json(*common, "--server", server.url)
    finally:
        server.close()
    assert served["engine"] == "server" and served["select"] == "retrieve"
    assert served["citations"] == local["citations"]  # the same selection, made here
    assert [entry["position"] for entry in served["pages_read"]] == list(range(8))  # positions: request order
    assert any("order in the request" in note for note in served["notes"])
    chat = [r for r in server.requests if r["path"] == "/v1/chat/completions"][0]
    sent = [part for part in chat["messages"][0]["content"] if part["type"] == "image_url"]
    cfg = load_config("serve", TINY, ["render.font_size=32"])
    paged = paginate(read_ask_document(str(doc), cfg.render), cfg.render.model_copy(update={"mode": "tiny"}))
    drawn = paged.draw([entry["page"] - 1 for entry in local["pages_read"]])
    for part, page in zip(sent, drawn, strict=True):
        png = base64.b64decode(part["image_url"]["url"].removeprefix("data:image/png;base64,"))
        assert Image.open(io.BytesIO(png)).tobytes() == page.tobytes()


def test_pages_drawn_from_a_pdfs_text_layer_know_the_pdf_pages_they_hold(tmp_path, index_config):
    from optical_cli.serving.paged import pdf_page_spans

    assert pdf_page_spans(["ab\ncd", "ef", "g h i"], ["abc", "def ghi"]) == [(1, 2), (2, 2), (2, 2)]
    assert pdf_page_spans(["abcdef"], ["ab", "", "cd", "ef"]) == [(1, 4)]
    pdf = make_pdf(tmp_path / "report.pdf", text=" ".join(cve_paragraphs(30)), pages=6)
    answer = ask_json(str(pdf), QUESTION, "--set", "serve.max_pages=1", "--set", f"ask.index_config={index_config}")
    (read,) = answer["pages_read"]
    first, last = read["pdf_pages"]
    assert answer["select"] == "retrieve" and 1 <= first <= last <= 6 and answer["document_pages"] > 1
