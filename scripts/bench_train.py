#!/usr/bin/env python3
"""Adapter-training cost: step time and peak memory per batch size, per way of computing the loss.

Measured in one run on real CVE text packed into full pages (the train-adapter defaults):
  caching      cold - render + DeepEncoder writing the feature cache; warm - read back (later epochs);
  training     per batch size, one optimizer step of the adapter through the frozen LLM:
    full-logits      the baseline: transformers' own causal-LM loss over logits of every position
                     and all 151,936 vocabulary entries;
    label-positions  what train-adapter runs: logits only where a label exists;
    checkpointing    label-positions with train.gradient_checkpointing (the LLM's layers recomputed
                     in backward instead of kept).
Step time is the median over --steps timed steps after one warm-up step; peak memory is CUDA max
allocated on a GPU, else the resident set, with what the step added on top of the models held.
Ratios are against full-logits at the same batch size. `--size fullsize` uses
configs/fullsize/train-adapter.yaml (random weights at the published sizes: real time and memory),
`--size tiny` configs/tiny/train-adapter.yaml (seconds).

    python scripts/bench_train.py --size tiny
    python scripts/bench_train.py --size fullsize --batch-sizes 1,2,4 --steps 1 --device cpu --max-text-tokens 256
    python scripts/bench_train.py --size fullsize --batch-sizes 1,2,4 --steps 3 --device cuda \
        --output results/bench/gpu/train.csv
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch
from transformers.loss.loss_utils import ForCausalLMLoss

from optical_cli.artifacts import atomic_write_csv
from optical_cli.config.registry import load_config
from optical_cli.devices import synchronize
from optical_cli.memory import PeakMemory, headline_gib, in_use_gib
from optical_cli.models.deepencoder.runner import DeepEncoderPages
from optical_cli.models.vlm import splice
from optical_cli.train.corpus import training_corpus
from optical_cli.train.objectives import batch_loss, collate, make_examples, page_statistics
from optical_cli.train.pages import build_page_set
from optical_cli.train.setup import (
    enable_gradient_checkpointing,
    load_reader,
    make_adapter,
    training_mode,
    training_runtime,
)

CONFIGS = {
    "fullsize": REPO / "configs" / "fullsize" / "train-adapter.yaml",
    "tiny": REPO / "configs" / "tiny" / "train-adapter.yaml",
}
VARIANTS = ("full-logits", "label-positions", "checkpointing")
FIELDS = [
    "device",
    "size",
    "stage",
    "variant",
    "batch",
    "tokens_per_example",
    "text_tokens_per_page",
    "steps",
    "seconds",
    "pages_per_s",
    "peak_memory_gib",
    "memory_added_gib",
    "ratio_vs_full_logits",
]
DOCUMENTS_PER_PAGE = 48  # CVE descriptions on a full base page (packed, reflowed): enough text for the largest batch


def full_logits_loss(model, adapter, pages, examples, index, pad_id, device, autocast) -> torch.Tensor:
    """The baseline: logits of every position over the whole vocabulary, transformers' causal-LM loss."""
    features = pages.features[index].to(device)
    page_index = torch.tensor([pages.page_index[i] for i in index], device=device)
    batch = {k: v.to(device) for k, v in collate([examples[i] for i in index], pad_id).items()}
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        inputs = splice(
            model.get_input_embeddings(), batch["input_ids"], batch["vision_mask"], adapter(features, page_index)
        )
        logits = model(
            inputs_embeds=inputs, attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]
        ).logits
        return ForCausalLMLoss(logits.float(), batch["labels"], vocab_size=logits.shape[-1])


