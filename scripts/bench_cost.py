#!/usr/bin/env python3
"""Cost of reading a document natively (text) or optically (pages), on the same documents at
growing lengths: latency (split render / encode / adapter / prefill / decode) and peak memory
per condition, and the ratio optical / native per length.

The models are the full-size ones of configs/fullsize/longbench.yaml (DeepSeek-OCR's DeepEncoder,
the published adapter shape, Qwen3-VL-2B's language model) with RANDOM weights: they cost exactly
what the real ones cost, so these are real latency and memory figures (and meaningless answers).
`--size tiny` uses configs/tiny/longbench.yaml (seconds on a CPU, for plumbing). Documents are
real text, consecutive records of the bundled CVE corpus, cut to each length in Qwen tokens and
rendered with the config's layout (render.reflow: dense pages). Both conditions run through the
benchmark runner itself (`optical bench longbench`'s code), one item per length.

    python scripts/bench_cost.py --size fullsize --lengths 1024,2048,4096,8192 --device cpu     # CPU targets
    python scripts/bench_cost.py --size fullsize --lengths 32768,65536,131072 --device cuda     # GPU targets
    python scripts/bench_cost.py --size tiny --lengths 256,512                                  # seconds
    # both engines
    .venv-vllm/bin/python scripts/bench_cost.py --engine hf,vllm --lengths 8192 --dtype bfloat16 --batch 4

`--engine hf,vllm` runs both conditions on each engine in turn (one engine's models in memory at a
time) and adds vLLM native / hf native and vLLM optical / hf optical per length; the plot is per
engine (cost-hf.png, cost-vllm.png) when there are several.

`--batch K` adds throughput: K different documents of `--batch-length` tokens (consecutive CVE
windows) per condition as one benchmark run on each engine: the hf engine answers them one at a
time, vLLM takes them all in flight (up to vllm.max_num_seqs). Items per second (wall time of the
run, models already loaded) go to <output>-throughput.csv with vLLM / hf per condition.

Every condition records the 1-minute load average (/proc/loadavg) before and after it and the
cores it computes on (torch's threads); one run under a load above those cores shared the machine
with other work, so its latency is not a figure: the CSV says `loaded` in its `load_flag` column and
the line printed for it says LOADED. The README's cost figures come from runs with no flag.

Writes the CSV (default results/bench/cost.csv) and a plot beside it (cost.png).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch

from optical_cli.artifacts import atomic_write_csv
from optical_cli.bench.data import parse_record
from optical_cli.bench.plots import plot_cost_vs_length
from optical_cli.bench.runner import BenchSettings, run_benchmark
from optical_cli.bench.synthetic import cve_document, longbench_item
from optical_cli.config.registry import load_config
from optical_cli.engines.chain import ChainSpec
from optical_cli.engines.factory import build_reader
from optical_cli.engines.reader import in_flight
from optical_cli.machine import load_average
from optical_cli.memory import PeakMemory, in_use_gib

CONFIGS = {
    "fullsize": REPO / "configs" / "fullsize" / "longbench.yaml",
    "tiny": REPO / "configs" / "tiny" / "longbench.yaml",
}
CONDITIONS = ("native", "optical")
STAGES = ("render_s", "encode_s", "adapter_s", "prefill_s", "decode_s")
FIELDS = [
    "engine",
    "length",
    "condition",
    "doc_tokens",
    "doc_chars",
    "input_tokens",
    "pages",
    "truncated",
    "chars_per_page",
    "doc_tokens_per_vision_token",
    "latency_s",
    *STAGES,
    "peak_memory_gib",
    "memory_added_gib",
    "repeats",
    "latency_spread",
    "load_before",
    "load_after",
    "cores",
    "load_flag",
    "optical_over_native_latency",
    "optical_over_native_memory_added",
    "vllm_over_hf_latency",
    "status",
    "reason",
]


def cve_item(length: int, count_tokens, item_id: str, index: int, start: int = 0):
    """A LongBench-schema item whose document is CVE paragraphs from record ``start`` up to ``length`` tokens."""
    document, ids = cve_document(length, measure=count_tokens, start=start)
    return parse_record(longbench_item(document, ids, item_id), "bench_cost", index)


def items_for(lengths: list[int], count_tokens) -> list[tuple[int, object]]:
    """(length, item) per length: CVE paragraphs from the same start, so longer documents extend shorter ones."""
    return [(length, cve_item(length, count_tokens, f"cost-{length}", n)) for n, length in enumerate(lengths)]


def cores_used() -> int:
    """The cores a condition computes on: torch's threads (vLLM's CPU workers bind as many)."""
    return min(torch.get_num_threads(), os.cpu_count() or 1)


def load_flag(before: float | None, after: float | None, cores: int) -> str:
    """``loaded`` when the machine carried more runnable work than the cores the condition uses."""
    known = [load for load in (before, after) if load is not None]
    if not known:
        return "unknown"
    return "loaded" if max(known) > cores else "ok"


def run_condition(reader, item, condition: str, cfg, items_csv: Path, memory: PeakMemory) -> dict:
    """One timed (item, condition) through the benchmark runner; adds the memory it added to what was held,
    and the load average before and after it."""
    settings = BenchSettings(
        (condition,),
        max_context_tokens=10**9,
        max_pages=cfg.bench.max_pages,
        max_new_tokens=cfg.bench.max_new_tokens,
        temperature=0.0,
        seed=cfg.runtime.seed,
    )
    before = in_use_gib(reader.device)
    load_before = load_average()
    (row,) = run_benchmark(reader, [item], settings, items_csv, memory=memory)
    row["memory_added_gib"] = row["peak_memory_gib"] - before
    cores = cores_used()
    row.update(load_before=load_before, load_after=load_average(), cores=cores)
    row["load_flag"] = load_flag(row["load_before"], row["load_after"], cores)
    return row


def summarise(rows: list[dict], tokens_per_page: int) -> dict:
    """The median latency over repeats of one (length, condition); the rest from the first run."""
    first = dict(rows[0])
    latencies = [r["latency_s"] for r in rows]
    median_row = min(rows, key=lambda r: abs(r["latency_s"] - statistics.median(latencies)))
    first.update({key: median_row[key] for key in ("latency_s", *STAGES)})
    first["repeats"] = len(rows)
    first["latency_spread"] = (max(latencies) - min(latencies)) / statistics.median(latencies) if len(rows) > 1 else 0.0
    first["peak_memory_gib"] = max(r["peak_memory_gib"] for r in rows)
    first["load_before"], first["load_after"] = rows[0]["load_before"], rows[-1]["load_after"]
    flags = {r["load_flag"] for r in rows}
    first["load_flag"] = "loaded" if "loaded" in flags else ("ok" if "ok" in flags else "unknown")
    first["memory_added_gib"] = max(r["memory_added_gib"] for r in rows)
    if first["pages"]:
        first["doc_tokens_per_vision_token"] = first["doc_tokens"] / (first["pages"] * tokens_per_page)
    return first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(CONFIGS), default="fullsize")
    parser.add_argument(
        "--lengths", default="1024,2048,4096,8192", help="document lengths in Qwen tokens, comma-separated"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--engine", default="hf", help="hf, vllm or both (hf,vllm): what runs the language model")
    parser.add_argument("--dtype", default=None, help="runtime.dtype for every model (default: the config's)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs per (length, condition), alternating conditions; latency is the median",
    )
    parser.add_argument("--max-new-tokens", type=int, default=None, help="answer budget (default: the config's)")
    parser.add_argument(
        "--batch", type=int, default=0, help="throughput: this many documents per condition in one run (0: off)"
    )
    parser.add_argument("--batch-length", type=int, default=1024, help="tokens per document of the throughput batch")
    parser.add_argument("--output", type=Path, default=REPO / "results" / "bench" / "cost.csv")
    args = parser.parse_args()
    lengths = [int(n) for n in args.lengths.split(",") if n.strip()]

    engines = [e.strip() for e in args.engine.split(",") if e.strip()]
    results, rates = [], []
    for engine in engines:
        engine_results, engine_rates = run_engine(args, engine, lengths)
        results += engine_results
        rates += engine_rates
    hf_latency = {
        (r["length"], r["condition"]): r["latency_s"] for r in results if r["engine"] == "hf" and r["status"] == "ok"
    }
    for row in results:
        base = hf_latency.get((row["length"], row["condition"]))
        row["vllm_over_hf_latency"] = (
            row["latency_s"] / base if row["engine"] == "vllm" and base and row["status"] == "ok" else None
        )
        if row["vllm_over_hf_latency"] is not None:
            print(
                f"{row['length']:>7} tokens, {row['condition']}: vllm {row['latency_s']:.1f} s / hf {base:.1f} s = "
                f"{row['vllm_over_hf_latency']:.2f}",
                flush=True,
            )
    atomic_write_csv(
        args.output,
        [{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()} for row in results],
        FIELDS,
    )
    for engine in engines:
        plot = (
            args.output.with_suffix(".png")
            if len(engines) == 1
            else args.output.with_name(f"{args.output.stem}-{engine}.png")
        )
        plot_cost_vs_length(
            [r for r in results if r["engine"] == engine], CONDITIONS, plot, f" ({args.size}, random weights, {engine})"
        )
    if rates:
        write_throughput(rates, args.output.with_name(f"{args.output.stem}-throughput.csv"))
    print(f"wrote {args.output} and its plot(s)", flush=True)


THROUGHPUT_FIELDS = [
    "engine",
    "condition",
    "items",
    "length",
    "in_flight",
    "ok",
    "wall_s",
    "items_per_s",
    "mean_latency_s",
    "vllm_over_hf_items_per_s",
    "load_before",
    "load_after",
    "cores",
    "load_flag",
]


def run_batch(reader, cfg, engine: str, count: int, length: int, tmp: Path) -> list[dict]:
    """``count`` documents of ``length`` tokens per condition as one benchmark run: items per second."""
    encode_text = reader.encode_text
    # windows far enough apart that no two documents share a record
    items = [
        cve_item(length, lambda text: len(encode_text(text)), f"batch-{n}", n, start=n * 400) for n in range(count)
    ]
    rates = []
    for condition in CONDITIONS:
        settings = BenchSettings(
            (condition,),
            max_context_tokens=10**9,
            max_pages=cfg.bench.max_pages,
            max_new_tokens=cfg.bench.max_new_tokens,
            temperature=0.0,
            seed=cfg.runtime.seed,
        )
        load_before, start = load_average(), time.perf_counter()
        rows = run_benchmark(reader, items, settings, tmp / f"batch-{condition}.csv")
        wall = time.perf_counter() - start
        load_after = load_average()
        ok = [r for r in rows if r["status"] == "ok"]
        rates.append(
            {
                "engine": engine,
                "condition": condition,
                "items": count,
                "length": length,
                "in_flight": in_flight(reader),
                "ok": len(ok),
                "wall_s": wall,
                "items_per_s": len(ok) / wall,
                "mean_latency_s": statistics.mean(r["latency_s"] for r in ok) if ok else None,
                "load_before": load_before,
                "load_after": load_after,
                "cores": cores_used(),
                "load_flag": load_flag(load_before, load_after, cores_used()),
            }
        )
        print(
            f"[{engine}] throughput, {condition}: {len(ok)}/{count} documents of {length} tokens in {wall:.1f} s = "
            f"{len(ok) / wall:.4f} items/s ({in_flight(reader)} in flight); load {load_before}->{load_after}"
            + ("  LOADED: not a figure" if rates[-1]["load_flag"] == "loaded" else ""),
            flush=True,
        )
    return rates


def write_throughput(rates: list[dict], path: Path) -> None:
    hf = {r["condition"]: r["items_per_s"] for r in rates if r["engine"] == "hf"}
    for row in rates:
        base = hf.get(row["condition"])
        row["vllm_over_hf_items_per_s"] = row["items_per_s"] / base if row["engine"] == "vllm" and base else None
        if row["vllm_over_hf_items_per_s"] is not None:
            print(
                f"throughput, {row['condition']}: vllm / hf items per second = {row['vllm_over_hf_items_per_s']:.2f}",
                flush=True,
            )
    atomic_write_csv(
        path,
        [{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()} for row in rates],
        THROUGHPUT_FIELDS,
    )
    print(f"wrote {path}", flush=True)


def run_engine(args, engine: str, lengths: list[int]) -> tuple[list[dict], list[dict]]:
    """Native and optical at each length on one engine (and the throughput batch); its models are
    released before the next engine loads."""
    # every page kept (200, the published adapter's page embeddings): cost of the whole document
    overrides = [
        f"runtime.device={args.device}",
        "bench.adapter=random",
        "bench.temperature=0.0",
        "bench.max_pages=200",
        f"bench.engine={engine}",
    ]
    if args.max_new_tokens:
        overrides.append(f"bench.max_new_tokens={args.max_new_tokens}")
    if engine == "vllm":  # room for the longest document (whole records overshoot a little), template and answer
        overrides.append(f"vllm.max_model_len={max(lengths + [args.batch_length if args.batch else 0]) + 2048}")
        overrides.append(f"vllm.max_num_seqs={max(args.batch, 1)}")
    if args.dtype:
        overrides.append(f"runtime.dtype={args.dtype}")
    cfg = load_config("longbench", CONFIGS[args.size], overrides)
    reader = build_reader(ChainSpec.from_config(cfg, "bench"), CONDITIONS)
    tokens_per_page = reader.vision_tokens([reader.renderer.draw(["x"])])
    memory = PeakMemory(reader.device)
    print(
        f"[{engine}] models: {reader.description}; parameters {reader.parameters}; device {reader.device}; RANDOM "
        "weights "
        f"(cost figures are real, answers are not); layout: font {cfg.render.font_size} px, reflow {cfg.render.reflow}",
        flush=True,
    )

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        encode_text = reader.encode_text  # the closure must not hold `reader`: it is deleted below
        for length, item in items_for(lengths, lambda text: len(encode_text(text))):
            runs: dict[str, list[dict]] = {c: [] for c in CONDITIONS}
            for repeat in range(args.repeats):
                for condition in CONDITIONS:
                    items_csv = Path(tmp) / f"{length}-{condition}-{repeat}.csv"
                    runs[condition].append(run_condition(reader, item, condition, cfg, items_csv, memory))
            native, optical = (summarise(runs[c], tokens_per_page) for c in CONDITIONS)
            ok = native["status"] == optical["status"] == "ok"
            for row in (native, optical):
                row.update(
                    engine=engine,
                    length=length,
                    doc_chars=len(item.context),
                    optical_over_native_latency=optical["latency_s"] / native["latency_s"] if ok else None,
                    optical_over_native_memory_added=(
                        optical["memory_added_gib"] / native["memory_added_gib"]
                        if ok and native["memory_added_gib"] >= 0.01
                        else None
                    ),
                )
                results.append(row)
            report(native, optical)
        rates = run_batch(reader, cfg, engine, args.batch, args.batch_length, Path(tmp)) if args.batch else []
    print(f"[{engine}] run peak memory {memory.run_peak()}", flush=True)
    del reader
    gc.collect()
    if torch.cuda.is_available():  # vLLM sizes its KV cache from the free GPU memory it finds at start
        torch.cuda.empty_cache()
    return results, rates


def report(native: dict, optical: dict) -> None:
    def split(row: dict) -> str:
        return " / ".join(f"{row[s]:.1f}" for s in STAGES)

    ratio = optical["optical_over_native_latency"]
    print(
        f"[{native['engine']}] {native['length']:>7} tokens ({native['doc_tokens']:,} measured, "
        f"{native['doc_chars']:,} chars): "
        f"native {native['latency_s']:.1f} s [{split(native)}] peak {native['peak_memory_gib']:.2f} GiB "
        f"(+{native['memory_added_gib']:.2f}); optical {optical['latency_s']:.1f} s [{split(optical)}] "
        f"peak {optical['peak_memory_gib']:.2f} GiB (+{optical['memory_added_gib']:.2f}), {optical['pages']} pages, "
        f"{optical['chars_per_page']:.0f} chars/page, {optical.get('doc_tokens_per_vision_token', 0):.2f} doc tokens "
        "per "
        f"vision token; optical/native latency = {'-' if ratio is None else f'{ratio:.2f}'}   "
        f"[split: render / encode / adapter / prefill / decode s]; load {native['load_before']}->"
        f"{optical['load_after']} on {native['cores']} cores"
        + ("  LOADED: not a figure" if "loaded" in (native["load_flag"], optical["load_flag"]) else ""),
        flush=True,
    )


if __name__ == "__main__":
    main()
