"""load_deepencoder: every layout, strict name/shape checks, corrupt and missing sources."""

from __future__ import annotations

import pytest
import torch
from deepencoder_files import save_deepencoder
from safetensors.torch import save_file

from optical_cli.errors import InputError, ModelNotFoundError
from optical_cli.models.deepencoder import DeepEncoderConfig
from optical_cli.models.deepencoder.weights import load_deepencoder

CFG = DeepEncoderConfig.tiny()


@pytest.fixture(scope="module")
def reference():
    model = load_deepencoder(None, config=CFG, seed=1)
    pixels = torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        return model, pixels, model(pixels)


def official_state(model, dtype=torch.bfloat16) -> dict[str, torch.Tensor]:
    """The model's tensors under official names, plus a language-model tensor to be ignored."""
    state = {"model." + n: t.detach().to(dtype).contiguous() for n, t in model.state_dict().items()}
    state["model.layers.0.mlp.up_proj.weight"] = torch.zeros(4, 4, dtype=dtype)
    state["lm_head.weight"] = torch.zeros(4, 4, dtype=dtype)
    return state


def assert_same_output(model, reference, atol=0.0):
    ref_model, pixels, expected = reference
    with torch.inference_mode():
        torch.testing.assert_close(
            model(pixels.to(next(model.parameters()).dtype)).float(), expected, rtol=atol, atol=atol
        )


def test_our_format_round_trips_with_its_config(tmp_path, reference):
    path = save_deepencoder(reference[0], tmp_path / "enc.safetensors")
    loaded = load_deepencoder(str(path))  # no config passed: it comes from the file
    assert loaded.cfg == CFG and loaded.layout_vectors_loaded
    assert_same_output(loaded, reference)
    assert load_deepencoder(str(tmp_path)).cfg == CFG  # the directory works too


def test_official_layout_ignores_the_language_model_and_converts_dtype(tmp_path, reference):
    save_file(official_state(reference[0], torch.float32), str(tmp_path / "model-00001-of-000001.safetensors"))
    loaded = load_deepencoder(str(tmp_path), config=CFG)
    assert_same_output(loaded, reference)
    save_file(official_state(reference[0]), str(tmp_path / "model-00001-of-000001.safetensors"))
    as_bf16 = load_deepencoder(str(tmp_path / "model-00001-of-000001.safetensors"), dtype=torch.bfloat16, config=CFG)
    assert next(as_bf16.parameters()).dtype == torch.bfloat16
    assert torch.equal(as_bf16.projector.layers.weight, reference[0].projector.layers.weight.to(torch.bfloat16))


def test_official_file_against_the_full_size_architecture_reports_shapes(tmp_path, reference):
    save_file(official_state(reference[0]), str(tmp_path / "w.safetensors"))
    with pytest.raises(InputError, match="wrong shape.*sam_model"):
        load_deepencoder(str(tmp_path / "w.safetensors"))  # default config = official sizes


def test_community_layout_of_three_pickles(tmp_path, reference):
    state = reference[0].state_dict()
    for filename, prefix in [
        ("sam_encoder.pth", "sam_model."),
        ("clip_encoder.pth", "vision_model."),
        ("projector.pth", "projector."),
    ]:
        torch.save({n[len(prefix) :]: t for n, t in state.items() if n.startswith(prefix)}, tmp_path / filename)
    loaded = load_deepencoder(str(tmp_path), config=CFG)
    assert_same_output(loaded, reference)
    assert not loaded.layout_vectors_loaded
    with pytest.raises(ValueError, match="layout_tokens=false"):
        loaded.arrange(None, (1, 1), torch.zeros(64, 48), layout_tokens=True)
    (tmp_path / "projector.pth").unlink()
    with pytest.raises(ModelNotFoundError, match="projector.pth missing"):
        load_deepencoder(str(tmp_path), config=CFG)


def test_community_pickle_truncated(tmp_path, reference):
    for filename in ("sam_encoder.pth", "clip_encoder.pth", "projector.pth"):
        torch.save({"x": torch.zeros(2)}, tmp_path / filename)
    data = (tmp_path / "sam_encoder.pth").read_bytes()
    (tmp_path / "sam_encoder.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="sam_encoder.pth.*corrupt or truncated"):
        load_deepencoder(str(tmp_path), config=CFG)


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda s: s.pop("model.sam_model.net_3.weight"), r"1 missing: sam_model\.net_3\.weight"),
        (
            lambda s: s.__setitem__("model.sam_model.blocks.9.attn.qkv.weight", torch.zeros(2)),
            r"1 unexpected: sam_model\.blocks\.9",
        ),
        (
            lambda s: s.__setitem__("model.projector.layers.bias", torch.zeros(7)),
            r"wrong shape: projector\.layers\.bias \(7,\) \(expected \(48,\)\)",
        ),
        (lambda s: s.pop("model.view_seperator"), r"missing: view_seperator"),
    ],
)
def test_strict_loading_names_the_offending_tensor(tmp_path, reference, change, message):
    state = official_state(reference[0])
    change(state)
    save_file(state, str(tmp_path / "w.safetensors"))
    with pytest.raises(InputError, match=message):
        load_deepencoder(str(tmp_path / "w.safetensors"), config=CFG)


def test_truncated_and_garbage_safetensors(tmp_path, reference):
    path = save_deepencoder(reference[0], tmp_path / "enc.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(InputError, match="corrupt or truncated"):
        load_deepencoder(str(path))
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(InputError, match="corrupt or truncated"):
        load_deepencoder(str(path))


def test_missing_sources_fail_at_once(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not found"):
        load_deepencoder(str(tmp_path / "nope.safetensors"))
    with pytest.raises(ModelNotFoundError, match="no DeepEncoder weights"):
        load_deepencoder(str(tmp_path))  # an empty directory
    with pytest.raises(ModelNotFoundError, match="deepseek-ai/DeepSeek-OCR"):
        load_deepencoder("deepseek-ai/DeepSeek-OCR")  # offline in tests
