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

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLConfig
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLPreTrainedModel, Qwen3VLTextModel
from transformers.models.qwen3_vl_moe.configuration_qwen3_vl_moe import Qwen3VLMoeConfig
from transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe import Qwen3VLMoePreTrainedModel, Qwen3VLMoeTextModel


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
    from transformers import conversion_mapping

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
