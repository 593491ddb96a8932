"""A memory plan before anything loads (``--dry-run`` on train-adapter and bench longbench).

Every model is built on the meta device (shapes, no memory, no weights read), so the plan takes
seconds even for a 235B model. What it reports:

- parameters of each part (DeepEncoder, adapter, language model, LoRA) and their bytes at the
  run's dtype;
- the KV cache: bytes per token (2 x layers x KV heads x head_dim x bytes) and at the run's
  longest context;
- training: the activations autograd keeps for the backward pass, counted by running each
  decoder layer once on meta tensors of the run's shape (batch x tokens per example) under
  ``saved_tensors_hooks`` and adding the bytes of every distinct tensor saved (parameters
  excluded; attention counted as the fused kernels on CPU and GPU keep it: queries, keys,
  values, output and log-sum-exp, not the probabilities); the label-position logits and their
  float32 cross-entropy;
  gradients and AdamW's two moments for the trained weights;
- the estimated peak per device for four layouts: one device, DDP over N (a full copy per
  device plus its gradient buckets), FSDP over N (the language model sharded as train-adapter
  shards it, one gathered unit at a time, twice for prefetch; DeepEncoder, adapter and LoRA whole
  in every process) and tensor parallel over N on vLLM (inference only: weights and KV
  heads split, DeepEncoder replicated);
- a verdict per layout against a device-memory budget.

The process's own resident set (Python, torch, transformers) at planning time is the CPU
overhead; on a GPU the figure is what CUDA allocates (the CUDA context is not counted, as the
runs' own ``peak_memory_gib`` does not count it). Cross-checked against measured peaks in the
README.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from typing import Any, Iterator

import torch
from torch import nn
from transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe import Qwen3VLMoeTextExperts

from .devices import resolve_device, resolve_dtype
from .errors import ConfigError, ModelNotFoundError
from .memory import GIB, resident_gib
from .models import loading
from .models.adapter import AdapterConfig, OpticalAdapter
from .models.deepencoder import DeepEncoder, DeepEncoderConfig
from .models.language_model import build_meta_qwen3_vl, language_model_class, qwen3_vl_model_type
from .models.lora import add_lora, lora_config
from .models.tokenizers import QWEN_TIKTOKEN, load_chat_tokenizer
from .models.vlm import READ_INSTRUCTION, build_layout
from .modes import MODES

GUNDAM_MAX_TOKENS = 6 * MODES["small"].tokens + MODES["base"].tokens  # up to 6 tiles of 640 and a 1024 global view


def _bytes_of(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def vision_tokens(mode: str) -> int:
    """Vision tokens per page (the largest a gundam page can have)."""
    return GUNDAM_MAX_TOKENS if mode == "gundam" else MODES[mode].tokens


# ---------------------------------------------------------------------------------------
# models on the meta device


def meta_language_model(vlm_section, dtype: torch.dtype) -> nn.Module:
    """The configured language model on the meta device: from ``vlm.random`` or from the
    config.json of a local directory / the hub cache (no weights are read)."""
    if vlm_section.source == loading.RANDOM_SOURCE:
        model = build_meta_qwen3_vl(vlm_section.random.dims())
    else:
        path = loading.resolve_local_or_hub(vlm_section.source, ["config.json"])
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} has no config.json; point vlm.source at a Qwen3-VL model")
        model_type = qwen3_vl_model_type(path)
        model_class = language_model_class(model_type)
        config = model_class.config_class.from_dict(json.loads((path / "config.json").read_text()))
        with torch.device("meta"):
            model = model_class(config)
    return model.to(dtype)


def meta_deepencoder(architecture: str) -> tuple[nn.Module, int]:
    config = DeepEncoderConfig.named(architecture)
    with torch.device("meta"):
        return DeepEncoder(config), config.out_dim


def meta_adapter(vision_dim: int, hidden_dim: int, llm_dim: int, max_pages: int) -> nn.Module:
    with torch.device("meta"):
        return OpticalAdapter(AdapterConfig(vision_dim, hidden_dim, llm_dim, max_pages))


def chat_overhead_tokens() -> int:
    """Tokens the read-this-page chat template adds around the vision tokens and the answer
    (system/user/assistant markers and the instruction), with the Qwen tokenizer shipped offline."""
    tokenizer = load_chat_tokenizer(QWEN_TIKTOKEN)
    return int(build_layout(tokenizer, READ_INSTRUCTION, [1], answer="").input_ids.shape[0]) - 1


# ---------------------------------------------------------------------------------------
# what autograd keeps, counted on meta tensors


@contextlib.contextmanager
def _meta_friendly_experts() -> Iterator[None]:
    """The MoE experts pick their tokens with data-dependent indexing, which meta tensors cannot
    run; while counting, each token goes through top_k expert-sized MLPs (the same tensor sizes
    the real routing creates, whichever experts it picks)."""

    def forward(self, hidden_states, top_k_index, top_k_weights):
        tokens, k = top_k_index.shape
        routed = hidden_states.repeat_interleave(k, dim=0)
        gate, up = nn.functional.linear(routed, self.gate_up_proj[0]).chunk(2, dim=-1)
        out = nn.functional.linear(self.act_fn(gate) * up, self.down_proj[0])
        out = out * top_k_weights.reshape(-1, 1)
        return out.view(tokens, k, -1).sum(dim=1)

    original = Qwen3VLMoeTextExperts.forward
    Qwen3VLMoeTextExperts.forward = forward
    try:
        yield
    finally:
        Qwen3VLMoeTextExperts.forward = original


class _FusedAttention(torch.autograd.Function):
    """What a fused attention kernel (flash / memory-efficient, CPU or GPU) keeps for backward:
    queries, keys, values, the output and one float32 log-sum-exp per query and head."""

    @staticmethod
    def forward(ctx, query, key, value):
        out = query.new_empty(*query.shape[:-1], value.shape[-1])
        lse = query.new_empty(query.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(query, key, value, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):  # never run: the plan only counts what the forward saves
        raise NotImplementedError


@contextlib.contextmanager
def _fused_attention() -> Iterator[None]:
    """On meta tensors SDPA falls back to the math path, which keeps the attention probabilities;
    the runs use fused kernels, which do not: count those instead."""

    def attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        return _FusedAttention.apply(query, key, value)

    original = nn.functional.scaled_dot_product_attention
    nn.functional.scaled_dot_product_attention = attention
    try:
        yield
    finally:
        nn.functional.scaled_dot_product_attention = original


class _SavedBytes:
    """Bytes of the distinct non-parameter tensors autograd saves (one storage counted once)."""

    def __init__(self, model: nn.Module):
        self.params = {p.untyped_storage()._cdata for p in model.parameters()}
        self.seen: dict[int, int] = {}
        self.keep: list[torch.Tensor] = []  # storages stay alive, so their ids are not reused

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata in self.params:
            return tensor
        self.seen[storage._cdata] = storage.nbytes()
        self.keep.append(tensor)
        return tensor

    @property
    def total(self) -> int:
        return sum(self.seen.values())


def training_activations(
    model: nn.Module, batch: int, tokens: int, label_tokens: int, gradient_checkpointing: bool
) -> dict:
    """Bytes autograd keeps for one micro-batch of ``batch`` examples of ``tokens`` tokens with
    loss on ``label_tokens`` positions each: per decoder layer (counted on meta tensors), and the
    LM head's share (label-position logits, their float32 cross-entropy)."""
    lm = model.model.language_model
    text = model.config.text_config
    dtype = next(model.parameters()).dtype
    for name, param in model.named_parameters():  # frozen but for LoRA, as in training
        param.requires_grad_(".lora_" in name)
    hidden = torch.empty(batch, tokens, text.hidden_size, device="meta", dtype=dtype, requires_grad=True)
    positions = torch.zeros(3, batch, tokens, dtype=torch.long, device="meta")
    per_layer = []
    with _meta_friendly_experts(), _fused_attention():
        position_embeddings = lm.rotary_emb(hidden, positions)
        for layer in lm.layers:
            counter = _SavedBytes(model)
            with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
                out = layer(
                    hidden, attention_mask=None, position_ids=positions, position_embeddings=position_embeddings
                )
            per_layer.append(counter.total)
            hidden = (out[0] if isinstance(out, tuple) else out).detach().requires_grad_(True)
        counter = _SavedBytes(model)
        with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
            normed = lm.norm(hidden)[:, :label_tokens]
            logits = model.lm_head(normed.reshape(-1, text.hidden_size))
            nn.functional.cross_entropy(logits.float(), torch.zeros(logits.shape[0], dtype=torch.long, device="meta"))
    layer_input = batch * tokens * text.hidden_size * _bytes_of(dtype)
    layers = (len(per_layer) * layer_input + max(per_layer)) if gradient_checkpointing else sum(per_layer)
    logits_bytes = batch * label_tokens * text.vocab_size * 4
    return {
        "layers_bytes": layers,
        "head_bytes": counter.total,
        "backward_transient_bytes": 2
        * logits_bytes,  # the logits' gradient and the softmax's, while the head runs backward
        "total_bytes": layers + counter.total + 2 * logits_bytes,
    }


