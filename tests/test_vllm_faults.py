"""The server as an operator runs it, faults included (the session's server, conftest.py; these run
last: they kill it, start it again on the same port, and stop it). Run in .venv-vllm: `make test-vllm`.

- ``kill -9`` of `optical serve` while 16 clients wait for long answers (8 being written, 8 queued:
  the tiny config's ``vllm.max_num_seqs``): every client fails within 10 s, no
  process of the server is left after 20 s (its session is empty: the API server, the engine core,
  its worker, multiprocessing's resource tracker), the port is free, and a new `optical serve` on
  the same port answers.
- SIGTERM while 4 answers are being written: a new request gets 503, the 4 finish whole, the
  server exits 0 and leaves nothing behind.
"""

import json
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip("vllm")

from vllm_servers import KEY

HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}


def long_answer(tokens: int) -> dict:
    """A streamed request that writes exactly ``tokens`` tokens (no stop, no loop guard)."""
    return {
        "model": "optical",
        "messages": [{"role": "user", "content": "Tell me a story"}],
        "max_tokens": tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
        "vllm_xargs": {"loop_guard_ngram": 0},
    }


class StreamingClient(threading.Thread):
    """Sends one streamed request and reads it to the end; records when it started answering, how it
    ended (``done``, or the exception), when, and the usage it was told."""

    def __init__(self, url: str, body: dict):
        super().__init__(daemon=True)
        self.url, self.body = url, body
        self.answering = threading.Event()
        self.outcome: str | None = None
        self.ended_at: float | None = None
        self.usage: dict = {}
        self.finish: str | None = None

    def run(self):
        request = urllib.request.Request(self.url + "/v1/chat/completions", json.dumps(self.body).encode(), HEADERS)
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                for line in response:
                    if line.startswith(b"data: {"):
                        self.answering.set()
                        event = json.loads(line[6:])
                        self.usage = event.get("usage") or self.usage
                        for choice in event.get("choices", []):
                            self.finish = choice.get("finish_reason") or self.finish
            self.outcome = "done" if self.finish else "ended without a finish reason"
        except Exception as exc:  # noqa: BLE001 - any failure is what is recorded
            self.outcome = f"{type(exc).__name__}: {exc}"
        finally:
            self.ended_at = time.monotonic()
            self.answering.set()


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def post(url: str, body: dict, timeout: float = 120) -> tuple[int, dict]:
    request = urllib.request.Request(url + "/v1/chat/completions", json.dumps(body).encode(), HEADERS)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_kill_9_under_load_fails_clients_fast_leaves_nothing_and_a_restart_answers(optical_server):
    server = optical_server.ensure_up()
    supervisor = server.process.pid
    before = server.pids()
    assert len(before) >= 4, before  # optical serve, vLLM's API server, its engine core and worker (at least)
    clients = [StreamingClient(server.url, long_answer(1000)) for _ in range(16)]  # 8 answered at once, 8 queued
    for client in clients:
        client.start()
    deadline = time.monotonic() + 300
    while sum(client.answering.is_set() for client in clients) < 8:
        assert time.monotonic() < deadline, "the server did not start answering"
        time.sleep(0.2)
    assert all(client.outcome is None for client in clients)  # all still being answered or waiting
    os.kill(supervisor, signal.SIGKILL)
    killed = time.monotonic()
    for client in clients:
        client.join(15)
    late = [round(c.ended_at - killed, 1) for c in clients if c.ended_at is None or c.ended_at - killed > 10]
    print(f"\nclients failed {max(c.ended_at - killed for c in clients):.2f} s after kill -9 at the latest")
    assert not late and all(client.outcome != "done" for client in clients), [c.outcome for c in clients]
    server.process.wait(10)
    while server.pids() and time.monotonic() - killed < 20:
        time.sleep(0.2)
    left = server.pids()
    print(f"no process of the server left {time.monotonic() - killed:.2f} s after kill -9 (was {len(before)})")
    assert not left, [open(f"/proc/{pid}/cmdline").read() for pid in left]
    assert port_is_free(server.port)
    started = server.start()  # the same port
    print(f"restarted on port {server.port}: healthy after {started:.0f} s")
    status, reply = post(
        server.url, {"model": "optical", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    )
    assert status == 200 and reply["choices"][0]["message"]["content"]


def test_sigterm_drains_the_requests_in_flight_then_exits_0(optical_server):
    server = optical_server.ensure_up()
    clients = [StreamingClient(server.url, long_answer(200)) for _ in range(4)]
    for client in clients:
        client.start()
    assert all(client.answering.wait(300) for client in clients)
    server.process.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    time.sleep(0.5)
    status, reply = post(server.url, long_answer(4) | {"stream": False}, timeout=30)
    assert status == 503 and "shutting down" in reply["error"]["message"], (status, reply)
    assert server.process.wait(120) == 0
    for client in clients:
        client.join(30)
    print(f"\ndrained and exited 0 {time.monotonic() - stopped:.1f} s after SIGTERM")
    assert [c.outcome for c in clients] == ["done"] * 4
    assert all(c.finish == "length" and c.usage.get("completion_tokens") == 200 for c in clients)
    assert not server.pids() and port_is_free(server.port)
