"""Documents as they come: PDF text layers and page images (documents.py, `optical render` on PDFs)."""

import json
import textwrap

import pytest
from PIL import Image
from typer.testing import CliRunner

from optical_cli.cli import app
from optical_cli.documents import normalize_pdf_text, pdf_page_count, rasterize_pdf, read_document, read_pdf
from optical_cli.errors import InputError
from optical_cli.render.pages import non_space

runner = CliRunner()
TEXT = (
    "Optical compression renders long-form text to page images; a well-known trade-off: state-of-the-art "
    "encoders read ten-fold fewer tokens. Co-operation, re-entry and e-mail are hyphen-heavy words (x-ray, "
    "long-term, self-evident). "
) * 14


def make_pdf(path, text=TEXT, pages=3, with_text=True):
    """A PDF made with matplotlib, its fonts embedded as TrueType (pdf.fonttype 42), the text
    wrapped at 70 columns (breaking at hyphens too) and spread over ``pages`` pages."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    lines = textwrap.wrap(text, 70)
    per_page = -(-len(lines) // pages)
    with matplotlib.rc_context({"pdf.fonttype": 42}), PdfPages(path) as pdf:
        for page in range(pages):
            figure = plt.figure(figsize=(8.5, 11))
            if with_text:
                for row, line in enumerate(lines[page * per_page : (page + 1) * per_page]):
                    figure.text(0.05, 0.95 - row * 0.03, line, family="DejaVu Sans Mono", fontsize=10)
            else:  # a "scan": ink as an image, no text layer
                figure.figimage([[0.0, 1.0], [1.0, 0.0]], xo=100, yo=100)
            pdf.savefig(figure)
            plt.close(figure)
    return path


def minimal_pdf(trailer_extra=b"", extra_objects=()):
    """A one-page PDF written by hand (the trailer can name an /Encrypt dictionary)."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>",
        *extra_objects,
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R " % (len(objects) + 1) + trailer_extra
    out += b">>\nstartxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


def encrypted_pdf():
    """Standard security handler (RC4, revision 2) with a user password: its /U entry matches no
    password, so the empty one fails and PDFium asks for a password, as for any locked PDF."""
    file_id = b"<" + b"11" * 16 + b">"
    return minimal_pdf(
        b"/Encrypt 4 0 R /ID [" + file_id + b" " + file_id + b"] ",
        [b"<< /Filter /Standard /V 1 /R 2 /O <" + b"ab" * 32 + b"> /U <" + b"cd" * 32 + b"> /P -4 >>"],
    )


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_normalize_pdf_text_undoes_pdfium_quirks():
    assert normalize_pdf_text("Co\ufffeoperation\r\nnext\x02line \ufb01ne") == "Co-operation\nnext-line fine"


def test_text_layer_keeps_every_character_hyphens_included(tmp_path):
    pdf = make_pdf(tmp_path / "doc.pdf")
    document = read_document(pdf)
    assert document.is_pdf and document.has_text and len(document.page_texts) == 3
    assert "\ufffe" not in document.text
    assert non_space(document.text) == non_space(TEXT)
    assert TEXT.count("-") == document.text.count("-") > 40


def test_render_pdf_json_keeps_all_characters_in_order(tmp_path):
    pdf = make_pdf(tmp_path / "doc.pdf")
    out = tmp_path / "out"
    result = invoke("render", pdf, "--json", "-o", out, "--set", "render.tokenizer=none")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    pages = [json.loads(line) for line in (out / "layout.jsonl").read_text().splitlines()]
    assert report["pages"] == len(pages) >= 1 and report["per_document"][0]["text_layer"] is True
    assert non_space("".join("".join(page["lines"]) for page in pages)) == non_space(TEXT)


def test_pdf_pages_rasterises_the_pdfs_own_pages(tmp_path):
    pdf = make_pdf(tmp_path / "doc.pdf")
    out = tmp_path / "out"
    result = invoke(
        "render",
        pdf,
        "--json",
        "-o",
        out,
        "--set",
        "render.source=pdf-pages",
        "--set",
        "render.mode=small",
        "--set",
        "render.tokenizer=none",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["pages"] == pdf_page_count(pdf) == 3 and report["source"] == "pdf-pages"
    pages = [json.loads(line) for line in (out / "layout.jsonl").read_text().splitlines()]
    assert [page["pdf_page"] for page in pages] == [1, 2, 3]
    assert non_space("".join("".join(page["lines"]) for page in pages)) == non_space(TEXT)
    image = Image.open(out / "page_0001.png")
    assert image.size == (640, 640)
    # a portrait letter page fitted into the square: grey bands left and right, paper and ink inside
    assert image.getpixel((2, 320)) == 127 and image.getpixel((637, 320)) == 127
    assert image.getpixel((320, 630)) == 255 and image.crop((100, 0, 540, 640)).getextrema()[0] < 100


def test_scan_without_text_layer(tmp_path):
    scan = make_pdf(tmp_path / "scan.pdf", pages=2, with_text=False)
    document = read_pdf(scan)
    assert not document.has_text and document.text == ""
    assert len(list(rasterize_pdf(scan, 512))) == 2
    result = invoke("render", scan, "-o", tmp_path / "a")
    assert result.exit_code == 2 and "no text layer" in result.output and "pdf-pages" in result.output
    assert not (tmp_path / "a" / "layout.jsonl").exists()
    result = invoke("render", scan, "--json", "-o", tmp_path / "b", "--set", "render.source=pdf-pages")
    assert result.exit_code == 0, result.output
    assert "native condition has no text" in result.stderr
    report = json.loads(result.stdout)
    assert report["pages"] == 2 and report["characters"] == 0 and report["pdfs_without_text_layer"] == [str(scan)]


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("corrupt", "not a readable PDF"),
        ("encrypted", "encrypted"),
        ("empty", "no pages"),
        ("truncated", "not a readable PDF"),
    ],
)
def test_bad_pdfs_exit_2_with_one_line_naming_the_file(tmp_path, kind, expected):
    path = tmp_path / f"{kind}.pdf"
    if kind == "corrupt":
        path.write_bytes(b"%PDF-1.7\n this is not a PDF body at all \x00\x01\x02")
    elif kind == "encrypted":
        path.write_bytes(encrypted_pdf())
    elif kind == "empty":
        import pypdfium2

        empty = pypdfium2.PdfDocument.new()
        empty.save(str(path))
        empty.close()
    else:
        path.write_bytes(make_pdf(tmp_path / "whole.pdf").read_bytes()[:700])
    with pytest.raises(InputError, match=expected):
        read_document(path)
    for args in (("render", path, "-o", tmp_path / "out"), ("encode", "--text", path, "-o", tmp_path / "enc")):
        result = invoke(*args)
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.strip().splitlines() if line.strip()]
        assert len(lines) == 1 and str(path) in lines[0] and expected in lines[0], result.output
    assert not (tmp_path / "out" / "layout.jsonl").exists()


