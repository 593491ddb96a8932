"""The documentation: the generated reference pages match the code, and the README stays a short
front door (the two set-up commands near its top, the rest in docs/)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README_MAX_LINES = 200
SETUP_WITHIN_LINES = 40
CONFIG_PATH = re.compile(r"configs/[\w./-]+\.yaml")


def test_reference_pages_equal_what_the_code_generates():
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "docs_reference.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr


def test_readme_is_at_most_200_lines():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def test_readme_names_both_setup_commands_in_its_first_40_lines():
    head = "\n".join((REPO / "README.md").read_text(encoding="utf-8").splitlines()[:SETUP_WITHIN_LINES])
    assert "make demo" in head and "make test" in head


def test_every_config_file_the_docs_name_exists():
    """A config renamed or moved in configs/ must not leave a command in the docs that fails."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    missing = {
        f"{page.relative_to(REPO)}: {name}"
        for page in pages
        for name in CONFIG_PATH.findall(page.read_text(encoding="utf-8"))
        if not (REPO / name).is_file()
    }
    assert not missing, sorted(missing)