# ---------------------------------------------------------------------------------------
# the plan


def kv_bytes_per_token(model: nn.Module) -> int:
    text = model.config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * _bytes_of(next(model.parameters()).dtype)


def _largest_unit_bytes(model: nn.Module) -> int:
    """The largest piece FSDP gathers at once: a decoder layer, the embeddings or the LM head."""
    lm = model.model.language_model
    units = [_count(layer) for layer in lm.layers] + [lm.embed_tokens.weight.numel(), model.lm_head.weight.numel()]
    return max(units) * _bytes_of(next(model.parameters()).dtype)


def _prefill_transient_bytes(model: nn.Module, tokens: int) -> int:
    """Working memory of one decoder layer's forward over ``tokens`` tokens without autograd:
    the layer's input and output, q/k/v and the MLP's gate, up and product (MoE: each token's
    top_k experts), the largest layer alive at a time."""
    text = model.config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    if getattr(text, "num_experts", 0):
        mlp = 3 * text.num_experts_per_tok * text.moe_intermediate_size
    else:
        mlp = 3 * text.intermediate_size
    width = 2 * text.hidden_size + (text.num_attention_heads + 2 * text.num_key_value_heads) * head_dim + mlp
    return tokens * width * _bytes_of(next(model.parameters()).dtype)


