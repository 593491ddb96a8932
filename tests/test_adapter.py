"""The optical adapter: published shape, zero page embeddings, save/load with strict checks."""

import json

import pytest
import torch

from optical_cli.errors import InputError, ModelNotFoundError
from optical_cli.models import loading
from optical_cli.models.adapter import AdapterConfig, OpticalAdapter, parameter_count, save_adapter, sidecar_path


def small_adapter(seed=0, llm_dim=64):
    torch.manual_seed(seed)
    return OpticalAdapter(AdapterConfig(vision_dim=48, hidden_dim=96, llm_dim=llm_dim, max_pages=8))


def test_published_shape_has_10_6m_parameters():
    adapter = OpticalAdapter()  # 1280 -> 3072 -> 2048, LayerNorm, 200 page embeddings
    assert parameter_count(adapter) == 10_642_432
    assert adapter.mlp[0].weight.shape == (3072, 1280) and adapter.mlp[2].weight.shape == (2048, 3072)
    assert adapter.page_embed.weight.shape == (200, 2048)
    assert torch.count_nonzero(adapter.page_embed.weight) == 0


def test_any_llm_hidden_size_and_page_embeddings_start_neutral():
    adapter = OpticalAdapter(AdapterConfig(llm_dim=2560, hidden_dim=64, max_pages=4))  # Qwen3-VL-4B width
    features = torch.randn(3, 5, 1280)
    out = adapter(features)
    assert out.shape == (3, 5, 2560)
    # zero page embeddings: the same page content gives the same tokens on every page
    same = adapter(features[:1].expand(3, -1, -1))
    assert torch.allclose(same[0], same[2])


def test_forward_rejects_wrong_width_and_too_many_pages():
    adapter = small_adapter()
    with pytest.raises(InputError, match="48"):
        adapter(torch.randn(1, 4, 32))
    with pytest.raises(InputError, match="page embeddings"):
        adapter(torch.randn(9, 4, 48))


def test_save_load_round_trip_weights_only(tmp_path):
    adapter = small_adapter()
    with torch.no_grad():
        adapter.page_embed.weight.normal_()
    path = save_adapter(adapter, tmp_path / "adapter.pth", {"objective": "reconstruction"})
    state = torch.load(path, weights_only=True)  # a plain state dict
    assert set(state) == set(adapter.state_dict())
    meta = json.loads(sidecar_path(path).read_text())
    assert meta["dims"] == {"vision_dim": 48, "hidden_dim": 96, "llm_dim": 64, "max_pages": 8}
    assert meta["training"] == {"objective": "reconstruction"}
    loaded = loading.load_adapter(path, llm_dim=64, vision_dim=48)
    for name, tensor in adapter.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name


def test_dims_not_matching_the_llm_is_a_clear_error(tmp_path):
    path = save_adapter(small_adapter(), tmp_path / "adapter.pth")
    with pytest.raises(InputError, match="hidden size is 2048"):
        loading.load_adapter(path, llm_dim=2048)
    with pytest.raises(InputError, match="1280-d vision tokens|expects 48"):
        loading.load_adapter(path, vision_dim=1280)


def test_corrupt_or_missing_checkpoint_is_a_clear_error(tmp_path):
    path = save_adapter(small_adapter(), tmp_path / "adapter.pth")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(InputError, match="corrupt"):
        loading.load_adapter(path)
    other = save_adapter(small_adapter(llm_dim=32), tmp_path / "other.pth")
    sidecar_path(other).write_text(sidecar_path(path).read_text())  # sidecar says 64, tensors are 32
    with pytest.raises(InputError, match="does not match"):
        loading.load_adapter(other)
    with pytest.raises(ModelNotFoundError):
        loading.load_adapter(tmp_path / "missing.pth")
