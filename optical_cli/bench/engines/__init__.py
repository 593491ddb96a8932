"""Engines behind the benchmark's one inference seam (:class:`~optical_cli.bench.reader.Reader`).

- ``hf``: :class:`~optical_cli.bench.models.QwenOpticalReader`, our generate loop on transformers;
- ``vllm``: :class:`~optical_cli.bench.engines.vllm.VLLMReader`, the same prompts and positions
  served by vLLM.

Prompts, truncation, page rendering, DeepEncoder, the adapter and scoring live once, above the
seam; an engine only turns token ids (and adapted page embeddings) into answer tokens.
"""

ENGINES = ("hf", "vllm")
