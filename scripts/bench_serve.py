#!/usr/bin/env python3
"""The optical reader as a service, measured (issue 26, point 8): full size, random weights.

Three measurements, each against a baseline measured in the same run:

1. **Throughput**: ``--concurrency`` questions (8), each about its own ``--pages``-page document
   (4), all in flight at once:
   - ``offline-embeddings`` (the baseline): vLLM's offline engine with the pages encoded and
     adapted in this process and sent as embeddings (the path before the model plugin,
     ``vllm.pages: embeddings``);
   - ``offline-engine``: the same engine with the pages as images, DeepEncoder and the adapter
     inside vLLM (the plugin; ``bench longbench --engine vllm``'s path);
   - ``server``: ``optical serve`` (vLLM's OpenAI server), the questions as concurrent HTTP
     requests with the pages as PNG data URLs.
   Items per second and the ratio to the baseline.
2. **Caches**: through the server, a second question about the same document against the first
   (the pages' encoder outputs and KV cache reused: vLLM's encoder cache and prefix caching).
3. **ask against the native read**: through the server, ``optical ask``'s path on a ``--length``
   token document (8K) against the same server reading a document of that length as text.

Each engine runs in its own process (its memory is returned before the next starts). The load
average is recorded before and after every measurement: a figure taken while other work shares
the cores is not a figure. Writes ``--output`` (results/bench/serve.csv).

    .venv-vllm/bin/python scripts/bench_serve.py --size fullsize --device cpu --dtype bfloat16   # the figures
    .venv-vllm/bin/python scripts/bench_serve.py --size tiny                                     # seconds: plumbing
    python scripts/bench_serve.py --size fullsize --device cuda --dtype bfloat16 --length 32768  # a GPU host
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from optical_cli.artifacts import atomic_write_csv
from optical_cli.bench.synthetic import cve_document
from optical_cli.config.registry import load_config
from optical_cli.engines.chain import ChainSpec
from optical_cli.engines.factory import build_reader
from optical_cli.engines.reader import ReadRequest
from optical_cli.machine import load_text
from optical_cli.models.tokenizers import load_chat_tokenizer
from optical_cli.prompts import AFTER_DOCUMENT, PREAMBLE, question_prompt
from optical_cli.render.pages import PageRenderer, png_bytes
from optical_cli.serving.ask import ask
from optical_cli.serving.client import OpenAIServer, page_messages

CONFIGS = {"fullsize": REPO / "configs" / "fullsize" / "serve.yaml", "tiny": REPO / "configs" / "tiny" / "serve.yaml"}
FIELDS = [
    "measure",
    "variant",
    "items",
    "pages_per_item",
    "wall_s",
    "items_per_s",
    "latency_s",
    "ratio_to_baseline",
    "baseline",
    "detail",
    "load_before",
    "load_after",
]
QUESTIONS = ["Which product is affected?", "What can an attacker do?", "Which versions are named?", "Who reported it?"]


def config(args, *more: str):
    overrides = [
        f"runtime.device={args.device}",
        f"vllm.max_num_seqs={args.concurrency}",
        f"ask.max_new_tokens={args.max_new_tokens}",
        f"serve.max_new_tokens={args.max_new_tokens}",
        f"vllm.max_model_len={args.length + 4096}",
        *more,
    ]
    if args.dtype:
        overrides.append(f"runtime.dtype={args.dtype}")
    return load_config("serve", CONFIGS[args.size], overrides)


def paged_document(renderer: PageRenderer, pages: int, start: int) -> tuple[str, list]:
    """Consecutive CVE records from ``start`` that fill exactly ``pages`` pages: (text, page images)."""
    size, previous = 2000 * pages, None
    while True:
        text, _ = cve_document(size, start=start)
        laid_out, _, _ = renderer.layout(text)
        if len(laid_out) > pages:
            kept = laid_out[:pages]
            return "\n".join(line for page in kept for line in page), [renderer.draw(lines) for lines in kept]
        if text == previous:  # the corpus (1,681 records) ended first
            raise SystemExit(f"the CVE corpus from record {start} does not fill {pages} pages; ask for fewer pages")
        size, previous = size * 2, text


def documents(cfg, count: int, pages: int, first: int = 0) -> list[tuple[str, list]]:
    renderer = PageRenderer(cfg.render.model_copy(update={"mode": cfg.deepencoder.mode}))
    return [paged_document(renderer, pages, start=first + 100 * n) for n in range(count)]


# ---------------------------------------------------------------------------------------
# 1. Throughput on the offline engine (one variant per process)


def offline_variant(args, pages_as: str) -> dict:
    cfg = config(args, f"vllm.pages={pages_as}", "vllm.prefix_caching=false")
    reader = build_reader(ChainSpec.from_config(cfg, "serve", engine="vllm"), ["optical"])
    docs = documents(cfg, args.concurrency, args.pages)
    reads = [
        ReadRequest(question_prompt(QUESTIONS[n % 4]), args.max_new_tokens, 0.0, cfg.runtime.seed, pages=images)
        for n, (_, images) in enumerate(docs)
    ]
    load_before = load_text()
    start = time.perf_counter()
    outcomes = reader.read_many(reads)
    wall = time.perf_counter() - start
    failed = [str(o) for o in outcomes if isinstance(o, Exception)]
    if failed:
        raise SystemExit(f"offline-{pages_as}: {failed[0]}")
    return {
        "wall_s": wall,
        "items": len(reads),
        "latency_s": sum(o.prefill_s + o.decode_s + o.encode_s + o.adapter_s for o in outcomes) / len(outcomes),
        "load_before": load_before,
        "load_after": load_text(),
        "detail": reader.description,
    }


def in_subprocess(args, variant: str) -> dict:
    """Run one offline variant in a child process (its engine's memory returns when it exits)."""
    command = [sys.executable, __file__, "--variant", variant, *sys.argv[1:]]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------
# 2 and 3. The server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``optical serve`` in its own process group, up until closed."""

    def __init__(self, args, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        overrides = [arg for item in config_sets(args) for arg in ("--set", item)]
        self.log = open(log, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "optical_cli.cli", "serve", "-c", str(CONFIGS[args.size]), "--port", str(self.port)]
            + overrides,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
        )
        deadline = time.monotonic() + 3600
        while not self._healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise SystemExit(f"the server did not start; see {log}")
            time.sleep(2)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    def close(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(120)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.log.close()


def config_sets(args) -> list[str]:
    sets = [
        f"runtime.device={args.device}",
        f"vllm.max_num_seqs={args.concurrency}",
        f"serve.max_new_tokens={args.max_new_tokens}",
        f"vllm.max_model_len={args.length + 4096}",
    ]
    return sets + ([f"runtime.dtype={args.dtype}"] if args.dtype else [])


def server_throughput(args, server: Server, cfg) -> dict:
    client = OpenAIServer(server.url, timeout_s=cfg.ask.timeout_s)
    docs = documents(cfg, args.concurrency, args.pages)
    requests = [page_messages([png_bytes(p) for p in images], QUESTIONS[n % 4]) for n, (_, images) in enumerate(docs)]

    def one(messages):
        return client.chat("optical", messages, max_tokens=args.max_new_tokens, temperature=0.0)

    load_before = load_text()
    start = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        replies = list(pool.map(one, requests))
    wall = time.perf_counter() - start
    return {
        "wall_s": wall,
        "items": len(replies),
        "latency_s": sum(r.total_s for r in replies) / len(replies),
        "load_before": load_before,
        "load_after": load_text(),
        "detail": f"{args.concurrency} HTTP requests at once, {sum(r.completion_tokens or 0 for r in replies)} tokens",
    }


def second_question(args, server: Server, cfg) -> list[dict]:
    client = OpenAIServer(server.url, timeout_s=cfg.ask.timeout_s)
    ((_, images),) = documents(cfg, 1, args.pages, first=1200)  # past where the throughput documents start
    pngs = [png_bytes(p) for p in images]
    rows = []
    for n, question in enumerate(QUESTIONS[:2]):
        load_before = load_text()
        reply = client.chat("optical", page_messages(pngs, question), max_tokens=args.max_new_tokens, temperature=0.0)
        rows.append(
            {
                "variant": ["first question", "second question"][n],
                "items": 1,
                "wall_s": reply.total_s,
                "latency_s": reply.total_s,
                "load_before": load_before,
                "load_after": load_text(),
                "detail": f"first answer token after {reply.first_token_s:.2f} s; "
                f"prefix-cache hits so far {prefix_hits(server):.0f}",
            }
        )
    return rows


def prefix_hits(server: Server) -> float:
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as response:
        metrics = response.read().decode()
    return sum(
        float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("vllm:prefix_cache_hits_total")
    )


def ask_against_native(args, server: Server, cfg, tmp: Path) -> list[dict]:
    """Through the server: the document of ``--length`` tokens read as pages by `optical ask`'s path,
    and another as long read as text (fresh documents: no cache shared)."""
    tokenizer = load_chat_tokenizer(ChainSpec.from_config(cfg, "serve", engine="vllm").tokenizer_source())
    rows = []
    for n, variant in enumerate(["native (text)", "optical ask (pages)"]):
        text, _ = cve_document(args.length, measure=lambda t: len(tokenizer.encode(t)), start=900 * n)
        if len(tokenizer.encode(text)) < args.length:
            raise SystemExit(f"the CVE corpus from record {900 * n} holds fewer than {args.length} tokens")
        load_before = load_text()
        if variant.startswith("native"):
            client = OpenAIServer(server.url, timeout_s=cfg.ask.timeout_s)
            messages = [{"role": "user", "content": PREAMBLE + text + "\n" + AFTER_DOCUMENT + QUESTIONS[0]}]
            reply = client.chat("optical", messages, max_tokens=args.max_new_tokens, temperature=0.0)
            latency, detail = reply.total_s, f"{reply.prompt_tokens} input tokens"
        else:
            doc = tmp / "document.txt"
            doc.write_text(text, encoding="utf-8")
            answer = ask(cfg, str(doc), QUESTIONS[0], server=server.url)
            latency = answer.timings["total_s"]
            detail = (
                f"{answer.pages} pages, {answer.vision_tokens} vision tokens for {answer.document_tokens} "
                f"document tokens; {answer.input_tokens} input tokens"
            )
        rows.append(
            {
                "variant": variant,
                "items": 1,
                "wall_s": latency,
                "latency_s": latency,
                "detail": detail,
                "load_before": load_before,
                "load_after": load_text(),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(CONFIGS), default="fullsize")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    parser.add_argument("--concurrency", type=int, default=8, help="questions in flight (throughput)")
    parser.add_argument("--pages", type=int, default=4, help="pages per question (throughput, caches)")
    parser.add_argument("--length", type=int, default=8192, help="document tokens (ask against native)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument(
        "--server-only",
        action="store_true",
        help="skip the offline engines (the throughput baseline): the server's measurements alone (gpu_check.sh)",
    )
    parser.add_argument("--output", type=Path, default=REPO / "results" / "bench" / "serve.csv")
    parser.add_argument("--variant", choices=["offline-embeddings", "offline-engine"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:  # a child process: one offline measurement, one JSON line
        print(json.dumps(offline_variant(args, args.variant.removeprefix("offline-"))), flush=True)
        return

    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    print(f"load average before: {load_text()}", flush=True)
    rows = []
    base = {"measure": "throughput", "pages_per_item": args.pages}
    for variant in () if args.server_only else ("offline-embeddings", "offline-engine"):
        result = in_subprocess(args, variant)
        rows.append({**base, "variant": variant, **result})
        print(
            f"{variant}: {result['items']} items in {result['wall_s']:.1f} s (load {result['load_before']})", flush=True
        )
    cfg = config(args)
    output_dir = args.output.parent
    output_dir.mkdir(parents=True, exist_ok=True)
    server = Server(args, output_dir / f"{args.output.stem}-server.log")
    try:
        rows.append({**base, "variant": "server", **server_throughput(args, server, cfg)})
        rows += [
            {"measure": "caches", "pages_per_item": args.pages, **row} for row in second_question(args, server, cfg)
        ]
        rows += [
            {"measure": f"ask vs native at {args.length} tokens", **row}
            for row in ask_against_native(args, server, cfg, output_dir)
        ]
    finally:
        server.close()
        write(rows, args.output)  # what was measured before a failure is kept


def write(rows: list[dict], path: Path) -> None:
    baselines = {"throughput": "offline-embeddings", "caches": "first question"}
    for row in rows:
        row["items_per_s"] = row["items"] / row["wall_s"]
        measure = row["measure"]
        baseline = baselines.get(measure, "native (text)")
        reference = next((r for r in rows if r["measure"] == measure and r["variant"] == baseline), None)
        key = "items_per_s" if measure == "throughput" else "latency_s"
        row["ratio_to_baseline"] = None if reference is None else row[key] / reference[key]
        row["baseline"] = None if reference is None else baseline
        ratio = "" if reference is None else f"  x{row['ratio_to_baseline']:.3f} of {baseline}"
        print(
            f"{measure:28s} {row['variant']:22s} {key} {row[key]:.4g}{ratio} "
            f"(load {row['load_before']} -> {row['load_after']}; {row.get('detail', '')})",
            flush=True,
        )
    atomic_write_csv(
        path, [{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows], FIELDS
    )
    print(f"load average after: {load_text()}; wrote {path}", flush=True)


if __name__ == "__main__":
    main()
