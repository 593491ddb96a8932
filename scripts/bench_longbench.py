#!/usr/bin/env python
"""Memory and latency of the LongBench conditions at fixed context lengths.

Runs ``native`` (the document as text) and ``optical`` (rendered pages -> DeepEncoder ->
adapter -> spliced into the prompt) on one synthetic document cut to each context length,
with full-size RANDOM-weight models (Qwen3-VL-2B text dims, the official DeepEncoder, the
published adapter shape): the weights cannot be fetched here, and random weights cost the
same time and memory as trained ones. Per (context, condition): input tokens, pages, render,
encode, prefill and decode seconds, total latency, peak GPU memory, status (an OOM is recorded,
not fatal), and the optical/native latency ratio (target: <= 1 above 32K tokens).

    python scripts/bench_longbench.py                      # GPU: 32K, 64K, 128K tokens
    python scripts/bench_longbench.py --tiny --contexts 512,1024   # CPU smoke run, tiny models

Writes results/bench/longbench_speed.csv (or --out).
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from optical_cli.bench.data import LongBenchItem  # noqa: E402
from optical_cli.bench.models import build_reader  # noqa: E402
from optical_cli.bench.runner import BenchSettings, run_benchmark  # noqa: E402
from optical_cli.config import load_config  # noqa: E402

# Qwen3-VL-2B-Instruct's text model (hub config), with random weights.
QWEN3_VL_2B = {
    "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28, "num_attention_heads": 16,
    "num_key_value_heads": 8, "head_dim": 128, "mrope_section": [24, 20, 20], "max_position_embeddings": 262144,
}
FULL = [
    "vlm.source=random", "vlm.tokenizer=qwen-tiktoken", "deepencoder.weights=random", "deepencoder.architecture=official",
    "deepencoder.mode=base", "render.mode=base", "bench.adapter=random", "bench.max_pages=200", "render.tokenizer=none",
] + [f"vlm.random.{key}={value}" for key, value in QWEN3_VL_2B.items()]
TINY = ["bench.adapter=random", "bench.max_pages=8"]


def synthetic_document(tokens: int, encode) -> str:
    """The bundled sample document repeated until it holds ``tokens`` tokens (content is irrelevant
    with random weights; the length and the rendering cost are what is measured)."""
    sample = (REPO / "data" / "sample" / "optical_compression.md").read_text(encoding="utf-8")
    per_copy = max(1, len(encode(sample)))
    return sample * (tokens // per_copy + 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contexts", default="32768,65536,131072", help="document tokens per run, comma-separated")
    parser.add_argument("--tiny", action="store_true", help="tiny random models from configs/tiny (CPU smoke run)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "longbench_speed.csv")
    args = parser.parse_args()
    contexts = [int(c) for c in args.contexts.split(",") if c.strip()]

    config = REPO / "configs" / "tiny" / "longbench.yaml" if args.tiny else REPO / "configs" / "longbench.yaml"
    overrides = (TINY if args.tiny else FULL) + [f"runtime.device={args.device}", f"bench.max_new_tokens={args.max_new_tokens}"]
    cfg = load_config("longbench", config, overrides)
    reader = build_reader(cfg, ("native", "optical"))
    device = reader.vlm.device
    document = synthetic_document(max(contexts), reader.encode_text)
    ids = reader.encode_text(document)
    print(f"models: {reader.description} on {device}; random weights", file=sys.stderr)

    results = []
    for context in contexts:
        text = reader.decode_text(ids[:context])
        item = LongBenchItem(f"ctx{context}", "speed", "", "hard", "long", "Which option?", ("a", "b", "c", "d"), "A", text)
        for condition in ("native", "optical"):
            settings = BenchSettings((condition,), max_context_tokens=context, max_pages=cfg.bench.max_pages,
                                     max_new_tokens=args.max_new_tokens, temperature=0.0, seed=0)
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            with tempfile.TemporaryDirectory() as tmp:
                run_benchmark(reader, [item], settings, Path(tmp) / "warmup.csv")  # first call pays kernel set-up
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                (row,) = run_benchmark(reader, [item], settings, Path(tmp) / "items.csv")
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
            results.append({
                "context_tokens": context, "condition": condition, "status": row["status"], "reason": row["reason"],
                "input_tokens": row["input_tokens"], "pages": row["pages"], "render_s": row["render_s"],
                "encode_s": row["encode_s"], "prefill_s": row["prefill_s"], "decode_s": row["decode_s"],
                "latency_s": row["latency_s"], "peak_gib": None if peak is None else round(peak, 2),
            })
            print(results[-1], file=sys.stderr)
    for context in contexts:
        native, optical = (next(r for r in results if r["context_tokens"] == context and r["condition"] == c) for c in ("native", "optical"))
        ratio = optical["latency_s"] / native["latency_s"] if native["status"] == optical["status"] == "ok" else None
        for row in (native, optical):
            row["optical_over_native_latency"] = None if ratio is None else round(ratio, 3)
        print(f"{context:>7} tokens: native {native['latency_s']:.2f}s ({native['status']}), optical {optical['latency_s']:.2f}s "
              f"({optical['status']}, {optical['pages']} pages, {optical['input_tokens']} input tokens), "
              f"optical/native = {'-' if ratio is None else f'{ratio:.2f}'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(results[0]))
        writer.writeheader()
        writer.writerows(results)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
