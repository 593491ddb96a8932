"""Adapter training: DeepEncoder and Qwen3-VL frozen, the optical adapter learns to make pages readable.

Pipeline:
  1. documents (.txt / .jsonl / a directory / hf:owner/name) -> rendered pages
     -> DeepEncoder features [pages, tokens, 1280], computed once and cached on disk
     (safetensors, keyed by the corpus and every setting that changes the features);
  2. epochs over the cached features: adapter -> spliced into the chat prompt -> frozen LLM;
     objective ``reconstruction`` (next-token loss on the page's own text, read from its
     optical tokens) or ``mse`` (the published one: mean-pooled adapted tokens vs the
     mean-pooled text embeddings of the page);
  3. checkpoints (adapter, optimizer, scheduler, RNG, data position) every N steps;
     ``resume`` continues bit-for-bit where a checkpoint left off;
  4. a reading check on held-out pages: greedy decoding from the optical tokens,
     character error rate beside the compression ratio (text tokens per vision token).

Multi-GPU through accelerate (``accelerate launch -m optical_cli.cli train-adapter ...``);
each process takes every world_size-th batch of the same shuffled order.

Modules, in dependency order: ``corpus`` (documents), ``pages`` (rendering, the encoder, the
feature cache), ``objectives`` (examples, batches, losses), ``checkpoints`` (schedule, resume),
``reading`` (the reading check), ``sharding`` (FSDP), ``setup`` (runtime, reader, adapter, LoRA,
optimizer, start or resume), ``data`` (the feature cache step), ``outputs`` (adapter, plot, reading
records), ``loop`` (the steps and ``train_adapter``), ``run`` (the command's prepared run). Callers
import from the module that defines a name; ``config`` holds the command's schema.
"""
