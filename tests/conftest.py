"""Test set-up: offline, CPU, quiet, fast."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated_results(tmp_path, monkeypatch):
    """Runs without --output-dir write under a temporary results/ folder, never the repo's."""
    from optical_cli import artifacts

    monkeypatch.setattr(artifacts, "RESULTS_DIR", tmp_path / "results")
    if "OPTICAL_CACHE" not in os.environ:  # derived models and the page-feature cache: the test's own
        monkeypatch.setenv("OPTICAL_CACHE", str(tmp_path / "optical-cache"))
    yield


@pytest.fixture(scope="session")
def optical_server(tmp_path_factory):
    """One real `optical serve` (tiny config, keyed, alias glyph) for the vLLM test modules; see vllm_servers.py."""
    pytest.importorskip("vllm")
    from vllm_servers import KEY, KEY_VARIABLE, ServerProcess

    server = ServerProcess(tmp_path_factory.mktemp("server"))
    os.environ[KEY_VARIABLE] = KEY  # ask --server and the scripts read the key from it, as the server does
    try:
        server.start_s = server.start()
        yield server
    finally:
        server.stop()
        os.environ.pop(KEY_VARIABLE, None)
