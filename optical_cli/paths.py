"""Where the project's own files are: the bundled configs and data (the one place that names them)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"
DATA_DIR = REPO_ROOT / "data"
# The sample document `optical render` draws when given no input.
SAMPLE_DOCUMENT = DATA_DIR / "sample" / "optical_compression.md"
# The CVE records with their CWE labels (data/cve/README.md says where they come from).
CVE_CORPUS = DATA_DIR / "cve" / "cves.jsonl"


def shown(path: Path) -> str:
    """A bundled file's path as a user reads it: relative to the repository."""
    return str(path.relative_to(REPO_ROOT))