def test_handmade_plain_pdf_opens_so_the_encrypted_one_fails_for_its_encryption(tmp_path):
    plain = tmp_path / "plain.pdf"
    plain.write_bytes(minimal_pdf())
    assert pdf_page_count(plain) == 1


def test_training_corpus_reads_pdfs_in_a_directory(tmp_path):
    from optical_cli.train.corpus import read_corpus

    folder = tmp_path / "docs"
    folder.mkdir()
    make_pdf(folder / "a.pdf", pages=1)
    (folder / "b.txt").write_text("plain text document")
    documents = read_corpus(str(folder))
    assert len(documents) == 2 and non_space(documents[0]) == non_space(TEXT) and documents[1] == "plain text document"
    make_pdf(folder / "c.pdf", pages=1, with_text=False)
    with pytest.raises(InputError, match="no text layer"):
        read_corpus(str(folder))


TINY_ENCODER = [
    "--set",
    "deepencoder.weights=random",
    "--set",
    "deepencoder.architecture=tiny",
    "--set",
    "runtime.device=cpu",
    "--set",
    "runtime.dtype=float32",
    "--set",
    "deepencoder.mode=tiny",
]


def test_encode_reads_a_pdfs_text_layer_and_its_own_pages(tmp_path):
    from safetensors.torch import load_file

    pdf = make_pdf(tmp_path / "doc.pdf", pages=2)
    direct = invoke("encode", "--text", pdf, *TINY_ENCODER, "-o", tmp_path / "a")
    assert direct.exit_code == 0, direct.output
    rendered = tmp_path / "r"
    assert (
        invoke("render", pdf, "-o", rendered, "--set", "render.mode=tiny", "--set", "render.tokenizer=none").exit_code
        == 0
    )
    from_dir = invoke("encode", "-i", rendered, *TINY_ENCODER, "-o", tmp_path / "b")
    assert from_dir.exit_code == 0, from_dir.output
    a = load_file(str(tmp_path / "a" / "features.safetensors"))["features"]
    b = load_file(str(tmp_path / "b" / "features.safetensors"))["features"]
    assert a.shape == b.shape and (a == b).all()
    originals = tmp_path / "p"
    assert (
        invoke(
            "render", pdf, "-o", originals, "--set", "render.mode=tiny", "--set", "render.source=pdf-pages"
        ).exit_code
        == 0
    )
    pages = invoke("encode", "-i", originals, *TINY_ENCODER, "-o", tmp_path / "c")
    assert pages.exit_code == 0, pages.output
    assert load_file(str(tmp_path / "c" / "features.safetensors"))["features"].shape[0] == 2


def test_bench_items_can_take_their_document_from_a_pdf(tmp_path):
    from optical_cli.bench.data import load_items

    make_pdf(tmp_path / "report.pdf", pages=2)
    record = {
        "_id": "mine-1",
        "domain": "own",
        "difficulty": "easy",
        "length": "short",
        "question": "Which words?",
        "choice_A": "a",
        "choice_B": "b",
        "choice_C": "c",
        "choice_D": "d",
        "answer": "A",
        "context_file": "report.pdf",
    }
    data = tmp_path / "items.jsonl"
    data.write_text(json.dumps(record) + "\n")
    [item] = load_items(str(data))
    assert non_space(item.context) == non_space(TEXT)
    make_pdf(tmp_path / "scan.pdf", pages=1, with_text=False)
    data.write_text(json.dumps(record | {"context_file": "scan.pdf"}) + "\n")
    with pytest.raises(InputError, match="no text layer"):
        load_items(str(data))


def test_a_pdf_on_stdin_is_read_for_its_text_layer(tmp_path):
    pdf = make_pdf(tmp_path / "doc.pdf", pages=1)
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["render", "-", "-o", str(out), "--set", "render.tokenizer=none"], input=pdf.read_bytes()
    )
    assert result.exit_code == 0, result.output
    pages = [json.loads(line) for line in (out / "layout.jsonl").read_text().splitlines()]
    assert non_space("".join("".join(page["lines"]) for page in pages)) == non_space(TEXT)
    bad = runner.invoke(app, ["render", "-", "-o", str(tmp_path / "bad")], input=encrypted_pdf())
    assert bad.exit_code == 2 and "<stdin>: the PDF is encrypted" in bad.stderr
