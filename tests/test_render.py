"""Render guarantees: no character lost, nothing clipped, undrawable characters marked and counted."""

import random
import unicodedata
from pathlib import Path

import pytest
from PIL import ImageDraw

from optical_cli.config.sections import RenderSection
from optical_cli.documents import decode
from optical_cli.errors import InputError
from optical_cli.render.pages import PageRenderer, is_variation_selector, non_space, render_document

MARKER = "\u25a1"

VARIED = {
    "long_word": "start " + "x" * 1000 + " end",
    "tabs": "a\tb\t\tc\n\tindented\tline",
    "crlf": "line one\r\nline two\rline three\n",
    "blank_lines": "para one\n\n\n\npara two\n\n",
    "greek_cyrillic": "Η γρήγορη καφέ αλεπού. Съешь же ещё этих мягких французских булок.",
    "accents_symbols": "café naïve façade ±0.5 % 42 °C € 10 × ÷ ≤ ≥ → ← ∑ ∫ √",
    "arabic_hebrew": "مرحبا بالعالم שלום עולם",
    "only_spaces_and_newlines": "   \n\n  \n",
    "long_lines": ("lorem ipsum dolor sit amet " * 200 + "\n") * 3,
    "indentation_deeper_than_line": " " * 400 + "word",
    "emoji_presentation": "\u21aa\ufe0f next \u2764\ufe0f love \u263a\ufe0e text \u2615\ufe0f tea \u2714\u200d\u2714 "
    "done",
}


def renderer(**overrides) -> PageRenderer:
    return PageRenderer(RenderSection(tokenizer="none", **overrides))


def drawn(pages) -> str:
    return "".join("".join(page) for page in pages)


@pytest.mark.parametrize("reflow", [False, True], ids=["layout", "reflow"])
@pytest.mark.parametrize("name", sorted(VARIED))
def test_no_character_is_lost(name, reflow):
    r = renderer(reflow=reflow)
    text = VARIED[name]
    pages, replaced, removed = r.layout(text)
    normalised, _, _ = r.normalize(text)
    assert non_space(drawn(pages)) == non_space(normalised)
    if name not in ("arabic_hebrew",):  # DejaVu Sans Mono draws all of these
        assert replaced == 0
        # Only invisible characters (controls, joiners, variation selectors) may go missing.
        kept = "".join(
            ch for ch in non_space(text) if not (unicodedata.category(ch) in ("Cc", "Cf") or is_variation_selector(ch))
        )
        assert non_space(drawn(pages)) == kept
        assert removed == len(non_space(text)) - len(kept)


@pytest.mark.parametrize("reflow", [False, True], ids=["layout", "reflow"])
def test_no_character_lost_on_200k_random_characters(reflow):
    rng = random.Random(0)
    alphabet = (
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?()[]{}<>/\\|-_=+*&^%$#@~`'\"αβγδЖЩüéß€"
    )
    pieces, total = [], 0
    while total < 200_000:
        kind = rng.random()
        if kind < 0.75:
            pieces.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))))
        elif kind < 0.9:
            pieces.append(" " * rng.randint(1, 3))
        elif kind < 0.97:
            pieces.append("\n" * rng.randint(1, 2))
        else:
            pieces.append("\t" if rng.random() < 0.5 else "y" * rng.randint(150, 400))
        total += len(pieces[-1]) + 1
        pieces.append(" ")
    text = "".join(pieces)
    r = renderer(reflow=reflow)
    pages, replaced, _ = r.layout(text)
    assert replaced == 0
    assert non_space(drawn(pages)) == non_space(text)
    assert len(pages) > 10


def test_reflow_packs_hard_wrapped_paragraphs_into_full_lines():
    sample = (Path(__file__).resolve().parent.parent / "data" / "sample" / "optical_compression.md").read_text()
    plain, dense = renderer(), renderer(reflow=True)
    plain_pages, dense_pages = plain.layout(sample)[0], dense.layout(sample)[0]
    plain_lines = [line for page in plain_pages for line in page]
    dense_lines = [line for page in dense_pages for line in page]
    assert "" not in dense_lines and "" in plain_lines  # blank lines between paragraphs are gone
    assert len(dense_lines) < 0.8 * len(plain_lines)
    # each paragraph starts a line: the first words of the second paragraph open a line
    assert any(line.startswith("This sample document ships with `optical`") for line in dense_lines)

    def mean_width(lines):
        filled = [len(line) for line in lines if line]
        return sum(filled) / len(filled)

    assert mean_width(dense_lines) > 1.5 * mean_width(
        plain_lines
    )  # the source's ~90-column lines now run to the margin


