"""The command line's own conventions: --version, -h, defaults in --help, config names."""

import yaml
from typer.testing import CliRunner

from optical_cli.cli import app

runner = CliRunner()


def test_version_and_short_help_exit_0():
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.stdout.startswith("optical ")
    for args in (["-h"], ["bench", "longbench", "-h"], ["index", "search", "-h"]):
        shown = runner.invoke(app, args)
        assert shown.exit_code == 0 and "Usage:" in shown.output, args


def help_text(*args) -> str:
    """--help as one line of words (the panel's borders and wrapping removed)."""
    return " ".join(runner.invoke(app, [*args, "--help"]).output.replace("│", " ").split())


def test_help_says_where_config_backed_flags_get_their_defaults():
    shown = help_text("sweep", "diffusion")
    assert "sweep.etas=0.05,0.1,0.15,0.2 in the config" in shown and "sweep.limit=1681 in the config" in shown
    shown = help_text("bench", "longbench")
    assert "bench.num_samples=50 in the config" in shown


def test_config_show_takes_the_clis_names_and_lists_them():
    for name, section in (
        (["bench", "longbench"], "bench"),
        (["index", "build-energy"], "search"),
        (["index"], "search"),
        (["sweep", "diffusion"], "sweep"),
        (["diffusion"], "tuning"),
        (["sweep", "frontier"], "sweep"),
        (["longbench"], "bench"),
        (["train-adapter"], "train"),
        (["ask"], "ask"),
    ):
        shown = runner.invoke(app, ["config", "show", *name])
        assert shown.exit_code == 0, shown.output
        assert section in yaml.safe_load(shown.stdout), name
        assert "old name" not in shown.stderr
    for old, section in ((["energy"], "search"), (["sweep"], "tuning"), (["sweep-render"], "sweep")):
        shown = runner.invoke(app, ["config", "show", *old])  # names of earlier versions: a one-line deprecation
        assert shown.exit_code == 0 and section in yaml.safe_load(shown.stdout), old
        assert len(shown.stderr.strip().splitlines()) == 1 and "old name" in shown.stderr, shown.stderr
    unknown = runner.invoke(app, ["config", "show", "benchmark"])
    assert unknown.exit_code == 2 and "bench longbench" in unknown.stderr and "index build-energy" in unknown.stderr
    checked = runner.invoke(app, ["config", "validate", "configs/longbench.yaml", "--command", "bench longbench"])
    assert checked.exit_code == 0, checked.output
