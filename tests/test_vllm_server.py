"""`optical serve` for real: vLLM's OpenAI server on the tiny optical model, on a free localhost port
(the session's server, conftest.py: keyed, alias glyph; run in .venv-vllm: `make test-vllm`).

A plain HTTP client (urllib, none of the project's client code) posts page PNGs and gets answers;
requests in flight give the answers of one at a time; bad input gets a 4xx that says what was wrong
and the server answers the next request; `ask --server` gives `ask --engine hf`'s answers with the
server requests sent 8 at a time; a second question about the same pages hits vLLM's caches.
"""

import base64
import json
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("vllm")

from conftest import REPO_ROOT
from vllm_servers import KEY, KEY_VARIABLE, config_sets

from optical_cli.bench.synthetic import cve_document
from optical_cli.config.registry import load_config
from optical_cli.serving.ask import ask, local_reader

TINY = REPO_ROOT / "configs" / "tiny" / "serve.yaml"
OPTICAL = Path(sys.executable).with_name("optical")
AUTH = {"Authorization": f"Bearer {KEY}"}  # the session's server requires its key (vllm_servers.py)


def get(url: str, timeout: float = 10) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=AUTH), timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def post(url: str, body: dict, timeout: float = 600) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json", **AUTH})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.fixture(scope="module")
def server(optical_server):
    """The session's server (conftest.py), up."""
    return optical_server.ensure_up()


@pytest.fixture(scope="module")
def page_pngs(tmp_path_factory):
    """Page PNGs of three documents as `optical render` writes them (tiny mode, 512 px)."""
    folder = tmp_path_factory.mktemp("pages")
    documents = []
    for n in range(3):
        text, _ = cve_document(1500 + 2500 * n, start=40 * n)
        source = folder / f"doc{n}.txt"
        source.write_text(text)
        out = folder / f"doc{n}"
        done = subprocess.run(
            [str(OPTICAL), "render", str(source), "-o", str(out), "-c", "configs/render.yaml"]
            + ["--set", "render.mode=tiny", "--set", "render.font_size=12"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        documents.append([path.read_bytes() for path in sorted(out.glob("page_*.png"))])
    return documents


def chat(pngs: list[bytes], question: str, max_tokens: int = 8) -> dict:
    """A chat request as any OpenAI client writes it: the pages as PNG data URLs, then the question."""
    parts = [_data_url("image/png", png) for png in pngs]
    return {
        "model": "optical",
        "messages": [{"role": "user", "content": [*parts, {"type": "text", "text": question}]}],
        "max_tokens": max_tokens,
    }


def test_health_models_and_a_plain_client_posting_page_pngs(server, page_pngs):
    assert get(server.url + "/health")[0] == 200
    status, models = get(server.url + "/v1/models")
    assert status == 200 and [m["id"] for m in json.loads(models)["data"]] == ["optical", "glyph"]
    pngs = page_pngs[1]
    status, reply = post(server.url + "/v1/chat/completions", chat(pngs, "Which products are affected?"))
    assert status == 200, reply
    assert reply["choices"][0]["message"]["content"].strip()
    assert reply["usage"]["prompt_tokens"] >= 64 * len(pngs) and len(pngs) >= 2
    status, metrics = get(server.url + "/metrics")
    assert status == 200 and "vllm:" in metrics


def test_requests_in_flight_answer_as_one_at_a_time(server, page_pngs):
    bodies = [chat(page_pngs[n % 3][: 1 + n % 2], f"Question {n}: which vendor is named?") for n in range(8)]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda body: post(server.url + "/v1/chat/completions", body), bodies))
    alone = [post(server.url + "/v1/chat/completions", body) for body in bodies]
    assert all(status == 200 for status, _ in together + alone)
    answers = [reply["choices"][0]["message"]["content"] for _, reply in together]
    assert answers == [reply["choices"][0]["message"]["content"] for _, reply in alone]
    assert len(set(answers)) > 1  # the answers depend on the pages and the question


def _data_url(kind: str, data: bytes) -> dict:
    return {"type": "image_url", "image_url": {"url": f"data:{kind};base64," + base64.b64encode(data).decode()}}


