#!/usr/bin/env python3
"""Adapter-training throughput: pages/s for feature caching and for training steps.

Measured in one run, on real CVE text (tests/data/cves_200.jsonl unless --data):
  caching   cold  - render + DeepEncoder, writing the feature cache (what epoch 1 costs);
            warm  - the same corpus read back from the cache (what every later epoch costs);
  training  baseline  - the model's own forward with ``labels``: logits over the whole
                        sequence and all 151,936 vocabulary entries;
            optimised - what train-adapter runs: logits only where a label exists.
Prints each ratio against its baseline, the projected wall time of the issue's target
(1,000 documents x 10 epochs), and writes results/bench/train.csv.

    python scripts/bench_train.py                                  # CPU: tiny random models
    python scripts/bench_train.py --size full --device cuda --docs 256 --doc-chars 6000 \\
        --batch-size 16 --steps 20                                 # GPU: full-size random models
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from optical_cli.artifacts import atomic_write_text  # noqa: E402
from optical_cli.config import load_config  # noqa: E402
from optical_cli.models import loading  # noqa: E402
from optical_cli.models.vlm import splice  # noqa: E402
from optical_cli.train import (DeepEncoderPages, _loss, build_page_set, build_reader, collate,  # noqa: E402
                               make_adapter, make_examples)

FIELDS = ["device", "size", "stage", "variant", "pages", "seconds", "pages_per_s", "speedup_vs_baseline"]
# Qwen3-VL-2B-Instruct text dims (its config.json), for full-size random weights
QWEN3_VL_2B = {"hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28, "num_attention_heads": 16,
               "num_key_value_heads": 8, "head_dim": 128, "mrope_section": [24, 20, 20], "initializer_range": 0.02}


def overrides(args, cache: Path) -> list[str]:
    sets = [f"data.cache_dir={cache}", f"data.max_documents={args.docs}", f"train.batch_size={args.batch_size}",
            f"runtime.device={args.device}", f"data.encode_batch_size={args.batch_size}"]
    if args.size == "full":
        sets += ["deepencoder.weights=random", "deepencoder.architecture=official", f"deepencoder.mode={args.mode}",
                 "adapter.hidden_dim=3072", "adapter.max_pages=200", "runtime.dtype=auto", "vlm.source=random",
                 "vlm.tokenizer=qwen-tiktoken", "data.max_text_tokens=1024"]
        dims = dict(QWEN3_VL_2B, num_hidden_layers=args.layers or QWEN3_VL_2B["num_hidden_layers"])
        sets += [f"vlm.random.{k}={json.dumps(v)}" for k, v in dims.items()]
    return sets


def corpus(args, folder: Path) -> Path:
    """The CVE descriptions, optionally joined into documents of about --doc-chars characters."""
    if not args.doc_chars:
        return args.data
    docs, current = [], ""
    for line in args.data.read_text(encoding="utf-8").splitlines():
        current += json.loads(line)["description"] + "\n\n"
        if len(current) >= args.doc_chars:
            docs.append(current)
            current = ""
    path = folder / "joined.jsonl"
    path.write_text("".join(json.dumps({"description": d}) + "\n" for d in docs), encoding="utf-8")
    return path


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def baseline_loss(model, adapter, pages, examples, index, pad_id, device, autocast):
    """The straightforward way: the model's forward with labels (full logits)."""
    features = pages.features[index].to(device)
    page_index = torch.tensor([pages.page_index[i] for i in index], device=device)
    batch = {k: v.to(device) for k, v in collate([examples[i] for i in index], pad_id).items()}
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        inputs = splice(model.get_input_embeddings(), batch["input_ids"], batch["vision_mask"], adapter(features, page_index))
        return model(inputs_embeds=inputs, attention_mask=batch["attention_mask"], position_ids=batch["position_ids"],
                     labels=batch["labels"], use_cache=False).loss