def _verdicts(peaks: dict[str, float | None], budget_gib: float | None) -> dict[str, str | None]:
    if budget_gib is None:
        return {name: None for name in peaks}
    return {
        name: None if peak is None else ("fits" if peak <= budget_gib else "does not fit")
        for name, peak in peaks.items()
    }


def _gib(value: float) -> float:
    return round(value / GIB, 3)


def _overhead_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return 0
    current = resident_gib()
    return int((current or 0.0) * GIB)


def _check_devices(devices: int) -> None:
    if devices < 1:
        raise ConfigError(f"--devices {devices}: must be at least 1")


def _plan(command: str, device, dtype, devices: int, model, parameters: dict, weights: dict, **fields) -> dict:
    """The fields every plan starts with; ``fields`` follow them in the order given."""
    return {
        "command": command,
        "device": device.type,
        "dtype": str(dtype).removeprefix("torch."),
        "devices": devices,
        "model_class": type(model).__name__,
        "parameters": parameters,
        "weight_bytes": weights,
        **fields,
    }


def _verdict_fields(peaks: dict, device_memory_gib: float | None, notes: list[str], started: float) -> dict:
    return {
        "peak_gib": peaks,
        "device_memory_gib": device_memory_gib,
        "verdict": _verdicts(peaks, device_memory_gib),
        "notes": notes,
        "seconds": round(time.perf_counter() - started, 2),
    }


def _train_models(cfg, dtype: torch.dtype) -> tuple[Any, dict]:
    """The meta language model (LoRA injected, so its activations count) and each part's parameter count."""
    model = meta_language_model(cfg.vlm, dtype)
    encoder, vision_dim = meta_deepencoder(cfg.deepencoder.architecture)
    adapter = meta_adapter(
        vision_dim, cfg.adapter.hidden_dim, model.config.text_config.hidden_size, cfg.adapter.max_pages
    )
    lora = 0
    if cfg.train.lora.rank:
        section = cfg.train.lora
        config = lora_config(section.rank, section.alpha, section.dropout, section.target_modules)
        lora = sum(p.numel() for p in add_lora(model, config))
    counts = {"deepencoder": _count(encoder), "adapter": _count(adapter), "language_model": _count(model) - lora}
    return model, {**counts, "lora": lora}


def _fsdp_bytes(model, weights: dict, size: int, devices: int) -> float:
    """Everything but the step's own memory, as train-adapter shards (train/sharding.py): the language model
    split N ways (a tied head becomes a second table), DeepEncoder, adapter and LoRA whole in every process,
    and the largest unit gathered twice while it runs."""
    text = model.config.text_config
    tied = model.lm_head.weight is model.get_input_embeddings().weight
    tied_copy = text.vocab_size * text.hidden_size * size if tied else 0
    gathered = 2 * _largest_unit_bytes(model) if devices > 1 else 0  # one process holds every shard already
    trained_bytes = weights["adapter"] + weights["lora"]
    return (weights["language_model"] + tied_copy) / devices + weights["deepencoder"] + gathered + trained_bytes


