"""Other people's clients against a real `optical serve` (the session's server: tiny config, a key, the
alias glyph; conftest.py): the official `openai` package, plain and streamed, with the options
clients use; Glyph's request shape; keys; the loop guard as clients see it; the optical counters and
the request log; 64 clients at once against the same requests one at a time; a client that leaves
mid-stream. Run in .venv-vllm: `make test-vllm`."""

import base64
import csv
import io
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("vllm")
pytest.importorskip("openai")

import openai
from conftest import REPO_ROOT
from vllm_servers import KEY, KEY_VARIABLE, TINY, config_sets

from optical_cli.bench.synthetic import cve_document
from optical_cli.config.registry import load_config
from optical_cli.errors import InputError
from optical_cli.render.pages import PageRenderer, png_bytes
from optical_cli.serving.ask import ask

LOOPING = "Loop"  # the tiny chain loops on it (tests/test_loop_guard.py)
NO_GUARD = {"vllm_xargs": {"loop_guard_ngram": 0}}


@pytest.fixture(scope="module")
def server(optical_server):
    return optical_server.ensure_up()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=600)


@pytest.fixture(scope="module")
def documents():
    """Page images of six CVE documents (2-3 tiny pages each), as `optical render` draws them; the
    last is read by the counters test only (its pages must be new to the server)."""
    cfg = load_config("serve", TINY, [])
    renderer = PageRenderer(cfg.render.model_copy(update={"mode": cfg.deepencoder.mode}))
    found = []
    for n in range(6):
        text, _ = cve_document(3000 + 2000 * (n % 2), start=60 * n + 7)
        lines, _, _ = renderer.layout(text)
        found.append([renderer.draw(page) for page in lines[:3]])
    assert all(len(pages) >= 2 for pages in found)
    return found


def data_url(image, kind="png") -> dict:
    if kind == "png":
        data = png_bytes(image)
    else:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=90)
        data = buffer.getvalue()
    return {"type": "image_url", "image_url": {"url": f"data:image/{kind};base64," + base64.b64encode(data).decode()}}


def user(pages, question, kind="png") -> dict:
    return {"role": "user", "content": [*(data_url(p, kind) for p in pages), {"type": "text", "text": question}]}


def metric(server, name: str, *labels: str) -> float:
    """The sum of ``name``'s samples on /metrics, over those whose labels hold every one of ``labels``."""
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + " ", name + "{")) and all(label in line for label in labels):
            total += float(line.split()[-1])
    return total


def test_plain_and_streamed_answers_are_the_same(client, documents):
    messages = [user(documents[1][:2], "Which products are affected?")]
    plain = client.chat.completions.create(model="optical", messages=messages, max_tokens=24)
    stream = client.chat.completions.create(
        model="optical", messages=messages, max_tokens=24, stream=True, stream_options={"include_usage": True}
    )
    pieces, finish, usage = [], None, None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert plain.choices[0].message.content and "".join(pieces) == plain.choices[0].message.content
    assert finish == plain.choices[0].finish_reason and usage.prompt_tokens == plain.usage.prompt_tokens
    assert plain.usage.prompt_tokens >= 2 * 64 and plain.model == "optical"


def test_n_logprobs_stop_and_seed(client, documents):
    messages = [user(documents[2][:1], "What can an attacker do?")]
    two = client.chat.completions.create(model="optical", messages=messages, max_tokens=8, n=2, temperature=0.9, seed=3)
    assert len(two.choices) == 2 and all(c.message.content for c in two.choices)
    scored = client.chat.completions.create(
        model="optical", messages=messages, max_tokens=6, logprobs=True, top_logprobs=3
    )
    tokens = scored.choices[0].logprobs.content
    assert len(tokens) == scored.usage.completion_tokens and all(len(t.top_logprobs) == 3 for t in tokens)
    assert all(t.logprob <= 0 for t in tokens)
    greedy = client.chat.completions.create(model="optical", messages=messages, max_tokens=32).choices[0]
    text = greedy.message.content
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    stopped = client.chat.completions.create(model="optical", messages=messages, max_tokens=32, stop=[stop]).choices[0]
    assert stopped.finish_reason == "stop" and stopped.message.content == text[: text.index(stop)]
    sampled = [
        client.chat.completions.create(model="optical", messages=messages, max_tokens=12, temperature=1.0, seed=seed)
        .choices[0]
        .message.content
        for seed in (7, 7, 8)
    ]
    assert sampled[0] == sampled[1] != sampled[2]


