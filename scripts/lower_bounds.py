"""Print pip constraints that pin every dependency of pyproject.toml at its declared lower bound.

Used by scripts/check_lower_bounds.sh: installing the package under these constraints and
running the tests shows that each ``>=`` bound is a version the code runs on. torch is left
out: its version is pinned by the Makefile (TORCH_VERSION), which installs it first.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*>=\s*([^,;\s]+)")


def lower_bounds(extras: tuple[str, ...] = ("dev",)) -> dict[str, str]:
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project.get("optional-dependencies", {}).get(extra, [])
    bounds = {}
    for requirement in requirements:
        match = REQUIREMENT.match(requirement)
        if match is None:
            sys.exit(f"{PYPROJECT}: {requirement!r} has no '>=' lower bound; declare one")
        bounds[match.group(1).lower()] = match.group(3)
    return bounds


if __name__ == "__main__":
    for name, version in sorted(lower_bounds().items()):
        if name != "torch":
            print(f"{name}=={version}")