def time_steps(loss_fn, adapter, batch: list[int], steps: int, device, memory: PeakMemory) -> tuple[float, dict, float]:
    """(median seconds per optimizer step, peak memory, GiB added on top of what was held)."""
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=1e-4)

    def step() -> float:
        start = time.perf_counter()
        loss_fn(batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        return time.perf_counter() - start

    step()  # warm-up: allocator, kernels, optimizer state
    held = in_use_gib(device)
    with memory.stage() as peaks:
        seconds = [step() for _ in range(steps)]
    return statistics.median(seconds), peaks, max(0.0, headline_gib(peaks) - held)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(CONFIGS), default="tiny")
    parser.add_argument("--batch-sizes", default="1,2,4", help="pages per step, comma-separated")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per (batch, variant) after a warm-up step")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="a train-adapter config instead of --size's (another member of the family: --size fullsize "
        "--set vlm.random.model=qwen3-vl-4b)",
    )
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, as the CLI's --set (repeatable), e.g. runtime.dtype=bfloat16",
    )
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated: {', '.join(VARIANTS)}")
    parser.add_argument(
        "--max-text-tokens", type=int, default=None, help="reconstruction target per page (default: the config's)"
    )
    parser.add_argument("--output", type=Path, default=REPO / "results" / "bench" / "train.csv")
    args = parser.parse_args()
    batches = [int(b) for b in args.batch_sizes.split(",")]
    variants = [v for v in args.variants.split(",") if v]
    if unknown := set(variants) - set(VARIANTS):
        parser.error(f"unknown variant(s) {', '.join(sorted(unknown))}; choose from {', '.join(VARIANTS)}")

    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    try:
        overrides = [
            f"runtime.device={args.device}",
            f"data.cache_dir={work / 'cache'}",
            "data.eval_fraction=0",
            f"data.source={REPO / 'data' / 'cve' / 'cves.jsonl'}",
            f"data.encode_batch_size={max(batches)}",
        ]
        if args.max_text_tokens:
            overrides.append(f"data.max_text_tokens={args.max_text_tokens}")
        overrides += args.sets
        config_path = args.config or CONFIGS[args.size]
        per_page = DOCUMENTS_PER_PAGE if load_config("train-adapter", config_path, overrides).data.pack else 1
        overrides.append(
            f"data.max_documents={per_page * (max(batches) + 1)}"
        )  # pages for the largest batch, and one more
        cfg = load_config("train-adapter", config_path, overrides)
        runtime = training_runtime(cfg.runtime)
        device, autocast = runtime.device, runtime.autocast
        reader = load_reader(cfg, runtime)
        encoder = DeepEncoderPages(cfg.deepencoder, cfg.runtime, device, cfg.data.encode_batch_size)
        encoder.load()
        memory = PeakMemory(device)
        device_name = (
            torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
        )
        rows = []

        documents = training_corpus(cfg)
        start = time.perf_counter()
        pages, _ = build_page_set(documents, cfg, encoder, work / "cache")
        cold = time.perf_counter() - start
        start = time.perf_counter()
        again, hit = build_page_set(documents, cfg, encoder, work / "cache")
        warm = time.perf_counter() - start
        assert hit and torch.equal(again.features, pages.features)
        if len(pages) < max(batches):
            sys.exit(f"only {len(pages)} pages for a batch of {max(batches)}; lower --batch-sizes")
        for name, seconds in (("cold (render + encode)", cold), ("warm (feature cache)", warm)):
            rows.append(
                {
                    "stage": "caching",
                    "variant": name,
                    "batch": "",
                    "steps": "",
                    "seconds": f"{seconds:.4g}",
                    "pages_per_s": f"{len(pages) / seconds:.4g}",
                }
            )

        examples = make_examples(reader, pages, cfg.data.max_text_tokens)
        stats = page_statistics(pages, examples, cfg.data.max_text_tokens)
        adapter = make_adapter(cfg, encoder.out_dim, reader).to(device)
        model, pad = reader.model, reader.tokenizer.token_id("<|endoftext|>")
        losses = {
            "full-logits": lambda idx: full_logits_loss(model, adapter, pages, examples, idx, pad, device, autocast),
            "label-positions": lambda idx: batch_loss(
                "reconstruction", model, adapter, pages, examples, idx, pad, device, autocast
            ),
        }
        losses["checkpointing"] = losses["label-positions"]
        print(
            f"{device_name}: {len(pages)} pages, {stats['text_tokens_per_page']:.0f} text tokens per page "
            f"({stats['text_tokens_per_vision_token']:.2f} per vision token), target {cfg.data.max_text_tokens} "
            "tokens; "
            f"parameters: language model {sum(p.numel() for p in model.parameters()):,}, "
            f"adapter {sum(p.numel() for p in adapter.parameters()):,}",
            flush=True,
        )
        for batch in batches:
            index = list(range(batch))
            tokens = sum(examples[i].input_ids.shape[0] for i in index) / batch
            results = {}
            for variant in variants:
                if variant == "checkpointing":
                    enable_gradient_checkpointing(model)
                training_mode(adapter, model, True, variant == "checkpointing")
                seconds, peaks, added = time_steps(losses[variant], adapter, index, args.steps, device, memory)
                if variant == "checkpointing":
                    (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()
                training_mode(adapter, model, False, False)
                results[variant] = seconds
                rows.append(
                    {
                        "stage": "training",
                        "variant": variant,
                        "batch": batch,
                        "tokens_per_example": f"{tokens:.0f}",
                        "text_tokens_per_page": stats["text_tokens_per_page"],
                        "steps": args.steps,
                        "seconds": f"{seconds:.4g}",
                        "pages_per_s": f"{batch / seconds:.4g}",
                        "peak_memory_gib": f"{headline_gib(peaks):.3f}",
                        "memory_added_gib": f"{added:.3f}",
                        "ratio_vs_full_logits": (
                            f"{results['full-logits'] / seconds:.3f}" if "full-logits" in results else ""
                        ),
                    }
                )
                print(
                    f"batch {batch} {variant:16s} {seconds:8.3f} s/step ({batch / seconds:.3g} pages/s, {tokens:.0f} "
                    "tokens "
                    f"per example)  peak {headline_gib(peaks):.2f} GiB (+{added:.2f})"
                    + (f"  x{results['full-logits'] / seconds:.2f} vs full-logits" if "full-logits" in results else ""),
                    flush=True,
                )
        for row in rows:
            row.update(device=device_name, size=args.config.stem if args.config else args.size)
        atomic_write_csv(args.output, rows, FIELDS)
        print(
            f"caching: cold {len(pages) / cold:.3g} pages/s, warm {len(pages) / warm:.4g} pages/s; "
            f"run peak {memory.run_peak()}; wrote {args.output}",
            flush=True,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