def test_every_line_fits_the_page_width_and_every_page_the_height():
    r = renderer()
    pages, _, _ = r.layout(VARIED["long_lines"] + VARIED["long_word"] + VARIED["accents_symbols"])
    draw = ImageDraw.Draw(r.draw(pages[0]))
    widest = 0.0
    for page in pages:
        assert 1 <= len(page) <= r.lines_per_page
        for line in page:
            advance = r.font.getlength(line)  # where the next character would start
            ink_right = draw.textbbox((r.left, r.baseline(0)), line, font=r.font, anchor="ls")[2] if line else r.left
            assert r.left + advance <= r.right_limit and ink_right <= r.right_limit, (line, advance, ink_right)
            widest = max(widest, advance)
    assert widest > 0.9 * (r.right_limit - r.left)  # long lines are wrapped near the margin, not far before it


@pytest.mark.parametrize(
    "mode,font_size,margin", [("base", 10, 16), ("tiny", 8, 0), ("small", 14, 4), ("large", 22, 30)]
)
def test_nothing_is_clipped(mode, font_size, margin):
    """Measured ink bounding boxes of every drawn line lie inside the page."""
    r = renderer(mode=mode, font_size=font_size, margin=margin)
    text = "ÅÉÎ gjpqy |[]{} " + VARIED["long_word"] + "\n" + VARIED["greek_cyrillic"] + "\n" + "Wj" * 500
    text += "\n" + "\n".join("line %d g" % i for i in range(400))
    pages, _, _ = r.layout(text)
    image_px = r.page_px
    draw = ImageDraw.Draw(r.draw(pages[0]))
    for page in pages:
        for index, line in enumerate(page):
            if not line:
                continue
            left, top, right, bottom = draw.textbbox((r.left, r.baseline(index)), line, font=r.font, anchor="ls")
            assert left >= 0 and top >= 0, (line, left, top)
            assert right <= image_px and bottom <= image_px, (line, right, bottom)


def test_ink_actually_lands_on_the_page():
    page = render_document("Hello, optical world.", RenderSection(tokenizer="none"))[0]
    assert page.image.size == (1024, 1024) and page.image.mode == "L"
    assert page.image.getextrema() == (0, 255)
    assert page.text == "Hello, optical world."


def test_undrawable_characters_are_replaced_one_for_one_and_counted():
    r = renderer()
    text = "emoji 😀😀 and 中文 here"
    pages, replaced, _ = r.layout(text)
    assert replaced == 4
    assert non_space(drawn(pages)) == "emoji" + MARKER * 2 + "and" + MARKER * 2 + "here"


def test_control_characters_are_removed_and_counted():
    r = renderer()
    pages, replaced, removed = r.layout("bell\x07 null\x00 zero\u200bwidth \ufeffbom")
    assert removed == 4 and replaced == 0
    assert non_space(drawn(pages)) == "bellnullzerowidthbom"


def test_variation_selectors_and_joiners_are_removed_not_boxed():
    r = renderer()
    # "↪️" is U+21AA + U+FE0F; U+FE0E asks for text style; U+200D joins an emoji sequence;
    # U+E0100 is an ideographic variation selector.
    pages, replaced, removed = r.layout("return \u21aa\ufe0f back \u2192\ufe0e on\u200doff \u2665\U000e0100")
    assert (removed, replaced) == (4, 0)
    assert non_space(drawn(pages)) == "return\u21aaback\u2192onoff\u2665"
    assert MARKER not in drawn(pages)


def test_tabs_expand_to_columns():
    r = renderer(tab_size=4)
    normalised, _, _ = r.normalize("a\tb\n\tc")
    assert normalised == "a   b\n    c"