def time_training(step_loss, adapter, n_pages, batch_size, steps, device) -> tuple[int, float]:
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=1e-4)
    batches = [list(range(s, min(n_pages, s + batch_size))) for s in range(0, n_pages, batch_size)]

    def one(index):
        loss = step_loss(index)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    one(batches[0])  # warm-up
    sync(device)
    pages, start = 0, time.perf_counter()
    for k in range(steps):
        index = batches[k % len(batches)]
        one(index)
        pages += len(index)
    sync(device)
    return pages, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny", help="tiny random models, or full-size random ones")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--mode", default="base", help="DeepEncoder mode for --size full")
    parser.add_argument("--data", type=Path, default=REPO / "tests" / "data" / "cves_200.jsonl")
    parser.add_argument("--doc-chars", type=int, default=0, help="join CVE descriptions into documents of ~this many characters")
    parser.add_argument("--docs", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--layers", type=int, default=0, help="--size full: decoder layers (default: all 28 of Qwen3-VL-2B)")
    parser.add_argument("--target-docs", type=int, default=1000)
    parser.add_argument("--target-epochs", type=int, default=10)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    try:
        args.data = corpus(args, work)
        cfg = load_config("train-adapter", REPO / "configs" / "tiny" / "qwen3_vl.yaml", overrides(args, work / "cache"))
        device = loading.resolve_device(cfg.runtime.device)
        dtype = loading.resolve_dtype(cfg.runtime.dtype, device)
        autocast = device.type == "cuda" and dtype == torch.bfloat16
        from optical_cli.train import read_corpus

        documents = read_corpus(str(args.data), max_documents=args.docs, min_chars=cfg.data.min_chars)
        reader = build_reader(cfg, device, dtype)
        encoder = DeepEncoderPages(cfg.deepencoder, cfg.runtime, device, args.batch_size)
        rows = []
        start = time.perf_counter()
        encoder.load()
        sync(device)
        load_s = time.perf_counter() - start
        print(f"encoder load: {load_s:.1f} s (not counted below)", file=sys.stderr)

        start = time.perf_counter()
        pages, _ = build_page_set(documents, cfg, encoder, work / "cache")
        sync(device)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        again, hit = build_page_set(documents, cfg, encoder, work / "cache")
        warm = time.perf_counter() - start
        assert hit and torch.equal(again.features, pages.features)
        n = len(pages)
        rows.append(["caching", "cold (render + encode)", n, cold, n / cold, 1.0])
        rows.append(["caching", "warm (feature cache)", n, warm, n / warm, cold / warm])

        examples = make_examples(reader, pages, cfg.data.max_text_tokens)
        adapter = make_adapter(cfg, encoder.out_dim, reader).to(device)
        pad = reader.tokenizer.token_id("<|endoftext|>")
        results = {}
        for variant, fn in (
            ("baseline (full logits)", lambda idx: baseline_loss(reader.model, adapter, pages, examples, idx, pad, device, autocast)),
            ("optimised (label positions only)", lambda idx: _loss("reconstruction", reader.model, adapter, pages, examples,
                                                                   idx, pad, device, autocast)),
        ):
            count, seconds = time_training(fn, adapter, n, args.batch_size, args.steps, device)
            results[variant] = count / seconds
            rows.append(["training", variant, count, seconds, count / seconds,
                         count / seconds / results["baseline (full logits)"]])

        text_tokens = sum(len(e.answer_ids) for e in examples) / n
        pages_per_doc = n / len(documents)
        target_pages = args.target_docs * pages_per_doc
        train_rate = results["optimised (label positions only)"]
        projected = target_pages / (n / cold) + args.target_epochs * target_pages / train_rate
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(FIELDS)
        for stage, variant, count, seconds, rate, speedup in rows:
            writer.writerow([str(device), args.size, stage, variant, count, f"{seconds:.3f}", f"{rate:.2f}", f"{speedup:.2f}"])
            print(f"{stage:9s} {variant:42s} {rate:10.2f} pages/s  x{speedup:.2f} vs baseline", file=sys.stderr)
        target = REPO / "results" / "bench" / "train.csv"
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, out.getvalue())
        print(f"pages: {n} from {len(documents)} documents ({pages_per_doc:.2f} per document), "
              f"{pages.features.shape[1]} vision tokens and {text_tokens:.0f} target text tokens per page", file=sys.stderr)
        print(f"projected {args.target_docs} documents x {args.target_epochs} epochs on {device}: "
              f"{projected / 60:.1f} min (encode once + train)", file=sys.stderr)
        print(f"wrote {target}", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
