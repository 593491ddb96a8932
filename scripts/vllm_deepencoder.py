#!/usr/bin/env python3
"""vLLM's own DeepEncoder (vllm/model_executor/models/deepencoder.py, the encoder vLLM's
DeepseekOCRForCausalLM runs) as a worker that `scripts/bench_encoder.py --vllm-python PY` drives:
run it with an interpreter that has vLLM, never import it from the package.

    PY scripts/vllm_deepencoder.py WEIGHTS.safetensors PIXELS.pt DTYPE DEVICE OUT.pt

It builds vLLM's SAM ViT-B and CLIP-L trunks and the linear projector exactly as
DeepseekOCRForCausalLM composes them, inside vLLM's single-process tensor-parallel state (1 rank),
loads the given tensors (the official checkpoint's names without ``model.``), prints
``ready {...}`` and then answers each line on stdin: ``forward`` runs one forward on the pixels
and prints ``{"seconds": ...}`` (the output saved to OUT.pt), ``quit`` ends.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import torch
from safetensors.torch import load_file
from transformers import CLIPVisionConfig
from vllm.config import VllmConfig, set_current_vllm_config
from vllm.distributed import init_distributed_environment, initialize_model_parallel
from vllm.model_executor.models.deepencoder import DeepCLIPVisionTransformer, build_sam_vit_b


def single_rank() -> None:
    """vLLM's parallel layers ask for the tensor-parallel group: one process, one rank."""
    store = tempfile.NamedTemporaryFile(prefix="vllm-deepencoder-", delete=False).name
    init_distributed_environment(
        world_size=1, rank=0, local_rank=0, distributed_init_method=f"file://{store}", backend="gloo"
    )
    initialize_model_parallel(1, 1)


class VllmDeepEncoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.sam_model = build_sam_vit_b()
        clip = CLIPVisionConfig(
            hidden_size=1024,
            intermediate_size=4096,
            num_attention_heads=16,
            num_hidden_layers=24,
            image_size=224,
            patch_size=14,
            projection_dim=512,
            layer_norm_eps=1e-5,
        )
        self.vision_model = DeepCLIPVisionTransformer(config=clip, prefix="vision_model")
        self.projector = torch.nn.Linear(2048, 1280)  # DeepSeek-OCR's projector_type "linear"

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        sam = self.sam_model(pixels)
        clip = self.vision_model(pixels, sam)
        return self.projector(torch.cat((clip[:, 1:], sam.flatten(2).permute(0, 2, 1)), dim=-1))


def main() -> int:
    weights, pixels_path, dtype_name, device_name, out_path = sys.argv[1:6]
    device, dtype = torch.device(device_name), getattr(torch, dtype_name)
    config = VllmConfig()
    with set_current_vllm_config(config):
        single_rank()
        model = VllmDeepEncoder()
    state = {name: tensor for name, tensor in load_file(weights).items() if name.split(".")[0] != "view_seperator"}
    state = {name: tensor for name, tensor in state.items() if name != "image_newline"}
    state["projector.weight"] = state.pop("projector.layers.weight")
    state["projector.bias"] = state.pop("projector.layers.bias")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [name for name in missing if not name.endswith("position_ids")]
    if missing or unexpected:
        print(f"error: vLLM's DeepEncoder names differ: missing {missing[:5]}, unexpected {unexpected[:5]}", flush=True)
        return 2
    model = model.to(device=device, dtype=dtype).eval()
    with set_current_vllm_config(config):
        for module in model.modules():  # what vLLM's loader does after loading (CPU: its packed linear layers)
            method = getattr(module, "quant_method", None)
            if method is not None and hasattr(method, "process_weights_after_loading"):
                method.process_weights_after_loading(module)
    pixels = torch.load(pixels_path, weights_only=True).to(device=device, dtype=dtype)
    print("ready " + json.dumps({"threads": torch.get_num_threads(), "vllm_pid": os.getpid()}), flush=True)
    for line in sys.stdin:
        if line.strip() != "forward":
            break
        with torch.inference_mode(), set_current_vllm_config(config):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            out = model(pixels)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
        torch.save(out.float().cpu(), out_path)
        print(json.dumps({"seconds": seconds}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
