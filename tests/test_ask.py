"""`optical ask` without vLLM: the hf engine on the tiny chain (text, PDF, a render run directory,
stdin), its agreement with bench longbench's optical condition, and the --server client against a
fake OpenAI-compatible server and a closed port. The real server is tests/test_vllm_server.py."""

import base64
import csv
import io
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import REPO_ROOT
from PIL import Image
from test_documents import make_pdf
from typer.testing import CliRunner

from optical_cli.bench.data import load_items
from optical_cli.bench.prompts import question_block
from optical_cli.cli import app
from optical_cli.models.tokenizers import QWEN_TIKTOKEN, load_chat_tokenizer
from optical_cli.models.vlm import build_layout
from optical_cli.prompts import AFTER_DOCUMENT, PREAMBLE

runner = CliRunner()
TINY = str(REPO_ROOT / "configs" / "tiny" / "serve.yaml")
DOCUMENT = (
    "The lighthouse keeper counted ships every evening and wrote their names in a ledger. "
    "In the winter of 1887 the ledger lists forty-one ships, three of them lost in one storm.\n\n"
) * 30


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTICAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(REPO_ROOT)


def ask_json(*args: str, input: str | None = None) -> dict:
    result = runner.invoke(app, ["ask", *args, "-c", TINY, "--json"], input=input)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_ask_reads_a_text_file_as_pages_and_streams_the_answer(tmp_path):
    doc = tmp_path / "ledger.txt"
    doc.write_text(DOCUMENT)
    answer = ask_json(str(doc), "How many ships were lost?")
    assert answer["engine"] == "hf" and answer["random_weights"] and answer["answer"]
    assert answer["pages"] == answer["document_pages"] > 1 and answer["vision_tokens"] == 64 * answer["pages"]
    assert answer["document_tokens"] > answer["vision_tokens"]  # compression: fewer positions than text tokens
    assert set(answer["timings"]) >= {"render_s", "encode_s", "prefill_s", "decode_s", "total_s"}
    assert answer["finish_reason"] in ("stop", "length", "repetition")  # repetition: the loop guard cut it
    streamed = runner.invoke(app, ["ask", str(doc), "How many ships were lost?", "-c", TINY])
    assert streamed.exit_code == 0 and streamed.stdout == answer["answer"] + "\n"  # the same greedy answer
    assert "RANDOM WEIGHTS" in streamed.stderr and f"{answer['pages']} of {answer['document_pages']} pages" in (
        streamed.stderr
    )
    few = ask_json(str(doc), "How many ships were lost?", "--set", "serve.max_pages=2", "--select", "middle")
    assert few["pages"] == 2 and few["document_pages"] == answer["document_pages"]  # middle truncation


def test_ask_takes_a_pdf_a_render_run_and_stdin(tmp_path):
    pdf = make_pdf(tmp_path / "report.pdf", text=DOCUMENT[:1500], pages=2)
    from_pdf = ask_json(str(pdf), "What is this about?")
    assert from_pdf["pages"] >= 1 and from_pdf["document"] == str(pdf)
    pdf_pages = ask_json(str(pdf), "What is this about?", "--set", "render.source=pdf-pages")
    assert pdf_pages["pages"] == 2  # the PDF's own two pages
    rendered = tmp_path / "rendered"
    (tmp_path / "doc.txt").write_text(DOCUMENT)
    done = runner.invoke(app, ["render", str(tmp_path / "doc.txt"), "-o", str(rendered), "--set", "render.mode=tiny"])
    assert done.exit_code == 0, done.output
    from_run = ask_json(str(rendered), "What is this about?")
    assert from_run["pages"] == len(list(rendered.glob("page_*.png")))
    from_stdin = ask_json("-", "What is this about?", input=DOCUMENT)
    from_file = ask_json(str(tmp_path / "doc.txt"), "What is this about?")
    assert from_stdin["answer"] == from_file["answer"] and from_stdin["pages"] == from_file["pages"]


