"""Qwen3-VL's language model alone (dense or mixture of experts): the decoder and the LM head,
without the vision tower.

Our chain never runs Qwen3-VL's own vision tower (DeepEncoder and the adapter replace it), so
holding it would cost memory for nothing (about 0.4B parameters at 2B). This class keeps the
checkpoint's key layout (``model.language_model.*`` and ``lm_head.weight``, tied to the token
embeddings when the config says so), so a real Qwen3-VL checkpoint loads into it with
``from_pretrained`` and its ``model.visual.*`` tensors are skipped. Its forward gives the same
logits as ``Qwen3VLForConditionalGeneration`` for inputs given as embeddings with explicit
position ids [4, B, L], which is how :mod:`optical_cli.models.vlm` and training call it.

The mixture-of-experts models (Qwen3-VL-30B-A3B, 235B-A22B) get the same treatment in
:class:`Qwen3VLMoeLanguageModel`: transformers' ``Qwen3VLMoeTextModel`` under the same names,
so the checkpoint's ``model.language_model.layers.N.mlp.gate.weight`` (router) and
``model.language_model.layers.N.mlp.experts.gate_up_proj`` / ``down_proj`` (all experts of a
layer in one tensor, stored [experts, hidden, 2 x moe_intermediate] and [experts,
moe_intermediate, hidden] in the checkpoint) load through transformers' own conversion for
``qwen3_vl_moe``, which transposes them to the module's layout. :func:`language_model_class`
picks the class from a config's ``model_type``.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch
from torch import nn
from transformers import conversion_mapping
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLConfig
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLPreTrainedModel, Qwen3VLTextModel
from transformers.models.qwen3_vl_moe.configuration_qwen3_vl_moe import Qwen3VLMoeConfig
from transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe import Qwen3VLMoePreTrainedModel, Qwen3VLMoeTextModel

from ..errors import ConfigError, ModelNotFoundError
from .loading import RANDOM_SOURCE, resolve_local_or_hub


def cache_argument(forward) -> str:
    """The forward argument (and output field) that carries the KV cache: ``cache`` from
    transformers 5.24 on, ``past_key_values`` before (5.24 still takes the old name, with a
    deprecation warning)."""
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


CACHE_NAME = cache_argument(Qwen3VLTextModel.forward)


class LanguageStack(nn.Module):
    """Holds the decoder under the checkpoint's name ``language_model`` (Qwen3VLModel without ``visual``)."""

    def __init__(self, config, text_model_class=Qwen3VLTextModel):
        super().__init__()
        self.language_model = text_model_class._from_config(config.text_config)

    def forward(self, **kwargs):
        return self.language_model(**kwargs)


class _TextOnly:
    """What the dense and the MoE language models share: embeddings access and the forward."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    _keys_to_ignore_on_load_unexpected = [r"^model\.visual\."]
    accepts_loss_kwargs = False

    def _build(self, config, text_model_class) -> None:
        self.model = LanguageStack(config, text_model_class)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.language_model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.language_model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache=None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """``inputs_embeds`` [B, L, H]; ``position_ids`` [4, B, L] (text, then t/h/w rows); ``cache``
        a KV cache, passed on under the name this transformers version uses."""
        out = self.model(
            inputs_embeds=inputs_embeds,
            position_ids=position_ids,
            attention_mask=attention_mask,
            use_cache=use_cache,
            **{CACHE_NAME: cache},
            **kwargs,
        )
        hidden = out.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        return CausalLMOutputWithPast(logits=self.lm_head(hidden), **{CACHE_NAME: getattr(out, CACHE_NAME)})


class Qwen3VLLanguageModel(_TextOnly, Qwen3VLPreTrainedModel):
    """Qwen3-VL minus its vision tower; same parameter names as ``Qwen3VLForConditionalGeneration``."""

    def __init__(self, config: Qwen3VLConfig):
        super().__init__(config)
        self._build(config, Qwen3VLTextModel)


class Qwen3VLMoeLanguageModel(_TextOnly, Qwen3VLMoePreTrainedModel):
    """Qwen3-VL-MoE minus its vision tower; same parameter names as ``Qwen3VLMoeForConditionalGeneration``
    (router ``mlp.gate.weight``, experts ``mlp.experts.gate_up_proj`` / ``mlp.experts.down_proj``)."""

    def __init__(self, config: Qwen3VLMoeConfig):
        super().__init__(config)
        self._build(config, Qwen3VLMoeTextModel)


def _register_expert_layout() -> None:
    """transformers applies a model type's checkpoint conversions (here: the expert tensors'
    transpose) only to its own classes; a class defined outside it gets them once registered by name."""
    name = Qwen3VLMoeLanguageModel.__name__
    registered = getattr(conversion_mapping, "USER_REGISTERED_MAPPINGS", None)
    if (
        registered is None
    ):  # before transformers skipped classes outside it, the model type's conversions applied already
        return
    if name not in registered:
        mapping = conversion_mapping.get_checkpoint_conversion_mapping(Qwen3VLMoeConfig.model_type)
        if mapping:
            conversion_mapping.register_checkpoint_conversion_mapping(name, mapping, overwrite=True)


_register_expert_layout()


def language_model_class(model_type: str):
    """The class for a checkpoint's ``model_type`` (``qwen3_vl`` or ``qwen3_vl_moe``); None for any other."""
    return {"qwen3_vl": Qwen3VLLanguageModel, "qwen3_vl_moe": Qwen3VLMoeLanguageModel}.get(model_type)


