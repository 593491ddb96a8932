"""Who reads for a benchmark: the configured engine (hf or vllm) in this process, or a server (``bench.server``)."""

from __future__ import annotations

from typing import Sequence

from ..engines import factory
from ..engines.chain import ChainSpec
from ..serving.remote import server_reader


def open_reader(cfg, conditions: Sequence[str]):
    """The reader for ``cfg`` (any bench config): a server checked against the config before the first item,
    or ``bench.engine``'s reader with what the conditions need loaded and warmed up."""
    if cfg.bench.server:
        return server_reader(cfg, conditions)
    return factory.build_reader(ChainSpec.from_config(cfg, "bench"), conditions)
