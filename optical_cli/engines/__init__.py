"""Engines behind the one inference seam (:class:`~optical_cli.engines.reader.Reader`).

- ``hf`` (:mod:`.hf`): transformers and our own generate loop;
- ``vllm`` (:mod:`.vllm`): vLLM's offline engine on the optical model directory (:mod:`.model_dir`),
  pages encoded inside the engine by the model plugin (:mod:`.vllm_model`, registered by
  :mod:`.vllm_plugin`), which is also what ``optical serve`` puts behind vLLM's OpenAI server;
  in vLLM, the loop guard (:mod:`.vllm_guard`) and the optical counters (:mod:`.vllm_metrics`).

:func:`optical_cli.engines.factory.build_reader` chooses one, in one place. Prompts, truncation,
positions and scoring live once, above the seam (``prompts.py``, ``models/vlm.py``); the
chain's shared settings and pieces are in :mod:`.chain`, the vision tower in :mod:`.tower`.
This module imports nothing: vLLM's plugin loader reads its constants.
"""

# The architecture an optical model directory's config.json names (dense Qwen3-VL language models)
ARCHITECTURE = "OpticalQwen3VLForConditionalGeneration"