# ---------------------------------------------------------------------------------------
# Building and loading it: random (tests, timing), on the meta device (memory plans), or a checkpoint

MOE_KEYS = ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "decoder_sparse_step", "mlp_only_layers")


def qwen3_vl_config(dims: dict):
    """A Qwen3VLConfig (or a Qwen3VLMoeConfig when ``num_experts`` > 0) with the given text dims
    (keys of Qwen3VLTextConfig plus ``mrope_section``, ``rope_theta``, ``tie_word_embeddings``
    and the MoE keys). The vision config keeps its defaults: it is never built (see
    :mod:`optical_cli.models.language_model`). ``mrope_section`` must sum to head_dim/2, the
    model's own requirement."""

    dims = dict(dims)
    mrope = list(dims.pop("mrope_section"))
    rope_theta = float(dims.pop("rope_theta", 5_000_000.0))
    tie = bool(dims.pop("tie_word_embeddings", True))
    moe = {key: dims.pop(key) for key in MOE_KEYS if key in dims}
    head_dim = dims.get("head_dim", 128)
    if sum(mrope) * 2 != head_dim:
        raise ConfigError(f"random Qwen3-VL: mrope_section {mrope} must sum to head_dim/2 = {head_dim // 2}")
    text = dict(
        dims,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": rope_theta,
            "mrope_section": mrope,
            "mrope_interleaved": True,
        },
    )
    if moe.get("num_experts", 0) > 0:
        if moe.get("num_experts_per_tok", 1) > moe["num_experts"]:
            raise ConfigError(
                f"random Qwen3-VL-MoE: num_experts_per_tok {moe['num_experts_per_tok']} exceeds "
                f"num_experts {moe['num_experts']}"
            )
        return Qwen3VLMoeConfig(text_config=dict(text, **moe), tie_word_embeddings=tie)
    return Qwen3VLConfig(text_config=text, tie_word_embeddings=tie)


def build_random_qwen3_vl(dims: dict, seed: int = 0):
    """Qwen3-VL's language model (no vision tower; dense, or MoE when ``num_experts`` > 0) with
    random weights and the given text dims."""

    config = qwen3_vl_config(dims)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return language_model_class(config.model_type)(config)


def build_meta_qwen3_vl(dims: dict):
    """The same model on the meta device: shapes and parameter counts, no memory, no weights."""

    config = qwen3_vl_config(dims)
    with torch.device("meta"):
        return language_model_class(config.model_type)(config)


def qwen3_vl_model_type(path: Path) -> str:
    """``model_type`` of a local model directory's config.json (``qwen3_vl`` or ``qwen3_vl_moe``)."""
    try:
        model_type = json.loads((path / "config.json").read_text()).get("model_type", "")
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"could not read {path / 'config.json'}: {exc}") from None

    if language_model_class(model_type) is None:
        raise ModelNotFoundError(
            f"{path}/config.json has model_type {model_type!r}; vlm.source needs a Qwen3-VL "
            "model (qwen3_vl or qwen3_vl_moe)"
        )
    return model_type


def load_qwen3_vl(
    source: str, device: torch.device, dtype: torch.dtype, random_dims: dict | None = None, seed: int = 0
):
    """Qwen3-VL's language model (``Qwen3VLLanguageModel`` or, for a mixture-of-experts checkpoint,
    ``Qwen3VLMoeLanguageModel``: the decoder and LM head, not the vision tower, which this package
    never runs) from a hub id or local directory, or random from ``random_dims``.

    Returned in eval mode with every parameter frozen (LoRA, when configured, is added on top by training).
    """

    if source == RANDOM_SOURCE:
        if not random_dims:
            raise ConfigError("vlm.source=random needs a vlm.random section with the text dims")
        model = build_random_qwen3_vl(random_dims, seed)
    else:
        path = resolve_local_or_hub(source, ["*.json", "*.safetensors", "*.txt", "*.tiktoken", "*.model"])
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"{path} has no config.json; point vlm.source at a Qwen3-VL model directory or hub id"
            )
        model_class = language_model_class(qwen3_vl_model_type(path))
        try:
            model = model_class.from_pretrained(path, dtype=dtype)
        except (OSError, ValueError) as exc:
            raise ModelNotFoundError(f"could not load Qwen3-VL from {path}: {exc}") from None
    model.to(device=device, dtype=dtype).eval()
    model.requires_grad_(False)
    return model