def plan_train(
    cfg, device: torch.device, dtype: torch.dtype, devices: int = 1, device_memory_gib: float | None = None
) -> dict:
    """The memory plan of ``optical train-adapter`` under ``cfg`` (a TrainAdapterConfig)."""
    started = time.perf_counter()
    _check_devices(devices)
    overhead, size = _overhead_bytes(device), _bytes_of(dtype)
    model, parameters = _train_models(cfg, dtype)
    trained = parameters["adapter"] + parameters["lora"]
    weights = {name: count * (4 if name in ("adapter", "lora") else size) for name, count in parameters.items()}
    weights["total"] = sum(weights.values())
    overhead_tokens, page_tokens = chat_overhead_tokens(), vision_tokens(cfg.deepencoder.mode)
    label_tokens = cfg.data.max_text_tokens + 1  # the page text and <|im_end|>
    tokens = overhead_tokens + page_tokens + label_tokens
    batch, checkpointing = cfg.train.batch_size, cfg.train.gradient_checkpointing
    activations = training_activations(model, batch, tokens, label_tokens, checkpointing)
    gradients, optimizer = 4 * trained, 8 * trained  # AdamW: two float32 moments per trained weight
    per_token, reading_context = (
        kv_bytes_per_token(model),
        overhead_tokens + page_tokens + cfg.train.read_max_new_tokens,
    )
    single = weights["total"] + activations["total_bytes"] + gradients + optimizer + overhead
    ddp = single + gradients  # the gradient buckets DDP all-reduces through
    fsdp = _fsdp_bytes(model, weights, size, devices) + gradients + optimizer + activations["total_bytes"] + overhead
    peaks = {"single": _gib(single), "ddp": _gib(ddp), "fsdp": _gib(fsdp), "tensor_parallel": None}
    kv_cache = {"bytes_per_token": per_token, "longest_context_tokens": reading_context}
    kv_cache |= {"bytes_at_longest": per_token * reading_context, "where": "the reading check (generation)"}
    training = {"batch_size": batch, "tokens_per_example": tokens, "label_tokens_per_example": label_tokens}
    training |= {"gradient_checkpointing": checkpointing, "activation_bytes": activations["layers_bytes"]}
    training |= {k: activations[k] for k in ("head_bytes", "backward_transient_bytes")}
    training |= {"gradient_bytes": gradients, "optimizer_bytes": optimizer}
    notes = [
        "tensor_parallel: inference only (vLLM); train-adapter runs one device, DDP or FSDP",
        "tokens per example are an upper bound: the chat template, a full page of vision tokens "
        "and data.max_text_tokens of target",
    ]
    return _plan(
        "train-adapter", device, dtype, devices, model, {**parameters, "trained": trained}, weights,
        kv_cache=kv_cache, training=training, overhead_bytes=overhead,
        **_verdict_fields(peaks, device_memory_gib, notes, started),
    )  # fmt: skip


def _bench_contexts(cfg, conditions, overhead_tokens: int, max_positions: int) -> dict[str, int]:
    """The longest prompt + answer each kind of condition builds, capped at the model's positions."""
    contexts = {}
    if any(c in conditions for c in ("native", "native-matched")):
        contexts["native"] = cfg.bench.max_context_tokens + overhead_tokens + cfg.bench.max_new_tokens
    if "optical" in conditions:
        pages = cfg.bench.max_pages * vision_tokens(cfg.deepencoder.mode)
        contexts["optical"] = pages + overhead_tokens + cfg.bench.max_new_tokens
    return {name: min(n, max_positions) for name, n in contexts.items()} or {"no-context": overhead_tokens}


def _bench_parameters(cfg, conditions, model) -> dict:
    parameters = {"deepencoder": 0, "adapter": 0, "language_model": _count(model), "lora": 0}
    if "optical" in conditions or "native-matched" in conditions:
        encoder, vision_dim = meta_deepencoder(cfg.deepencoder.architecture)
        parameters["deepencoder"] = _count(encoder)
        if "optical" in conditions:
            hidden = model.config.text_config.hidden_size
            parameters["adapter"] = _count(
                meta_adapter(vision_dim, AdapterConfig().hidden_dim, hidden, cfg.bench.max_pages)
            )
    return parameters


