"""DeepEncoder (DeepSeek-OCR's vision encoder) in plain PyTorch.

The model: ``DeepEncoder(cfg)``, ``forward(pixels)``, ``arrange(...)``, ``set_attention(path)``. The
``auto`` attention choice's process-wide record: ``auto_choices()``, ``seed_auto_choices(records)``,
``clear_auto_choices()``. Whether bfloat16/float16 products run as float32 ones on this CPU:
``widens(dtype, device)`` (see products.py). Running it on pages (build from config sections, batches halved on
out-of-memory): :mod:`optical_cli.models.deepencoder.runner`.
"""

from .attention import ATTENTION_MODES, AUTO, auto_choices, clear_auto_choices, seed_auto_choices
from .config import DeepEncoderConfig
from .encoder import DeepEncoder, count_parameters
from .products import widens

__all__ = [
    "ATTENTION_MODES",
    "AUTO",
    "DeepEncoder",
    "DeepEncoderConfig",
    "auto_choices",
    "clear_auto_choices",
    "count_parameters",
    "seed_auto_choices",
    "widens",
]
