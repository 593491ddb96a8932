"""DeepEncoder (DeepSeek-OCR's vision encoder) in plain PyTorch."""

from .config import DeepEncoderConfig
from .encoder import DeepEncoder, count_parameters

__all__ = ["DeepEncoder", "DeepEncoderConfig", "count_parameters"]
