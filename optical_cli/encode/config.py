"""The schema of `optical encode`."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from ..config.schema import Section
from ..config.sections import DeepEncoderSection, RenderSection, RuntimeConfig


class EncodeSection(Section):
    batch_size: Union[Literal["auto"], Annotated[int, Field(ge=1)]] = Field(
        "auto",
        description="views per forward pass (halved automatically on out-of-memory); auto: the fastest per view "
        "measured on this device in the run's first batches (CPU 1/2/4, GPU 8-64), then remembered for the device",
    )
    compile: bool = Field(False, description="torch.compile the encoder")
    max_image_side: int = Field(16384, ge=16, description="reject input images with a side longer than this (pixels)")
    queue_pages: int = Field(
        32, ge=1, description="pages the page workers (runtime.workers) make ahead of the encoder, at most"
    )
    shard_pages: int = Field(
        256,
        ge=1,
        description="pages per features shard: what one process holds in memory before writing; the unit of --resume "
        "and of data parallelism",
    )


class EncodeConfig(Section):
    deepencoder: DeepEncoderSection = DeepEncoderSection()
    encode: EncodeSection = EncodeSection()
    render: RenderSection = RenderSection()
    runtime: RuntimeConfig = RuntimeConfig()
