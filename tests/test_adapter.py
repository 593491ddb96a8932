"""The optical adapter: published shape, zero page embeddings, safetensors save/load with strict checks, every
older layout still read, nothing unpickled but through torch.load(weights_only=True)."""

import ast
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from optical_cli.cli import app
from optical_cli.errors import InputError, ModelNotFoundError
from optical_cli.models import loading
from optical_cli.models.adapter import (
    ADAPTER_FILE,
    AdapterConfig,
    OpticalAdapter,
    PublishedAdapter,
    adapter_location,
    load_adapter,
    parameter_count,
    save_adapter,
    save_published,
    sidecar_path,
)
from optical_cli.models.adapter import (
    published_state as published_weights,
)

REPO = Path(__file__).resolve().parent.parent
TINY_BENCH = REPO / "configs" / "tiny" / "longbench.yaml"


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


def test_save_load_round_trip_in_safetensors_with_the_config_in_the_file(tmp_path):
    adapter = small_adapter()
    with torch.no_grad():
        adapter.page_embed.weight.normal_()
    path = save_adapter(adapter, tmp_path / ADAPTER_FILE, {"objective": "reconstruction"})
    assert path.name == "adapter.safetensors"
    with safe_open(str(path), framework="pt") as handle:  # tensors only, and the dims in the file's metadata
        assert set(handle.keys()) == set(adapter.state_dict())
        assert json.loads(handle.metadata()["optical.adapter"])["dims"]["llm_dim"] == 64
    meta = json.loads(sidecar_path(path).read_text())
    assert meta["dims"] == {"vision_dim": 48, "hidden_dim": 96, "llm_dim": 64, "max_pages": 8}
    assert meta["training"] == {"objective": "reconstruction"} and sidecar_path(path).name == "adapter.json"
    for source in (path, tmp_path, str(tmp_path)):  # the file, or the folder that holds it
        loaded = load_adapter(source, llm_dim=64, vision_dim=48)
        for name, tensor in adapter.state_dict().items():
            assert torch.equal(tensor, loaded.state_dict()[name]), name
    sidecar_path(path).unlink()  # the file alone describes itself
    assert load_adapter(path).config == adapter.config


def test_the_older_pth_with_its_sidecar_still_loads(tmp_path):
    adapter = small_adapter(seed=3)
    path = save_adapter(adapter, tmp_path / "adapter.pth", {"objective": "mse"})  # what earlier versions wrote
    assert set(torch.load(path, weights_only=True)) == set(adapter.state_dict())  # a plain state dict
    for source in (path, tmp_path):
        loaded = load_adapter(source, llm_dim=64, vision_dim=48)
        assert all(torch.equal(t, loaded.state_dict()[n]) for n, t in adapter.state_dict().items())


def test_dims_not_matching_the_llm_is_a_clear_error(tmp_path):
    path = save_adapter(small_adapter(), tmp_path / ADAPTER_FILE)
    with pytest.raises(InputError, match="hidden size is 2048"):
        load_adapter(path, llm_dim=2048)
    with pytest.raises(InputError, match="1280-d vision tokens|expects 48"):
        load_adapter(path, vision_dim=1280)


