"""The schemas of `optical render` and `optical sweep frontier` (the render frontier)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..config.schema import Section
from ..config.sections import RenderSection, RuntimeConfig


class RenderConfig(Section):
    render: RenderSection = RenderSection()
    runtime: RuntimeConfig = RuntimeConfig()


FrontierMode = Literal["tiny", "small", "base", "large", "gundam"]


class FrontierSection(Section):
    inputs: list[str] = Field(
        [],
        description="documents (.txt/.md/.pdf files or directories); empty = the bundled "
        "sample and CVE text (see cve_chars); --input replaces them",
    )
    cve_chars: int = Field(
        20000,
        ge=0,
        description="with the default inputs: this many characters of CVE "
        "descriptions from data/cve (one paragraph each), beside the bundled sample",
    )
    font_sizes: list[int] = Field([6, 7, 8, 9, 10, 12], min_length=1, description="default for --font-size (px)")
    modes: list[FrontierMode] = Field(
        ["base"], min_length=1, description="deepencoder modes (gundam pages are drawn at base size)"
    )
    reflow: list[bool] = Field([True], min_length=1)
    line_spacings: list[float] = Field([1.2], min_length=1)
    fonts: list[str] = Field(["DejaVuSansMono"], min_length=1, description="DejaVuSansMono or .ttf/.otf paths")
    judge: Literal["ocr"] = Field(
        "ocr",
        description="ocr: the PP-OCRv4 recogniser (rapidocr-onnxruntime) reading each "
        "drawn line crop; the trained-reader judge is not built yet",
    )
    max_error: float = Field(
        0.05, gt=0, lt=1, description="the operating point: the densest cell whose judge CER is at most this"
    )
    judge_segments: int = Field(
        160, ge=10, description="line segments the judge reads per cell: a seeded sample over all pages"
    )
    segment_chars: int = Field(
        40,
        ge=8,
        description="lines are cut at word boundaries into segments of at most this many "
        "characters (the recogniser is slow and less accurate on very long crops)",
    )
    bootstrap: int = Field(1000, ge=100, description="resamples of the segments for the CER's 95% interval")
    ocr_threads: int = Field(0, ge=0, description="onnxruntime threads (0 = one per core)")
    ocr_batch: int = Field(16, ge=1, description="segments per recogniser call")


class FrontierConfig(Section):
    sweep: FrontierSection = FrontierSection()
    render: RenderSection = RenderSection(reflow=True)
    runtime: RuntimeConfig = RuntimeConfig()