def plan_longbench(
    cfg, conditions, device: torch.device, dtype: torch.dtype, devices: int = 1, device_memory_gib: float | None = None
) -> dict:
    """The memory plan of ``optical bench longbench`` under ``cfg`` (a LongBenchConfig)."""
    started = time.perf_counter()
    _check_devices(devices)
    overhead, size = _overhead_bytes(device), _bytes_of(dtype)
    model = meta_language_model(cfg.vlm, dtype)
    text = model.config.text_config
    parameters = _bench_parameters(cfg, conditions, model)
    weights = {name: count * size for name, count in parameters.items()}
    weights["total"] = sum(weights.values())
    contexts = _bench_contexts(cfg, conditions, chat_overhead_tokens(), int(text.max_position_embeddings))
    longest = max(contexts.values())
    per_token = kv_bytes_per_token(model)
    kv, transient = per_token * longest, _prefill_transient_bytes(model, longest)
    logits = text.vocab_size * 4  # the last position's logits, float32
    single = weights["total"] + kv + transient + logits + overhead
    kv_split = math.ceil(text.num_key_value_heads / devices) / text.num_key_value_heads  # heads replicate beyond it
    sharded = weights["language_model"] / devices + kv * kv_split + transient / devices
    tensor_parallel = sharded + weights["deepencoder"] + weights["adapter"] + logits + overhead
    peaks = {"single": _gib(single), "ddp": _gib(single), "fsdp": None, "tensor_parallel": _gib(tensor_parallel)}
    kv_cache = {"bytes_per_token": per_token, "longest_context_tokens": longest, "bytes_at_longest": kv}
    notes = [
        "ddp: every process holds a full copy and reads its own items (the same peak as one device)",
        "fsdp: not used for inference here; tensor_parallel: the vLLM engine (DeepEncoder replicated)",
    ]
    return _plan(
        "bench longbench", device, dtype, devices, model, parameters, weights,
        kv_cache={**kv_cache, "contexts": contexts}, prefill_transient_bytes=transient, overhead_bytes=overhead,
        **_verdict_fields(peaks, device_memory_gib, notes, started),
    )  # fmt: skip


def plan_command(command: str, cfg, devices: int = 1, device_memory_gib: float | None = None) -> dict:
    """The memory plan of ``train-adapter`` or ``longbench`` (schema names) on the config's device and dtype."""
    device = resolve_device(cfg.runtime.device)
    dtype = resolve_dtype(cfg.runtime.dtype, device)
    if command == "train-adapter":
        return plan_train(cfg, device, dtype, devices, device_memory_gib)
    return plan_longbench(cfg, cfg.bench.conditions, device, dtype, devices, device_memory_gib)


def plan_rows(plan: dict) -> list[tuple[str, str]]:
    """The plan as (label, value) rows for a table."""

    def gib(value) -> str:
        return "-" if value is None else f"{value / GIB:,.2f} GiB"

    rows = [("device / dtype", f"{plan['device']} / {plan['dtype']} ({plan['model_class']})")]
    rows += [(f"parameters: {name}", f"{count:,}") for name, count in plan["parameters"].items()]
    rows += [(f"weights: {name}", gib(value)) for name, value in plan["weight_bytes"].items()]
    kv = plan["kv_cache"]
    rows += [
        ("KV cache per token", f"{kv['bytes_per_token']:,} B"),
        (f"KV cache at {kv['longest_context_tokens']:,} tokens", gib(kv["bytes_at_longest"])),
    ]
    if "training" in plan:
        t = plan["training"]
        rows += [
            (
                "batch x tokens per example",
                f"{t['batch_size']} x {t['tokens_per_example']:,}"
                + (" (gradient checkpointing)" if t["gradient_checkpointing"] else ""),
            ),
            ("activations kept for backward", gib(t["activation_bytes"])),
            ("LM head, loss, backward transients", gib(t["head_bytes"] + t["backward_transient_bytes"])),
            ("gradients + AdamW states", gib(t["gradient_bytes"] + t["optimizer_bytes"])),
        ]
    else:
        rows.append(("prefill working memory", gib(plan["prefill_transient_bytes"])))
    rows.append(("process overhead", gib(plan["overhead_bytes"])))
    for layout, peak in plan["peak_gib"].items():
        label = layout if layout == "single" else f"{layout} over {plan['devices']}"
        verdict = plan["verdict"][layout]
        rows.append(
            (
                f"peak per device: {label}",
                "n/a" if peak is None else f"{peak:,.2f} GiB" + (f"  {verdict}" if verdict else ""),
            )
        )
    return rows