def test_a_system_message_several_user_turns_with_pages_and_jpeg_pages(client, documents):
    messages = [
        {"role": "system", "content": "Answer in one sentence."},
        user(documents[0][:2], "Which vendor is named?"),
        {"role": "assistant", "content": "A vendor."},
        user(documents[3][:1], "And in this one?"),
    ]
    reply = client.chat.completions.create(model="optical", messages=messages, max_tokens=12)
    assert reply.choices[0].message.content and reply.usage.prompt_tokens >= 3 * 64
    jpeg = client.chat.completions.create(
        model="optical", messages=[user(documents[4][:2], "Which versions?", kind="jpeg")], max_tokens=12
    )
    assert jpeg.choices[0].message.content and jpeg.usage.prompt_tokens >= 2 * 64


def test_glyphs_client_is_answered_or_told_why(client, documents):
    """Glyph's evaluation clients send "model": "glyph", max_tokens 8192 and vLLM's sampling extras."""
    extras = {"top_k": 50, "repetition_penalty": 1.1, "stop_token_ids": [151645], "skip_special_tokens": False}
    messages = [user(documents[0][:2], "What is the CVE identifier?")]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="glyph", messages=messages, max_tokens=8192, temperature=0, extra_body=extras
        )
    assert refused.value.status_code == 400 and "max_tokens=8192" in str(refused.value)  # tiny: 4096 positions
    reply = client.chat.completions.create(
        model="glyph", messages=messages, max_tokens=16, temperature=0, extra_body=extras
    )
    assert reply.choices[0].message.content
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="gpt-4o", messages=messages, max_tokens=4)
    assert unknown.value.status_code == 404 and "gpt-4o" in str(unknown.value)


def test_a_keyed_server_answers_401_without_the_key_and_200_with_it(server, client, documents, tmp_path):
    messages = [user(documents[0][:1], "Why?")]
    for key in ("wrong-key", ""):
        stranger = openai.OpenAI(base_url=server.url + "/v1", api_key=key or "-", max_retries=0)
        if not key:
            stranger = stranger.with_options(default_headers={"Authorization": ""})
        with pytest.raises(openai.AuthenticationError) as refused:
            stranger.chat.completions.create(model="optical", messages=messages, max_tokens=4)
        assert refused.value.status_code == 401
    assert client.chat.completions.create(model="optical", messages=messages, max_tokens=4).choices[0].message.content
    for path, status in (("/tokenize", 401), ("/v1/models", 401), ("/health", 200), ("/metrics", 200)):
        body = json.dumps({"prompt": "hi"}).encode() if path == "/tokenize" else None
        request = urllib.request.Request(server.url + path, body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                got = response.status
        except urllib.error.HTTPError as exc:
            got = exc.code
        assert got == status, path
    doc = tmp_path / "doc.txt"
    doc.write_text(cve_document(1500)[0])
    keyless = load_config("serve", TINY, config_sets()[1:])  # no serve.api_key_env: ask sends no key
    with pytest.raises(InputError, match="requires an API key"):
        ask(keyless, str(doc), "Why?", server=server.url)
    answer = ask(load_config("serve", TINY, config_sets()), str(doc), "Why?", server=server.url)
    assert answer.answer and answer.engine == "server"


def test_the_loop_guard_cuts_a_looping_answer_and_says_so(server, client):
    """The server's guard (serve.loop_guard: n-gram 30 in 90) ends the tiny chain's looping answer;
    the answer without it runs on from where it was cut. Streamed, the finish reason is the same."""
    messages = [{"role": "user", "content": LOOPING}]
    before = metric(server, "optical:loop_guard_cuts_total")
    cut = client.chat.completions.create(model="optical", messages=messages, max_tokens=400).choices[0]
    free = client.chat.completions.create(model="optical", messages=messages, max_tokens=400, extra_body=NO_GUARD)
    assert cut.finish_reason == "repetition" and free.choices[0].finish_reason == "length"
    assert free.choices[0].message.content.startswith(cut.message.content)
    assert len(cut.message.content) < len(free.choices[0].message.content)
    streamed = client.chat.completions.create(model="optical", messages=messages, max_tokens=400, stream=True)
    pieces, finish = [], None
    for chunk in streamed:
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert finish == "repetition" and "".join(pieces) == cut.message.content
    assert metric(server, "optical:loop_guard_cuts_total") == before + 2
    bad = {"vllm_xargs": {"loop_guard_ngram": 30, "loop_guard_window": 10}}
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="optical", messages=messages, max_tokens=4, extra_body=bad)