def test_indentation_is_kept():
    r = renderer()
    pages, _, _ = r.layout("def f():\n    return 1\n")
    assert pages[0] == ["def f():", "    return 1"]


def test_blank_lines_kept_inside_but_not_at_the_end():
    r = renderer()
    pages, _, _ = r.layout("a\n\nb\n\n\n")
    assert pages == [["a", "", "b"]]


def test_empty_text_gives_no_pages():
    assert renderer().layout("")[0] == []
    assert renderer().layout("  \n\n \t")[0] == []


def test_long_word_is_broken_not_clipped():
    r = renderer(mode="tiny")
    pages, _, _ = r.layout("y" * 2000)
    lines = pages[0]
    assert len(lines) > 10 and "".join(lines) == "y" * 2000


def test_font_size_that_fits_no_line_is_an_input_error():
    with pytest.raises(InputError, match="font_size"):
        renderer(mode="tiny", font_size=200, margin=200)


def test_missing_font_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="font not found"):
        renderer(font=str(tmp_path / "nope.ttf"))


def test_not_a_font_is_an_input_error(tmp_path):
    bogus = tmp_path / "bogus.ttf"
    bogus.write_bytes(b"not a font at all")
    with pytest.raises(InputError, match="cannot be read"):
        renderer(font=str(bogus))


def test_undecodable_bytes_name_file_and_offset():
    with pytest.raises(InputError, match=r"doc.txt: cannot decode as utf-8 at byte offset 3 \(byte 0xff\)"):
        decode(b"abc\xffdef", "doc.txt", RenderSection().encoding, RenderSection().errors)
    assert decode(b"abc\xffdef", "doc.txt", errors="replace") == "abc\ufffddef"


def test_page_sizes_follow_modes():
    for mode, size in {"tiny": 512, "small": 640, "base": 1024, "large": 1280}.items():
        assert renderer(mode=mode).page_px == size


@pytest.mark.parametrize(
    "mode,font_size,line_spacing", [("base", 10, 1.2), ("tiny", 8, 1.0), ("small", 13, 1.0), ("large", 22, 1.5)]
)
def test_glyph_cache_draws_the_same_pixels_as_pil(mode, font_size, line_spacing):
    """The fast compositor must be indistinguishable from PIL's own drawing."""
    import numpy as np

    r = renderer(mode=mode, font_size=font_size, line_spacing=line_spacing)
    text = ("W@Wm jgq ÅÉ café Привет ±√∑ ___ ||| e\u0301 " * 40 + "\n\n") * 3 + VARIED["long_word"]
    pages, _, _ = r.layout(text)
    for lines in pages + [["", "a", ""], []]:
        fast, reference = np.asarray(r.draw(lines)), np.asarray(r.draw_with_pil(lines))
        assert (fast == reference).all(), f"{(fast != reference).sum()} pixels differ"


def test_glyph_cache_can_be_switched_off():
    r = renderer(glyph_cache=False)
    assert r._atlas is None and r.draw(["abc"]).getextrema() == (0, 255)


def test_png_writer_round_trips_exactly(tmp_path):
    import io

    import numpy as np
    from PIL import Image

    from optical_cli.render.pages import png_bytes

    page = render_document("Round trip: ÅÉ gjpq ___ " * 200, RenderSection(tokenizer="none", mode="tiny"))[0].image
    decoded = Image.open(io.BytesIO(png_bytes(page)))
    assert decoded.mode == "L" and decoded.size == page.size
    assert np.array_equal(np.asarray(decoded), np.asarray(page))


def test_glyph_cache_matches_pil_for_a_proportional_font():
    """A font whose characters advance differently goes through the scattering path."""
    from pathlib import Path

    import matplotlib
    import numpy as np

    sans = Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
    r = renderer(font=str(sans), mode="small", font_size=12, line_spacing=1.0)
    pages, _, _ = r.layout("Wide W and narrow i, ___ jgq ÅÉ; " * 80)
    for lines in pages:
        fast, reference = np.asarray(r.draw(lines)), np.asarray(r.draw_with_pil(lines))
        assert (fast == reference).all(), f"{(fast != reference).sum()} pixels differ"
