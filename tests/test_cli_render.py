"""`optical render` and `optical config` through the CLI: contract, JSON output, bad input."""

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from optical_cli.cli import app
from optical_cli.render.pages import non_space

runner = CliRunner()


def invoke(*args, stdin=None):
    return runner.invoke(app, [str(a) for a in args], input=stdin)


def layout(out):
    return [json.loads(line) for line in (out / "layout.jsonl").read_text(encoding="utf-8").splitlines()]


def test_render_file_writes_pages_layout_manifest(tmp_path):
    text = "First paragraph.\n\n" + "word " * 6000 + "\nÉnd."
    doc = tmp_path / "doc.txt"
    doc.write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    result = invoke("render", "--input", doc, "--output-dir", out, "--set", "render.tokenizer=none")
    assert result.exit_code == 0, result.output
    pages = layout(out)
    assert [p["page"] for p in pages] == list(range(1, len(pages) + 1)) and len(pages) >= 2
    for page in pages:
        assert page["image"] == f"page_{page['page']:04d}.png" and page["source"] == str(doc)
        assert Image.open(out / page["image"]).size == (1024, 1024)
    assert non_space("".join("".join(p["lines"]) for p in pages)) == non_space(text)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "ok" and manifest["report"]["pages"] == len(pages)
    assert (out / "config.yaml").is_file()


def test_render_json_report_and_token_ratio(tmp_path):
    doc = tmp_path / "a.md"
    doc.write_text("Optical compression renders text to pages. " * 50)
    result = invoke("render", doc, "--output-dir", tmp_path / "o", "--json", "--set", "render.mode=tiny")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["pages"] == 1 and report["vision_tokens"] == 64 and report["page_px"] == 512
    from optical_cli.textstats import count_text_tokens

    rendered = "\n".join(layout(tmp_path / "o")[0]["lines"])  # the Qwen count of the text on the page
    assert (
        report["text_tokens"] == count_text_tokens(rendered) > 300
    )  # 7 tokens x 50 sentences, give or take line breaks
    assert report["text_tokens_per_vision_token"] == pytest.approx(report["text_tokens"] / 64, abs=1e-3)


def test_render_directory_and_stdin(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "b.txt").write_text("bravo")
    (folder / "a.md").write_text("alpha")
    (folder / "skip.bin").write_bytes(b"\x00\x01")
    out = tmp_path / "o"
    assert (
        invoke("render", folder, "-", "--output-dir", out, "--set", "render.tokenizer=none", stdin="charlie").exit_code
        == 0
    )
    assert [(p["source"].split("/")[-1], p["lines"]) for p in layout(out)] == [
        ("a.md", ["alpha"]),
        ("b.txt", ["bravo"]),
        ("<stdin>", ["charlie"]),
    ]