def test_the_optical_counters_and_a_log_line_per_request_without_its_content(server, client, documents):
    pages = documents[5][:2]
    question = "Which component is vulnerable in this record?"
    names = ("optical:pages_received_total", "optical:pages_encoded_total", "optical:encoder_seconds_total")
    before = {name: metric(server, name) for name in (*names, "optical:page_cache_hits_total")}
    first = client.chat.completions.create(model="optical", messages=[user(pages, question)], max_tokens=4)
    middle = {name: metric(server, name) for name in before}
    client.chat.completions.create(model="optical", messages=[user(pages, question)], max_tokens=4)
    after = {name: metric(server, name) for name in before}
    assert middle["optical:pages_received_total"] - before["optical:pages_received_total"] == 2
    assert middle["optical:pages_encoded_total"] - before["optical:pages_encoded_total"] == 2
    assert middle["optical:encoder_seconds_total"] > before["optical:encoder_seconds_total"]
    assert after["optical:page_cache_hits_total"] - middle["optical:page_cache_hits_total"] == 2
    assert after["optical:pages_encoded_total"] == middle["optical:pages_encoded_total"]  # reused, not re-encoded
    time.sleep(1)
    log = server.log.read_text()
    line = next(line for line in log.splitlines() if f"request {first.id}:" in line)
    assert re.search(r": 200, 2 pages, \d+ prompt tokens, \d+ answer tokens, finish length, [\d.]+ s", line), line
    assert question not in log and KEY not in log


def test_64_clients_at_once_get_the_answers_of_one_at_a_time(server, client, documents):
    """64 requests (16 distinct: 4 documents x 4 questions, each sent 4 times), half of them streamed,
    all in flight at once: no error, and each answer equals its request's answer sent alone."""
    questions = ["Which vendor is named?", "What can an attacker do?", "Which versions?", "Who reported it?"]
    distinct = [[user(documents[d][: 1 + d % 3], q)] for d in range(4) for q in questions]

    def send(messages: list, stream: bool) -> str:
        if stream:
            chunks = client.chat.completions.create(model="optical", messages=messages, max_tokens=12, stream=True)
            return "".join(choice.delta.content or "" for chunk in chunks for choice in chunk.choices)
        reply = client.chat.completions.create(model="optical", messages=messages, max_tokens=12)
        return reply.choices[0].message.content

    with ThreadPoolExecutor(64) as pool:
        together = list(pool.map(lambda n: send(distinct[n % 16], stream=n % 2 == 1), range(64)))
    alone = [send(messages, stream=False) for messages in distinct]  # one at a time
    differ = [n for n in range(64) if together[n] != alone[n % 16]]
    assert not differ, [(together[n], alone[n % 16]) for n in differ[:3]]
    assert len(set(alone)) > 4  # the answers depend on the pages and the question


def test_a_client_that_leaves_mid_stream_frees_its_sequence(server):
    body = {
        "model": "optical",
        "messages": [{"role": "user", "content": "Tell me a story"}],
        "max_tokens": 3000,
        "stream": True,
        "ignore_eos": True,
        **NO_GUARD,
    }
    before = metric(server, "vllm:generation_tokens_total")
    request = urllib.request.Request(
        server.url + "/v1/chat/completions",
        json.dumps(body).encode(),
        {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"},
    )
    response = urllib.request.urlopen(request, timeout=60)
    events = 0
    for line in response:
        events += line.startswith(b"data: ")
        if events >= 5:
            break
    assert metric(server, "vllm:num_requests_running") >= 1
    response.close()  # the client goes away with about 1,000 tokens still to write (the server's limit: 1,024)
    left = time.monotonic()
    while metric(server, "vllm:num_requests_running") > 0:
        assert time.monotonic() - left < 15, "the sequence kept running after its client left"
        time.sleep(0.5)
    written = metric(server, "vllm:generation_tokens_total") - before
    assert written < 500, written  # stopped where the client left, not at its 1,024-token limit


def test_the_load_script_measures_each_level_and_checks_the_answers(server, tmp_path):
    """scripts/bench_load.py against the running server, small: a row per level, every answer under
    load equal to its request's answer at one client (timings are not checked)."""
    out = tmp_path / "load.csv"
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "bench_load.py"), "--server", server.url]
        + ["--api-key-env", KEY_VARIABLE, "--levels", "1,4", "--items", "8", "--output", str(out)],
        capture_output=True,
        text=True,
        env=server.env,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["concurrency"] for row in rows] == ["1", "4"]
    assert all(row["errors"] == "0" and row["equal_to_sequential"] == "8" for row in rows), rows
    assert all(float(row["items_per_s"]) > 0 and row["load_before"] for row in rows)
    assert "| tiny | ours | 4 |" in done.stdout  # the Markdown table
