"""The page-feature cache (encode/page_cache.py): keyed by the page image and the encoder, bounded, least
recently used pages evicted first, shared by every DeepEncoderPages that reads the same pages."""

import os
import time

import torch
from PIL import Image

from optical_cli.config.sections import DeepEncoderSection, RuntimeConfig
from optical_cli.encode.page_cache import (
    CachedPages,
    PageFeatureCache,
    encoder_fingerprint,
    image_key,
    weights_identity,
)
from optical_cli.models.deepencoder.runner import DeepEncoderPages

TINY = DeepEncoderSection(weights="random", architecture="tiny", mode="tiny")
CPU = RuntimeConfig(device="cpu", dtype="float32")


def page(shade: int) -> Image.Image:
    image = Image.new("L", (512, 512), 255)
    image.paste(shade, (40, 40, 200, 60))
    return image


def test_image_key_is_the_pixels_not_the_object():
    assert image_key(page(0)) == image_key(page(0)) != image_key(page(1))
    assert image_key(page(0)) != image_key(page(0).convert("RGB"))  # another mode is another image


def test_fingerprint_changes_with_everything_that_changes_features(tmp_path):
    cpu = torch.device("cpu")
    base = encoder_fingerprint(TINY, CPU, cpu, "tiny")
    assert base == encoder_fingerprint(TINY, CPU, cpu, "tiny")
    assert base != encoder_fingerprint(TINY, CPU, cpu, "base")
    assert base != encoder_fingerprint(TINY.model_copy(update={"pixels": "published"}), CPU, cpu, "tiny")
    assert base != encoder_fingerprint(TINY, CPU.model_copy(update={"dtype": "bfloat16"}), cpu, "tiny")
    assert base != encoder_fingerprint(TINY, CPU.model_copy(update={"seed": 1}), cpu, "tiny")  # random weights
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"one")
    first = weights_identity(str(weights))
    os.utime(weights, ns=(1, 1))
    assert weights_identity(str(weights)) != first  # the same path, retrained: another encoder


def test_a_second_encode_reads_every_page_and_equals_the_first(tmp_path):
    cache = PageFeatureCache.at(tmp_path, 1.0)
    encoder = CachedPages(DeepEncoderPages(TINY, CPU, torch.device("cpu")), cache)
    pages = [page(0), page(80)]
    first = encoder.encode(pages)
    assert encoder.stats.as_dict() == {"pages_encoded": 2, "pages_cached": 0}
    again = CachedPages(DeepEncoderPages(TINY, CPU, torch.device("cpu")), cache)  # another process, say
    second = again.encode([page(80), page(0), page(160)])
    assert again.stats.as_dict() == {"pages_encoded": 1, "pages_cached": 2}
    assert torch.equal(second[0], first[1]) and torch.equal(second[1], first[0])
    assert again.runner is not None  # the third page needed the encoder
    other_mode = again.encode([page(0)], mode="small")
    assert again.stats.encoded == 1 and other_mode.shape[1] == 100  # another mode is another entry


def test_the_bound_evicts_the_least_recently_used_pages_first(tmp_path):
    features = torch.zeros(64, 32)
    entry = PageFeatureCache.at(tmp_path / "probe", 1.0)
    entry.put("f", "a" * 64, features)
    size = entry.size()
    cache = PageFeatureCache(tmp_path / "cache", max_bytes=int(size * 3.5))  # room for three entries
    for n, key in enumerate(("a", "b", "c")):
        cache.put("f", key * 64, features)
        os.utime(cache.path("f", key * 64), (time.time() - 100 + n, time.time() - 100 + n))
    assert cache.get("f", "a" * 64) is not None  # a is used again: now the most recent
    cache.put("f", "d" * 64, features)  # over the bound: the oldest go until 90% of it is left
    assert cache.get("f", "b" * 64) is None and cache.get("f", "a" * 64) is not None
    assert cache.size() <= cache.max_bytes * 0.9
    nothing = PageFeatureCache(tmp_path / "off", max_bytes=0)
    nothing.put("f", "e" * 64, features)
    assert nothing.get("f", "e" * 64) is None and not (tmp_path / "off").exists()
