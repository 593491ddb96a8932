"""The schema of `optical encode`."""

from __future__ import annotations

from pydantic import Field

from ..config.schema import Section
from ..config.sections import DeepEncoderSection, RenderSection, RuntimeConfig


class EncodeSection(Section):
    batch_size: int = Field(8, ge=1, description="views per forward pass; halved automatically on out-of-memory")
    compile: bool = Field(False, description="torch.compile the encoder")
    max_image_side: int = Field(16384, ge=16, description="reject input images with a side longer than this (pixels)")
    queue_pages: int = Field(32, ge=1, description="rendered pages buffered ahead of the encoder with --text")
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