def test_render_in_parallel_gives_identical_pages(tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text("parallel pages " * 4000)
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        result = invoke(
            "render",
            doc,
            "--output-dir",
            out,
            "--set",
            f"runtime.workers={workers}",
            "--set",
            "render.mode=tiny",
            "--set",
            "render.tokenizer=none",
        )
        assert result.exit_code == 0, result.output
        outs.append(out)
    names = sorted(p.name for p in outs[0].glob("page_*.png"))
    assert len(names) >= 3 and names == sorted(p.name for p in outs[1].glob("page_*.png"))
    for name in names:
        assert Image.open(outs[0] / name).tobytes() == Image.open(outs[1] / name).tobytes()


def test_default_run_dir_under_results(tmp_path):
    from optical_cli import artifacts

    result = invoke("render", "--set", "render.tokenizer=none")
    assert result.exit_code == 0, result.output
    runs = list((artifacts.RESULTS_DIR / "render").iterdir())
    assert len(runs) == 1 and (runs[0] / "page_0001.png").is_file()


def test_empty_input_is_exit_2_as_encode_text_says_and_one_empty_file_among_others_warns(tmp_path):
    doc = tmp_path / "empty.txt"
    doc.write_text("  \n\n")
    result = invoke("render", doc, "--output-dir", tmp_path / "o", "--json", "--set", "render.tokenizer=none")
    assert result.exit_code == 2 and "no text to render" in result.stderr and not (tmp_path / "o").exists()
    encoded = invoke("encode", "--config", "configs/tiny/encode.yaml", "--text", doc, "-o", tmp_path / "e")
    assert encoded.exit_code == 2 and "no text to render" in encoded.stderr  # one rule, one message
    full = tmp_path / "full.txt"
    full.write_text("some text")
    result = invoke("render", doc, full, "--output-dir", tmp_path / "o", "--json", "--set", "render.tokenizer=none")
    assert result.exit_code == 0 and "empty.txt: no text" in result.stderr and json.loads(result.stdout)["pages"] == 1


@pytest.mark.parametrize(
    "setup,extra,expected",
    [
        (lambda d: None, [], "input not found"),
        (lambda d: (d / "x").mkdir(), [], "holds no .txt/.md/.pdf files"),
        (lambda d: (d / "x").write_bytes(b"ok\xfe"), [], "byte offset 2"),
        (lambda d: (d / "x").write_text("hi"), ["--set", "render.font=/no/such/font.ttf"], "font not found"),
        (
            lambda d: (d / "x").write_text("hi"),
            ["--set", "render.mode=tiny", "--set", "render.font_size=200", "--set", "render.margin=200"],
            "font_size",
        ),
        (lambda d: (d / "x").write_text("hi"), ["--set", "render.fontsize=9"], "did you mean 'render.font_size'"),
        (lambda d: (d / "x").write_text("hi"), ["--set", "render.encoding=klingon"], "not a known text encoding"),
    ],
    ids=["missing", "empty-dir", "undecodable", "font", "font-size", "unknown-key", "encoding"],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, setup, extra, expected):
    setup(tmp_path)
    out = tmp_path / "out"
    result = invoke("render", tmp_path / "x", "--output-dir", out, *extra)
    assert result.exit_code == 2, result.output
    assert expected in result.stderr
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (out / "layout.jsonl").exists()


def test_config_show_and_validate(tmp_path):
    shown = invoke("config", "show", "render", "--set", "render.mode=small")
    assert shown.exit_code == 0 and "mode: small" in shown.stdout
    good = tmp_path / "render.yaml"
    good.write_text(shown.stdout)
    bad = tmp_path / "bad.yaml"
    bad.write_text("render:\n  mode: base\n  mode: tiny\n")
    assert invoke("config", "validate", good).exit_code == 0
    result = invoke("config", "validate", good, bad, "--command", "render", "--json")
    assert result.exit_code == 2
    verdicts = json.loads(result.stdout)
    assert [v["ok"] for v in verdicts] == [True, False] and "duplicate key" in verdicts[1]["error"]


def test_config_show_unknown_command():
    result = invoke("config", "show", "nonsense")
    assert result.exit_code == 2 and "no config for 'nonsense'" in result.stderr and "bench longbench" in result.stderr


def test_rerun_into_the_same_directory_is_refused_and_overwrite_leaves_no_stale_pages(tmp_path):
    long_doc, short_doc, out = tmp_path / "long.txt", tmp_path / "short.txt", tmp_path / "out"
    long_doc.write_text("many words " * 6000)
    short_doc.write_text("one page")
    args = ("-o", out, "--set", "render.mode=tiny", "--set", "render.tokenizer=none")
    assert invoke("render", long_doc, *args).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    refused = invoke("render", short_doc, *args)
    assert (
        refused.exit_code == 2 and "finished `optical render` run" in refused.stderr and "--overwrite" in refused.stderr
    )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing touched
    assert invoke("render", short_doc, *args, "--overwrite").exit_code == 0
    assert sorted(p.name for p in out.glob("page_*.png")) == ["page_0001.png"] == [p["image"] for p in layout(out)]


def test_user_text_in_messages_is_never_read_as_markup(tmp_path):
    # A path such as "report[bold].txt" or advice like pip install 'optical[dev]' must reach the user intact.
    missing = tmp_path / "report[bold]draft[/bold].txt"
    result = invoke("render", missing, "--output-dir", tmp_path / "out")
    assert result.exit_code == 2
    assert f"input not found: {missing};" in result.stderr


def test_warnings_keep_brackets(capsys):
    from optical_cli.reports.console import warn

    warn("scikit-learn is not installed (pip install 'optical[dev]')")
    assert "warning: scikit-learn is not installed (pip install 'optical[dev]')" in capsys.readouterr().err


COMMANDS = (
    [],
    ["render"],
    ["encode"],
    ["train-adapter"],
    ["bench", "longbench"],
    ["index", "build-energy"],
    ["index", "search"],
    ["sweep", "diffusion"],
    ["config", "show"],
    ["config", "validate"],
)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "optical")
def test_help_reads_cleanly(command):
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "Usage: optical" in result.output
    assert "<bool>" not in result.output, result.output  # a flag takes no value
    options = [line for line in result.output.splitlines() if line.lstrip().startswith("-")]
    for noise in ("<list[", "<str>]"):  # a repeated option names what it takes (its metavar), not a Python type
        assert not any(noise in line for line in options), (noise, result.output)
