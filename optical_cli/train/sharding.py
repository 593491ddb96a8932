"""FSDP for the frozen language model: shard it across the processes of an accelerate launch.

``accelerate launch --config_file configs/accelerate/fsdp.yaml`` (``distributed_type: FSDP``)
asks for it; accelerate says so in the environment (``ACCELERATE_USE_FSDP``), on CPUs too,
where its own state reports plain multi-CPU. The language model is then split with torch's
FSDP2 (``fully_shard``): each decoder layer is one unit, the token embeddings one and the LM head
one (a head tied to the embeddings is split off into a second table first: tying cannot survive
sharding when the two are called separately), so every call this package makes into the model
(embeddings, decoder stack, head, generation) gathers exactly the unit it needs and frees it
after. Each process holds 1/N of the frozen weights (the final norm, one vector, stays whole)
plus one unit at a time.
The trained weights (adapter, LoRA) stay whole in every process (LoRA's are left out of the
shards) and their gradients are averaged by the training loop, so checkpoints save them as
before and ``--resume`` is unchanged. DeepEncoder is not sharded (0.4B parameters; it runs only
while the feature cache is built).
"""

from __future__ import annotations

import os

from torch import nn
from torch.distributed.fsdp import fully_shard


def fsdp_requested() -> bool:
    return os.environ.get("ACCELERATE_USE_FSDP", "false").strip().lower() == "true"


def shard_language_model(
    model: nn.Module, keep_whole: list[nn.Parameter] | None = None, reshard_after_forward: bool = True
) -> None:
    """Shard ``model`` (a Qwen3-VL language model, dense or MoE) in place across the process group."""
    ignored = set(keep_whole or []) or None
    stack = model.model.language_model
    for layer in stack.layers:
        fully_shard(layer, reshard_after_forward=reshard_after_forward, ignored_params=ignored)
    # the embeddings and the head are separate units (this package calls each on its own); a tied
    # head keeps the table it shared once the embeddings' copy is sharded, and is sharded in turn
    fully_shard(stack.embed_tokens, reshard_after_forward=reshard_after_forward, ignored_params=ignored)
    fully_shard(model.lm_head, reshard_after_forward=reshard_after_forward, ignored_params=ignored)


def local_parameter_count(model: nn.Module) -> int:
    """Parameters this process holds: a shard's local part for a sharded (DTensor) weight."""
    return sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in model.parameters())