def test_corrupt_or_missing_checkpoint_is_a_clear_error(tmp_path):
    path = save_adapter(small_adapter(), tmp_path / ADAPTER_FILE)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(InputError, match="corrupt"):
        load_adapter(path)
    legacy = save_adapter(small_adapter(), tmp_path / "legacy" / "adapter.pth")
    legacy.write_bytes(legacy.read_bytes()[:200])
    with pytest.raises(InputError, match="corrupt"):
        load_adapter(legacy)
    other = save_adapter(small_adapter(llm_dim=32), tmp_path / "other.pth")
    sidecar_path(other).write_text(sidecar_path(path).read_text())  # sidecar says 64, tensors are 32
    with pytest.raises(InputError, match="does not match"):
        load_adapter(other)
    with pytest.raises(ModelNotFoundError):
        load_adapter(tmp_path / "missing.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="holds no adapter.safetensors"):
        load_adapter(tmp_path / "empty")


class Payload:
    """Pickles into a call that creates ``marker`` when unpickled: what a malicious .pth would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_loading_never_unpickles_arbitrary_objects(tmp_path, monkeypatch):
    evil = tmp_path / "evil" / "adapter.pth"
    evil.parent.mkdir()
    ran = tmp_path / "payload-ran"
    torch.save({"mlp.0.weight": torch.zeros(1), "hook": Payload(ran)}, evil)
    torch.load(evil, weights_only=False).pop("hook").close()  # the payload is real: plain unpickling runs it
    assert ran.is_file()
    ran.unlink()
    with pytest.raises(InputError, match="corrupt or not a state dict") as refused:
        load_adapter(evil)
    assert refused.value.exit_code == 2 and not ran.exists()
    result = CliRunner().invoke(
        app,
        ["bench", "longbench", "-c", str(TINY_BENCH), "-o", str(tmp_path / "lb"), "--num-samples", "1"]
        + ["--conditions", "optical", "--set", f"bench.adapter={evil.parent}"],
    )
    assert result.exit_code == 2, result.output
    assert "pickles io.open besides tensors" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not ran.exists() and not (tmp_path / "lb").exists()

    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    load_adapter(save_adapter(small_adapter(), tmp_path / "safe" / ADAPTER_FILE))
    assert calls == []  # safetensors: nothing unpickled at all
    load_adapter(save_adapter(small_adapter(), tmp_path / "old" / "adapter.pth"))
    assert calls == [True]  # a .pth: torch.load(weights_only=True), and only that


def test_every_torch_load_in_the_package_is_weights_only():
    unsafe = []
    for path in sorted((REPO / "optical_cli").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                flag = {keyword.arg: keyword.value for keyword in node.keywords}.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    unsafe.append(where)
            if isinstance(node, ast.Call) and ast.unparse(node.func).startswith(("pickle.", "dill.", "cloudpickle.")):
                unsafe.append(f"{where} calls {ast.unparse(node.func)}")
    assert not unsafe, unsafe


def test_a_hub_repository_holding_an_export_loads_from_the_cache(tmp_path, monkeypatch):
    """``bench.adapter: owner/name``: the repository's files come through huggingface_hub (here its
    offline cache, laid out as a download leaves it), adapter and sidecar together."""
    import huggingface_hub.constants

    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--optical-adapter"
    snapshot = repo / "snapshots" / revision
    adapter = small_adapter(seed=5)
    save_adapter(adapter, snapshot / ADAPTER_FILE)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert adapter_location("someone/optical-adapter") == snapshot / ADAPTER_FILE
    loaded = load_adapter("someone/optical-adapter", llm_dim=64)
    assert all(torch.equal(t, loaded.state_dict()[n]) for n, t in adapter.state_dict().items())
    with pytest.raises(ModelNotFoundError, match="someone/not-there.*hf download"):
        load_adapter("someone/not-there")


# -- the published adapter (Volkopat/Qwen-VLM-Optical-Encoder): its layout and its forward --------


def published_state(vision_dim=48, hidden_dim=96, llm_dim=64, max_pages=8, seed=0):
    """A plain state dict under the published tensor names, random values (its checkpoint's layout)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "projection.0.weight": torch.randn(hidden_dim, vision_dim, generator=g) * 0.05,
        "projection.0.bias": torch.randn(hidden_dim, generator=g) * 0.05,
        "projection.3.weight": torch.randn(llm_dim, hidden_dim, generator=g) * 0.05,
        "projection.3.bias": torch.randn(llm_dim, generator=g) * 0.05,
        "layer_norm.weight": 1 + torch.randn(llm_dim, generator=g) * 0.1,
        "layer_norm.bias": torch.randn(llm_dim, generator=g) * 0.1,
        "page_embeddings.weight": torch.randn(max_pages, llm_dim, generator=g),
    }


def published_forward(state, tokens):
    """The published forward written independently from its description: tokens [1, P*256, D] in
    one sequence, page count P = length // 256 (1 when not a multiple), page embedding added
    before the LayerNorm only when P > 1, repeated over each page's 256 tokens."""
    import torch.nn.functional as F

    x = F.linear(tokens, state["projection.0.weight"], state["projection.0.bias"])
    x = F.linear(F.gelu(x), state["projection.3.weight"], state["projection.3.bias"])
    pages = tokens.shape[1] // 256 if tokens.shape[1] % 256 == 0 else 1
    if pages > 1:
        x = x + state["page_embeddings.weight"][torch.arange(pages).repeat_interleave(256)][None]
    return F.layer_norm(x, x.shape[-1:], state["layer_norm.weight"], state["layer_norm.bias"])


@pytest.mark.parametrize("pages", [1, 3])
def test_published_layout_loads_without_a_sidecar_and_reproduces_its_forward(tmp_path, pages):
    state = published_state()
    torch.save(state, tmp_path / "qwen3_vl_2b.pth")
    adapter = load_adapter(tmp_path / "qwen3_vl_2b.pth", llm_dim=64, vision_dim=48).eval()
    assert adapter.layout == "published" and adapter.config == AdapterConfig(48, 96, 64, 8)
    features = torch.randn(pages, 256, 48)  # base mode: 256 tokens per page
    ours = adapter(features)
    theirs = published_forward(state, features.reshape(1, pages * 256, 48)).reshape(pages, 256, 64)
    assert torch.allclose(ours, theirs, atol=1e-5)
    if pages == 1:  # one page gets no page position at all, so it differs from page 0 of a longer document
        assert not torch.allclose(ours, adapter(features.expand(2, -1, -1))[0], atol=1e-3)


def test_published_layout_is_loaded_strictly(tmp_path):
    extra = {**published_state(), "extra.weight": torch.zeros(1)}
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(InputError, match="sidecar not found.*published layout"):  # not the published layout
        load_adapter(tmp_path / "extra.pth")
    wrong = published_state()
    wrong["projection.3.weight"] = torch.zeros(64, 95)
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(InputError, match="published layout"):
        load_adapter(tmp_path / "wrong.pth")
    with pytest.raises(InputError, match="hidden size is 2048"):
        torch.save(published_state(), tmp_path / "ok.pth")
        load_adapter(tmp_path / "ok.pth", llm_dim=2048)


