"""Every size of DeepEncoder in one dataclass; the default is the official DeepSeek-OCR encoder."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class DeepEncoderConfig:
    # SAM ViT-B trunk
    sam_image_size: int = 1024  # size the positional table was made for (64x64 patches)
    sam_patch_size: int = 16
    sam_dim: int = 768
    sam_depth: int = 12
    sam_heads: int = 12
    sam_mlp_ratio: float = 4.0
    sam_window: int = 14
    sam_global_blocks: tuple[int, ...] = (2, 5, 8, 11)
    sam_neck_dim: int = 256
    sam_net2_dim: int = 512
    sam_out_dim: int = 1024  # net_3 output = CLIP hidden size = SAM half of the concat
    # CLIP-L trunk fed with SAM maps
    clip_dim: int = 1024
    clip_depth: int = 24
    clip_heads: int = 16
    clip_mlp_dim: int = 4096
    clip_patch_size: int = 14  # its own patch conv is stored but unused
    clip_grid: int = 16  # the position table holds clip_grid**2 + 1 rows
    # projector
    out_dim: int = 1280

    def __post_init__(self) -> None:
        if self.sam_out_dim != self.clip_dim:
            raise ValueError(
                f"sam_out_dim ({self.sam_out_dim}) must equal clip_dim ({self.clip_dim}): SAM maps are CLIP's patch "
                "embeddings"
            )
        if self.sam_dim % self.sam_heads or self.clip_dim % self.clip_heads:
            raise ValueError("dims must be divisible by the number of heads")
        if any(not 0 <= i < self.sam_depth for i in self.sam_global_blocks):
            raise ValueError(f"sam_global_blocks {self.sam_global_blocks} outside 0..{self.sam_depth - 1}")

    @property
    def sam_grid(self) -> int:
        return self.sam_image_size // self.sam_patch_size

    @property
    def projector_in(self) -> int:
        return self.clip_dim + self.sam_out_dim

    @classmethod
    def tiny(cls) -> "DeepEncoderConfig":
        """A few-thousand-parameter encoder with the official structure, for tests."""
        return cls(
            sam_dim=32,
            sam_depth=4,
            sam_heads=2,
            sam_window=4,
            sam_global_blocks=(1, 3),
            sam_neck_dim=16,
            sam_net2_dim=24,
            sam_out_dim=32,
            clip_dim=32,
            clip_depth=2,
            clip_heads=2,
            clip_mlp_dim=64,
            out_dim=48,
        )

    @classmethod
    def named(cls, name: str) -> "DeepEncoderConfig":
        if name == "official":
            return cls()
        if name == "tiny":
            return cls.tiny()
        raise ValueError(f"unknown DeepEncoder architecture {name!r}; use official or tiny")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "DeepEncoderConfig":
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown DeepEncoder config keys: {', '.join(sorted(unknown))}")
        if "sam_global_blocks" in data:
            data["sam_global_blocks"] = tuple(data["sam_global_blocks"])
        return cls(**data)