def test_ask_gives_bench_longbenchs_optical_answer_on_the_same_item(tmp_path):
    item = load_items(str(REPO_ROOT / "tests" / "data" / "longbench_fixture.jsonl"))[0]
    bench = runner.invoke(
        app,
        [
            "bench",
            "longbench",
            "-c",
            "configs/tiny/longbench.yaml",
            "--ids",
            item.id,
            "--conditions",
            "optical",
            "--set",
            "bench.temperature=0",
            "--set",
            "vlm.random.initializer_range=0.5",  # the tiny serve config's spread
            "-o",
            str(tmp_path / "bench"),
        ],
    )
    assert bench.exit_code == 0, bench.output
    with open(tmp_path / "bench" / "items.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    doc = tmp_path / "item.txt"
    doc.write_text(item.context)
    # the tiny bench config reads 1 page and answers in 8 tokens; the question is the benchmark's
    answer = ask_json(
        str(doc),
        question_block(item),
        "--set",
        "serve.max_pages=1",
        "--set",
        "ask.max_new_tokens=8",
        "--select",
        "middle",
    )
    assert answer["answer"] == row["output"] and answer["input_tokens"] == int(row["input_tokens"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.txt", "Why?"], "not found"),
        (["configs/tiny/serve.yaml", "   "], "question is empty"),
        (["configs", "Why?"], "layout.jsonl"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    result = runner.invoke(app, ["ask", *args, "-c", TINY])
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_server_where_nothing_listens_is_exit_2_in_seconds(tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text(DOCUMENT)
    start = time.perf_counter()
    result = runner.invoke(app, ["ask", str(doc), "Why?", "-c", TINY, "--server", f"http://127.0.0.1:{free_port()}"])
    elapsed = time.perf_counter() - start
    assert result.exit_code == 2 and "nothing answers" in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and elapsed < 30


class FakeServer:
    """An OpenAI-compatible server in a thread: /v1/models, vLLM's /tokenize, and a streamed chat answer."""

    def __init__(self, tokens=None, answer=("The ", "keeper ", "counted."), refuse: str | None = None, key=None):
        self.tokens, self.answer, self.refuse, self.key = tokens, answer, refuse, key
        self.requests: list[dict] = []
        self.authorizations: list[str | None] = []  # what each request sent (a key server checks it, as vLLM does)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, payload: bytes, kind="application/json"):
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _unauthorized(self) -> bool:
                sent = self.headers.get("Authorization")
                fake.authorizations.append(sent)
                if fake.key is None or sent == f"Bearer {fake.key}":
                    return False
                self._send(401, json.dumps({"error": "Unauthorized"}).encode())
                return True

            def do_GET(self):
                if not self._unauthorized():
                    self._send(200, json.dumps({"data": [{"id": "optical", "object": "model"}]}).encode())

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self._unauthorized():
                    return
                fake.requests.append({"path": self.path, **body})
                if self.path == "/tokenize":
                    return self._send(200, json.dumps({"tokens": fake.tokens, "count": len(fake.tokens)}).encode())
                if fake.refuse:
                    error = {"error": {"message": fake.refuse, "type": "BadRequestError", "code": 400}}
                    return self._send(400, json.dumps(error).encode())
                events = [{"choices": [{"delta": {"content": piece}}]} for piece in fake.answer]
                events.append({"choices": [], "usage": {"prompt_tokens": len(fake.tokens), "completion_tokens": 3}})
                stream = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
                self._send(200, stream.encode(), "text/event-stream")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def expected_tokens(pages: int, question: str) -> list[int]:
    tokenizer = load_chat_tokenizer(QWEN_TIKTOKEN)
    return build_layout(tokenizer, AFTER_DOCUMENT + question, [64] * pages, preamble=PREAMBLE).input_ids.tolist()


def test_ask_server_sends_pages_as_png_data_urls_and_streams_the_answer(tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text(DOCUMENT)
    pages = ask_json(str(doc), "Why?")["pages"]
    server = FakeServer(tokens=expected_tokens(pages, "Why?"))
    try:
        result = runner.invoke(app, ["ask", str(doc), "Why?", "-c", TINY, "--server", server.url])
        assert result.exit_code == 0, result.output
        assert result.stdout == "The keeper counted.\n"
        chat = [r for r in server.requests if r["path"] == "/v1/chat/completions"][0]
        assert chat["model"] == "optical" and chat["stream"] and chat["temperature"] == 0.0
        (turn,) = chat["messages"]
        images = [part for part in turn["content"] if part["type"] == "image_url"]
        assert len(images) == pages and turn["content"][-1] == {"type": "text", "text": "Why?"}
        png = base64.b64decode(images[0]["image_url"]["url"].removeprefix("data:image/png;base64,"))
        assert Image.open(io.BytesIO(png)).size == (512, 512)  # a tiny-mode page
        answer = ask_json(str(doc), "Why?", "--server", server.url)
        assert answer["engine"] == "server" and answer["answer"] == "The keeper counted."
        assert answer["vision_tokens"] == 64 * pages and answer["input_tokens"] == len(server.tokens)
    finally:
        server.close()


@pytest.mark.parametrize("wrong", ["mode", "template"])
def test_a_server_that_reads_pages_otherwise_is_a_clear_error_not_an_answer(tmp_path, wrong):
    doc = tmp_path / "doc.txt"
    doc.write_text(DOCUMENT[:400])
    tokens = expected_tokens(1, "Why?")
    if wrong == "mode":  # a server in base mode: 256 tokens a page
        pad = 151655
        tokens = [t for token in tokens for t in ([pad] * 4 if token == pad else [token])]
    else:  # Qwen's own template: no document tags around the pages
        tokens = tokens[:3] + tokens[30:]
    server = FakeServer(tokens=tokens)
    try:
        result = runner.invoke(app, ["ask", str(doc), "Why?", "-c", TINY, "--server", server.url])
        assert result.exit_code == 2 and "not" in result.stderr and "optical" in result.stderr, result.output
        assert not [r for r in server.requests if r["path"] == "/v1/chat/completions"]  # nothing was asked
        assert result.stdout == ""
    finally:
        server.close()


def test_a_request_the_server_refuses_is_exit_2_with_its_message(tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text(DOCUMENT[:400])
    server = FakeServer(tokens=expected_tokens(1, "Why?"), refuse="At most 8 image(s) may be provided in one prompt.")
    try:
        result = runner.invoke(app, ["ask", str(doc), "Why?", "-c", TINY, "--server", server.url])
        assert result.exit_code == 2 and "refused the request (400): At most 8 image(s)" in result.stderr
    finally:
        server.close()


KEYED_RUNS = {  # a command that asks a server, and the config key naming the variable that holds its key
    "ask": (["ask", "{doc}", "Why?", "-c", TINY], "serve.api_key_env"),
    "bench": (
        ["bench", "ruler", "-c", str(REPO_ROOT / "configs" / "tiny" / "ruler.yaml"), "--lengths", "1024"]
        + ["--tasks", "niah_single_1", "--num-samples", "1", "-o", "{run}"],
        "bench.server_api_key_env",
    ),
}


@pytest.mark.parametrize("command", sorted(KEYED_RUNS))
def test_a_keyed_server_gets_the_key_the_config_names_and_a_missing_key_says_which_setting(
    command, tmp_path, monkeypatch
):
    (tmp_path / "doc.txt").write_text(DOCUMENT[:400])
    args, setting = KEYED_RUNS[command]
    args = [arg.format(doc=tmp_path / "doc.txt", run=tmp_path / "bench-run") for arg in args]
    server = FakeServer(tokens=[1, 2, 3], key="k-123")
    try:
        keyless = runner.invoke(app, [*args, "--server", server.url])
        assert keyless.exit_code == 2 and f"set {setting} to the name" in keyless.stderr, keyless.output
        unset = runner.invoke(app, [*args, "--server", server.url, "--set", f"{setting}=NO_SUCH_KEY_VARIABLE"])
        assert unset.exit_code == 2 and "NO_SUCH_KEY_VARIABLE is not set" in unset.stderr, unset.output
        monkeypatch.setenv("OPTICAL_FAKE_KEY", "k-123")
        server.authorizations.clear()
        keyed = runner.invoke(app, [*args, "--server", server.url, "--set", f"{setting}=OPTICAL_FAKE_KEY"])
        # past the key: the fake's tokens are no optical model's, so the layout check refuses it
        refused = re.search(r"not (the optical model of )?this config", keyed.stderr)
        assert keyed.exit_code == 2 and refused, keyed.output
        assert server.authorizations and set(server.authorizations) == {"Bearer k-123"}
        assert "k-123" not in keyed.output
        assert not (tmp_path / "bench-run" / "items.jsonl").exists()
    finally:
        server.close()
