"""The middleware `optical serve` puts in front of vLLM's server (serving/middleware.py), against a
fake ASGI app: the key on every path but health and metrics, the loop guard's stop told as
finish_reason repetition (plain and streamed, a stream cut anywhere), 503 while draining, and a
log line per request that names pages and tokens, never the content."""

import asyncio
import json
import logging

import pytest

from optical_cli.models.loop_guard import LOOP_STOP_TOKEN_ID
from optical_cli.serving import middleware
from optical_cli.serving.middleware import OpticalMiddleware

SECRET = "the question nobody may log"


def answer(stop_reason, finish="stop"):
    return {
        "id": "chatcmpl-1",
        "choices": [{"index": 0, "message": {"content": "x"}, "finish_reason": finish, "stop_reason": stop_reason}],
        "usage": {"prompt_tokens": 140, "completion_tokens": 7},
    }


def events(stop_reason) -> bytes:
    chunks = [
        {"id": "chatcmpl-2", "choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": None}]},
        {"id": "chatcmpl-2", "choices": [{"index": 0, "delta": {"content": "b"}, "finish_reason": None}]},
        {
            "id": "chatcmpl-2",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "stop_reason": stop_reason}],
        },
    ]
    return b"".join(b"data: " + json.dumps(chunk).encode() + b"\n\n" for chunk in chunks) + b"data: [DONE]\n\n"


class FakeApp:
    """Answers every request with ``body`` (a stream when ``stream``), split into ``pieces`` sends."""

    def __init__(self, body: bytes, stream=False, pieces=1):
        self.body, self.stream, self.pieces, self.seen = body, stream, pieces, []

    async def __call__(self, scope, receive, send):
        message = await receive()
        self.seen.append(message.get("body", b""))
        kind = b"text/event-stream" if self.stream else b"application/json"
        headers = [(b"content-type", kind)] + (
            [] if self.stream else [(b"content-length", str(len(self.body)).encode())]
        )
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        size = -(-len(self.body) // self.pieces)
        parts = [self.body[i : i + size] for i in range(0, len(self.body), size)]
        for n, part in enumerate(parts):
            await send({"type": "http.response.body", "body": part, "more_body": n < len(parts) - 1})


def call(app, path="/v1/chat/completions", body=None, headers=(), method="POST"):
    sent = []

    async def receive():
        return {"type": "http.request", "body": json.dumps(body or {}).encode(), "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": [(k.encode(), v.encode()) for k, v in headers]}
    asyncio.run(app(scope, receive, send))
    status = sent[0]["status"]
    return status, dict(sent[0]["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


REQUEST = {
    "model": "optical",
    "messages": [
        {"role": "system", "content": "be brief"},
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "data:,"}}] * 2 + [{"type": "text", "text": SECRET}],
        },
    ],
}


def test_a_key_guards_every_path_but_health_and_metrics(monkeypatch):
    monkeypatch.setenv("VLLM_API_KEY", "k1")
    app = OpticalMiddleware(FakeApp(json.dumps(answer(None)).encode()))
    assert call(app, "/tokenize")[0] == 401
    assert call(app, "/tokenize", headers=[("authorization", "Bearer k2")])[0] == 401
    assert call(app, "/tokenize", headers=[("authorization", "Bearer k1")])[0] == 200
    assert call(app, "/health", method="GET")[0] == 200 and call(app, "/metrics", method="GET")[0] == 200
    assert call(app, "/v1/chat/completions", REQUEST)[0] == 401
    monkeypatch.delenv("VLLM_API_KEY")
    assert call(OpticalMiddleware(FakeApp(b"{}")), "/tokenize")[0] == 200  # no key, no check


def test_a_loop_guard_stop_is_told_as_finish_reason_repetition(monkeypatch, caplog):
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    caplog.set_level(logging.INFO, logger="vllm.optical")
    fake = FakeApp(json.dumps(answer(LOOP_STOP_TOKEN_ID)).encode())
    status, headers, body = call(OpticalMiddleware(fake), body=REQUEST)
    choice = json.loads(body)["choices"][0]
    assert status == 200 and (choice["finish_reason"], choice["stop_reason"]) == ("repetition", "loop_guard")
    assert int(headers[b"content-length"]) == len(body)  # the length follows the rewritten body
    assert json.loads(fake.seen[0]) == REQUEST  # the app got the request as it was sent
    plain = call(OpticalMiddleware(FakeApp(json.dumps(answer(None)).encode())), body=REQUEST)[2]
    assert json.loads(plain)["choices"][0]["finish_reason"] == "stop"  # any other stop is left as it is
    first = [r.getMessage() for r in caplog.records if r.getMessage().startswith("request chatcmpl-1")][0]
    assert "200, 2 pages, 140 prompt tokens, 7 answer tokens, finish repetition" in first
    assert all(SECRET not in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("pieces", [1, 3, 40])
def test_a_stream_is_relabelled_however_it_is_cut(monkeypatch, caplog, pieces):
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    caplog.set_level(logging.INFO, logger="vllm.optical")
    status, _, body = call(OpticalMiddleware(FakeApp(events(LOOP_STOP_TOKEN_ID), True, pieces)), body=REQUEST)
    payloads = [json.loads(e[6:]) for e in body.decode().split("\n\n") if e.startswith("data: {")]
    assert [p["choices"][0]["delta"].get("content") for p in payloads[:2]] == ["a", "b"]
    assert payloads[-1]["choices"][0]["finish_reason"] == "repetition" and body.endswith(b"data: [DONE]\n\n")
    assert any("2 pages, 2 answer chunks, finish repetition" in r.getMessage() for r in caplog.records)
    untouched = call(OpticalMiddleware(FakeApp(events(None), True, pieces)), body=REQUEST)[2]
    assert untouched == events(None)  # a stream without a guard stop passes byte for byte


def test_while_draining_new_requests_and_health_get_503(monkeypatch, tmp_path):
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    flag = tmp_path / "draining"
    monkeypatch.setenv(middleware.DRAIN_ENV, str(flag))
    app = OpticalMiddleware(FakeApp(json.dumps(answer(None)).encode()))
    assert call(app, body=REQUEST)[0] == 200
    flag.touch()
    status, headers, body = call(app, body=REQUEST)
    assert status == 503 and headers[b"retry-after"] and "shutting down" in json.loads(body)["error"]["message"]
    assert call(app, "/health", method="GET")[0] == 503 and call(app, "/metrics", method="GET")[0] == 200
