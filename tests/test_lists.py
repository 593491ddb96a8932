"""One rule for every comma-separated flag (lists.py): an empty entry between commas is a usage error that
names the flag, whichever command takes it; items are stripped and kept once, in order."""

import pytest
from typer.testing import CliRunner

from optical_cli.cli import app
from optical_cli.errors import InputError
from optical_cli.lists import parse_choice, parse_choices, parse_list, split_list

runner = CliRunner()


def test_items_are_stripped_and_kept_once_in_order():
    assert split_list(" b, a ,b", "--x", "a,b") == ["b", "a"]
    assert parse_list("2, 4,2", "--steps", "2,4", int, "a whole number") == [2, 4]
    assert parse_choices("optical,native", "--c", ("native", "optical")) == ["optical", "native"]
    assert parse_choice("ocr", "--judge", ("ocr",)) == "ocr"


@pytest.mark.parametrize("text", ["a,,b", "a,", ",a"])
def test_an_empty_entry_is_an_error(text):
    with pytest.raises(InputError, match="--x .*: empty entry between commas"):
        split_list(text, "--x", "a,b")


@pytest.mark.parametrize("text", ["", " ", " , "])
def test_an_empty_list_is_an_error_with_an_example(text):
    with pytest.raises(InputError, match="--x: empty list; .* for example --x a,b"):
        split_list(text, "--x", "a,b")


def test_conversion_and_checks_name_the_item():
    with pytest.raises(InputError, match="'x' is not a whole number"):
        parse_list("2,x", "--steps", "2,4", int, "a whole number")
    with pytest.raises(InputError, match="'0' must be positive"):
        parse_list("2,0", "--steps", "2,4", int, "a whole number", lambda v: None if v > 0 else "must be positive")
    with pytest.raises(InputError, match="'tesseract' is not one of ocr; hint"):
        parse_choice("tesseract", "--judge", ("ocr",), "hint")


@pytest.mark.parametrize(
    "args",
    [
        ["sweep", "diffusion", "--eta", "0.1,,0.2"],
        ["sweep", "diffusion", "--steps", "2,,4"],
        ["sweep", "frontier", "--font-size", "8,,10"],
        ["sweep", "frontier", "--mode", "base,,small"],
        ["bench", "longbench", "--ids", "a,,b"],
        ["bench", "longbench", "--conditions", "native,,optical"],
        ["index", "delete", "--index", "nowhere", "--ids", "a,,b"],
    ],
    ids=lambda args: " ".join(args[:3]),
)
def test_every_list_flag_refuses_an_empty_entry_the_same_way(args, tmp_path):
    result = runner.invoke(app, args)
    flag = args[-2]
    assert result.exit_code == 2, result.output
    assert f"{flag} " in result.stderr and "empty entry between commas" in result.stderr