def test_hub_adapter_offline_fails_at_once_naming_the_file_and_hf_download(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")
    with pytest.raises(
        ModelNotFoundError, match=r"'qwen3_vl_2b.pth' of 'Volkopat/Qwen-VLM-Optical-Encoder'.*hf download"
    ):
        load_adapter("hf://Volkopat/Qwen-VLM-Optical-Encoder/qwen3_vl_2b.pth")
    with pytest.raises(Exception, match="hf://owner/name/path"):
        load_adapter("hf://Volkopat/only-a-repo")


def test_an_unreachable_hub_is_found_in_seconds_and_treated_as_offline(monkeypatch):
    import time

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")  # .invalid never resolves
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")
    loading._probe_hub.cache_clear()
    start = time.perf_counter()
    try:
        with pytest.raises(ModelNotFoundError, match="did not answer within 3 s"):
            loading.resolve_local_or_hub("someone/some-model")
    finally:  # this process's later tests start with the hub unprobed
        loading._probe_hub.cache_clear()
        loading._unreachable = None
    assert time.perf_counter() - start < loading.HUB_PROBE_SECONDS + 5


def test_published_layout_at_its_published_size():
    from optical_cli.models.adapter import PUBLISHED_KEYS, PublishedAdapter

    adapter = PublishedAdapter()  # 1280 -> 3072 -> 2048, LayerNorm, 200 page embeddings
    shapes = {name: tuple(t.shape) for name, t in adapter.state_dict().items()}
    assert set(shapes) == PUBLISHED_KEYS and parameter_count(adapter) == 10_642_432
    assert shapes["projection.0.weight"] == (3072, 1280) and shapes["projection.3.weight"] == (2048, 3072)
    assert shapes["page_embeddings.weight"] == (200, 2048)
    assert PublishedAdapter.config_of(adapter.state_dict()) == AdapterConfig()


# -- adapter.pth in the published layout (train-adapter and export-adapter write it) ------------------


class PublishedModule(torch.nn.Module):
    """The module the published project's loader builds and fills (``UniversalAdapter`` in its
    ``optical_encoder.py``, written here from its description): projection = Linear, GELU, Dropout,
    Linear; layer_norm; page_embeddings. Its loader is ``load_state_dict(torch.load(path))``: strict."""

    def __init__(self, vision_dim, hidden_dim, llm_dim, max_pages):
        super().__init__()
        self.projection = torch.nn.Sequential(
            torch.nn.Linear(vision_dim, hidden_dim),
            torch.nn.GELU(),
            torch.nn.Dropout(0.1),
            torch.nn.Linear(hidden_dim, llm_dim),
        )
        self.layer_norm = torch.nn.LayerNorm(llm_dim)
        self.page_embeddings = torch.nn.Embedding(max_pages, llm_dim)


def test_adapter_pth_is_written_in_the_published_layout_and_read_back(tmp_path):
    torch.manual_seed(5)
    adapter = PublishedAdapter(AdapterConfig(48, 96, 64, 8)).eval()
    torch.nn.init.normal_(adapter.page_embeddings.weight)  # trained page positions: they must survive
    path = save_published(adapter, tmp_path / "adapter.pth")
    state = torch.load(path, map_location="cpu", weights_only=True)
    theirs = PublishedModule(48, 96, 64, 8)
    theirs.load_state_dict(state, strict=True)  # what the published loader does
    features = torch.randn(3, 256, 48)
    expected = published_forward(state, features.reshape(1, 3 * 256, 48)).reshape(3, 256, 64)
    assert torch.allclose(adapter(features), expected, atol=1e-5)
    back = load_adapter(path, llm_dim=64, vision_dim=48).eval()  # bench reads it (no sidecar needed)
    assert back.layout == "published" and torch.equal(back(features), adapter(features))
    save_adapter(adapter, tmp_path / ADAPTER_FILE)  # the run's safetensors beside it: the same adapter
    assert torch.equal(load_adapter(tmp_path / ADAPTER_FILE).eval()(features), adapter(features))
    assert load_adapter(tmp_path / "adapter.pth").layout == "published"  # its sidecar (adapter.json) is no hindrance


def test_ours_goes_to_the_published_layout_only_while_that_layout_computes_the_same(tmp_path):
    adapter = small_adapter(seed=2).eval()  # fresh: page embeddings zero, both are LayerNorm(MLP(x))
    path = save_published(adapter, tmp_path / "adapter.pth")
    features = torch.randn(2, 64, 48)
    assert torch.allclose(load_adapter(path).eval()(features), adapter(features), atol=1e-6)
    with torch.no_grad():
        adapter.page_embed.weight[1] = 0.5  # trained: added after the LayerNorm, on one-page documents too
    assert published_weights(adapter) is None and save_published(adapter, tmp_path / "other.pth") is None
    assert not (tmp_path / "other.pth").exists()