BAD_INPUTS = {  # what the client sends in its user message -> a word the 4xx message must hold
    "a corrupt PNG": (lambda pngs: [_data_url("image/png", pngs[0][:200]), _text("Why?")], "image"),
    "a data URL that is not base64": (
        lambda pngs: [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@@"}}, _text("Why?")],
        "base64",
    ),
    "a data URL that is not an image": (lambda pngs: [_data_url("text/plain", b"hello"), _text("?")], "image"),
    "a video instead of pages": (
        lambda pngs: [{"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}}, _text("Why?")],
        "video",
    ),
    "more pages than the model takes": (lambda pngs: [_data_url("image/png", pngs[0])] * 9 + [_text("?")], "At most 8"),
    "an empty message": (lambda pngs: [], "empty"),
    "a message of blanks": (lambda pngs: [_text("   ")], "empty"),
    "a request over max_model_len": (lambda pngs: [_text("ledger " * 5000)], "maximum context length"),
}


def _text(text: str) -> dict:
    return {"type": "text", "text": text}


@pytest.mark.parametrize("what", list(BAD_INPUTS))
def test_bad_input_gets_a_4xx_and_the_server_answers_the_next_request(server, page_pngs, what):
    content, says = BAD_INPUTS[what]
    body = {"model": "optical", "messages": [{"role": "user", "content": content(page_pngs[0])}], "max_tokens": 4}
    status, reply = post(server.url + "/v1/chat/completions", body)
    message = (reply.get("error") or {}).get("message", "")
    print(f"\n{what}: {status} {message[:160]}")
    assert 400 <= status < 500 and says in message, reply
    status, reply = post(server.url + "/v1/chat/completions", chat(page_pngs[0], "Why?", max_tokens=4))
    assert status == 200 and reply["choices"][0]["message"]["content"]


def test_an_image_past_pils_decompression_limit_is_refused_and_the_server_lives_on(server, page_pngs):
    """vLLM's media loader refuses it with its own status (500, PIL's decompression-bomb guard:
    not ours to change); the server answers the next request."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (14000, 13000), 255).save(buffer, format="PNG")  # 182M pixels > PIL's 179M
    status, reply = post(server.url + "/v1/chat/completions", chat([buffer.getvalue()], "Why?", max_tokens=4))
    assert status >= 400 and "exceeds limit" in (reply.get("error") or {}).get("message", ""), reply
    assert post(server.url + "/v1/chat/completions", chat(page_pngs[0], "Why?", max_tokens=4))[0] == 200


def test_ask_through_the_server_gives_the_hf_engines_answers(server, tmp_path):
    cfg = load_config("serve", TINY, config_sets())  # the key's variable: ask sends the key
    pairs = []
    for n in range(4):
        text, _ = cve_document(1200 + 700 * n, start=25 * n)
        doc = tmp_path / f"doc{n}.txt"
        doc.write_text(text)
        pairs += [(doc, q) for q in ("Which software is affected?", "What can an attacker do?", "Name one vendor.")]
    with ThreadPoolExecutor(8) as pool:  # the server requests 8 at a time
        served = list(pool.map(lambda pair: ask(cfg, str(pair[0]), pair[1], server=server.url), pairs))
    reader = local_reader(cfg)  # the hf engine, loaded once for the 12 questions
    local = [ask(cfg, str(doc), question, reader=reader) for doc, question in pairs]
    same = sum(a.answer == b.answer for a, b in zip(served, local))
    print(f"\nask --server equals ask --engine hf on {same}/{len(pairs)} document/question pairs")
    assert same >= 0.9 * len(pairs)
    assert len({a.answer for a in local}) > 1
    assert [a.input_tokens for a in served] == [a.input_tokens for a in local]
    assert all(a.engine == "server" and a.vision_tokens == 64 * a.pages for a in served)


def test_the_ask_command_streams_through_the_server_and_a_second_question_hits_the_caches(server, tmp_path):
    text, _ = cve_document(2500, start=300)
    doc = tmp_path / "doc.txt"
    doc.write_text(text)

    def hits() -> float:
        _, metrics = get(server.url + "/metrics")
        return sum(
            float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("vllm:prefix_cache_hits_total")
        )

    before = hits()
    command = [str(OPTICAL), "ask", str(doc), "Which versions are affected?", "-c", str(TINY), "--server", server.url]
    command += [arg for item in config_sets() for arg in ("--set", item)]
    first = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, env=server.env, timeout=600)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() and "server" in first.stderr
    middle = hits()
    second = subprocess.run(
        [*command[:3], "Who reported it?", *command[4:], "--json"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=server.env,
        timeout=600,
    )
    assert second.returncode == 0, second.stderr
    answer = json.loads(second.stdout)
    assert answer["engine"] == "server" and answer["pages"] >= 2
    # the second question reuses the pages' KV cache (prefix caching keyed by the pages' hashes)
    print(f"\nprefix-cache hits: {middle - before:.0f} for the first question, {hits() - middle:.0f} for the second")
    assert hits() - middle >= 64 * answer["pages"]


RULER_TINY = REPO_ROOT / "configs" / "tiny" / "ruler.yaml"
RULER_RUN = ["bench", "ruler", "-c", str(RULER_TINY), "--lengths", "1024,2048"]
RULER_RUN += ["--tasks", "niah_single_1,niah_multikey_1,vt,cwe", "--font-sizes", "12"]
SERVER_KEY = ["--set", f"bench.server_api_key_env={KEY_VARIABLE}"]  # the session's server is keyed


def _bench(args: list[str]):
    from typer.testing import CliRunner

    from optical_cli.cli import app

    return CliRunner().invoke(app, args)


def _log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "items.jsonl").read_text().splitlines()]


def test_bench_ruler_through_the_server_gives_the_hf_engines_greedy_predictions(server, tmp_path):
    """The done-when run (four tasks at 1K and 2K, all four conditions) on --engine hf and through the server
    started from configs/tiny/serve.yaml: the same greedy predictions on at least 90% of the optical rows."""
    common = [
        *RULER_RUN,
        "--num-samples",
        "1",
        "--set",
        "bench.needle_legible=false",
        "--set",
        "bench.write_pages=false",
    ]
    local = _bench([*common, "--engine", "hf", "-o", str(tmp_path / "hf")])
    assert local.exit_code == 0, local.output
    remote = _bench([*common, "--server", server.url, *SERVER_KEY, "-o", str(tmp_path / "server")])
    assert remote.exit_code == 0, remote.output
    hf, served = _log(tmp_path / "hf"), _log(tmp_path / "server")
    assert [(r["id"], r["condition"]) for r in hf] == [(r["id"], r["condition"]) for r in served]
    assert all(r["status"] == "ok" for r in hf + served)
    optical = [(a, b) for a, b in zip(hf, served) if a["condition"] == "optical"]
    same = sum(a["output"] == b["output"] for a, b in optical)
    assert len(optical) == 8 and same >= 0.9 * len(optical), [(a["output"], b["output"]) for a, b in optical]
    # the server read the prompts the hf engine read: the same input tokens on every row
    assert [r["input_tokens"] for r in hf] == [r["input_tokens"] for r in served]


def test_a_server_that_does_not_serve_the_configs_model_is_refused_before_the_first_item(server, tmp_path):
    base = [*RULER_RUN, "--num-samples", "1", "--server", server.url, *SERVER_KEY]
    other_mode = _bench([*base, "--set", "deepencoder.mode=small", "-o", str(tmp_path / "mode")])
    assert other_mode.exit_code == 2 and "vision tokens" in other_mode.stderr, other_mode.output
    # a name the session's server does not serve (it serves optical and the alias glyph)
    other_name = _bench([*base, "--set", "bench.served_model_name=qwen3-8b", "-o", str(tmp_path / "name")])
    assert other_name.exit_code == 2 and "not 'qwen3-8b'" in other_name.stderr, other_name.output
    assert not (tmp_path / "mode" / "items.jsonl").exists() and not (tmp_path / "name" / "items.jsonl").exists()


def test_bench_longbench_through_the_server(server, tmp_path):
    """LongBench v2 items sent as ask sends them: every condition answers through the server."""
    config = REPO_ROOT / "configs" / "tiny" / "longbench.yaml"
    args = ["bench", "longbench", "-c", str(config), "--num-samples", "2", "--server", server.url, *SERVER_KEY]
    result = _bench([*args, "--set", "bench.temperature=0", "-o", str(tmp_path / "lb"), "--json"])
    assert result.exit_code == 0, result.output
    rows = _log(tmp_path / "lb")
    assert len(rows) == 8 and all(r["status"] == "ok" and r["input_tokens"] for r in rows)
