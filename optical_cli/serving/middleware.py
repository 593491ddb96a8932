"""The ASGI middleware ``optical serve`` puts in front of vLLM's OpenAI server (``--middleware``).

It runs in vLLM's API server process, outermost, and does four things an operator relies on:

- **A log line per request, never its content**: ``request ID: STATUS, P pages, N prompt tokens,
  M answer tokens, finish REASON, S s`` (pages are the request's image parts; tokens from the
  answer's ``usage``, or for a stream without usage the answer's chunks).
- **The loop guard's finish reason.** The guard (``models/loop_guard.py``) ends a looping answer
  with a stop token of its own; vLLM reports that as ``finish_reason: stop`` with the token as
  ``stop_reason``. Here it becomes ``finish_reason: repetition`` (vLLM's own name for a repetition
  stop), ``stop_reason: loop_guard``, in plain and streamed answers alike.
- **The key on every path.** vLLM's own check covers ``/v1/...``; with a key (``VLLM_API_KEY``)
  this covers the rest (``/tokenize``, ``/detokenize``, ...) but ``/health``, ``/ping``,
  ``/metrics`` and ``/version``, which probes and scrapers reach without one.
- **Draining.** Once the supervisor starts stopping the server (its flag file, :data:`DRAIN_ENV`),
  new requests get 503 with ``Retry-After`` and ``/health`` answers 503, so a load balancer sends
  them elsewhere while the requests in flight finish.

Pure ASGI (dicts in, dicts out): no import of vLLM, Starlette or FastAPI, so it is tested alone.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import time

from ..models.loop_guard import LOOP_STOP_TOKEN_ID, REPETITION

DRAIN_ENV = "OPTICAL_DRAIN_FILE"  # a path; while it exists the server is stopping
KEY_ENV = "VLLM_API_KEY"
OPEN_PATHS = ("/health", "/ping", "/metrics", "/version")
COMPLETION_PATHS = ("/v1/chat/completions", "/v1/completions")
PAGE_PART = re.compile(rb'"type"\s*:\s*"(?:image_url|image|input_image|image_pil|image_embeds)"')
LOOP_GUARD_STOP = "loop_guard"

# a child of vLLM's logger: vLLM's log handlers print it, in its format
log = logging.getLogger("vllm.optical")


def count_pages(body: bytes) -> int:
    """The page images of a chat request: its parts of an image type, counted in the raw JSON (a scan,
    not a parse: a request of 200 pages is tens of MB, and vLLM parses it anyway). Text that spells such
    a part is escaped in JSON (``\\"type\\"``) and is not counted."""
    return len(PAGE_PART.findall(body))


def relabel(payload: dict) -> bool:
    """A loop-guard stop in ``payload``'s choices told as ``finish_reason: repetition``; True if any."""
    changed = False
    for choice in payload.get("choices") or []:
        if isinstance(choice, dict) and choice.get("stop_reason") == LOOP_STOP_TOKEN_ID:
            choice["finish_reason"], choice["stop_reason"] = REPETITION, LOOP_GUARD_STOP
            changed = True
    return changed


class RequestRecord:
    """What the log line says about one completion request."""

    def __init__(self, client_id: str | None, pages: int):
        self.start = time.perf_counter()
        self.id = client_id
        self.pages = pages
        self.status = 0
        self.usage: dict = {}
        self.finish: list[str] = []
        self.chunks = 0

    def note(self, payload: dict) -> None:
        self.id = self.id or payload.get("id")
        self.usage = payload.get("usage") or self.usage
        for choice in payload.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            if choice.get("finish_reason"):
                self.finish.append(str(choice["finish_reason"]))
            delta = choice.get("delta")
            if isinstance(delta, dict) and (delta.get("content") or delta.get("reasoning_content")):
                self.chunks += 1

    def line(self) -> str:
        parts = [str(self.status), f"{self.pages} pages"]
        if self.usage.get("prompt_tokens") is not None:
            parts.append(f"{self.usage['prompt_tokens']} prompt tokens")
        if self.usage.get("completion_tokens") is not None:
            parts.append(f"{self.usage['completion_tokens']} answer tokens")
        elif self.chunks:
            parts.append(f"{self.chunks} answer chunks")
        if self.finish:
            parts.append("finish " + ",".join(sorted(set(self.finish))))
        parts.append(f"{time.perf_counter() - self.start:.2f} s")
        return f"request {self.id or '-'}: " + ", ".join(parts)


class OpticalMiddleware:
    def __init__(self, app):
        self.app = app
        key = os.environ.get(KEY_ENV, "").strip()
        self.key_hash = hashlib.sha256(key.encode("utf-8")).digest() if key else None
        self.drain_file = os.environ.get(DRAIN_ENV) or None
        self.pages_received = _pages_counter()

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "").removeprefix(scope.get("root_path", ""))
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope.get("headers", [])}
        if self.drain_file and os.path.exists(self.drain_file) and path not in ("/metrics", "/version"):
            return await _refuse(send, 503, "the server is shutting down; send the request to another instance", True)
        if self._needs_key(scope, path) and not self._authorized(headers):
            return await _refuse(send, 401, "Unauthorized: send the API key as 'Authorization: Bearer KEY'")
        if scope.get("method") == "POST" and path in COMPLETION_PATHS:
            return await self._completion(scope, receive, send, headers.get("x-request-id"))
        return await self.app(scope, receive, send)

    def _needs_key(self, scope, path: str) -> bool:
        return self.key_hash is not None and scope.get("method") != "OPTIONS" and not path.startswith(OPEN_PATHS)

    def _authorized(self, headers: dict) -> bool:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(hashlib.sha256(token.strip().encode("utf-8")).digest(), self.key_hash)

    async def _completion(self, scope, receive, send, client_id: str | None):
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay([message], receive), send)
            body += message.get("body", b"")
            more = message.get("more_body", False)
        record = RequestRecord(client_id, count_pages(body))
        self.pages_received(record.pages)
        replay = _replay([{"type": "http.request", "body": body, "more_body": False}], receive)
        answer = _Answer(send, record)
        try:
            await self.app(scope, replay, answer.send)
        finally:
            log.info(record.line())


def _pages_counter():
    """``optical:pages_received`` in vLLM's API server; nothing where prometheus_client is missing."""
    try:
        from ..engines.vllm_metrics import pages_received  # noqa: PLC0415 - prometheus_client comes with vLLM only
    except ImportError:
        return lambda pages: None
    return pages_received


def _replay(messages: list[dict], receive):
    """A ``receive`` that gives ``messages`` first, then the client's own (its disconnect among them)."""
    pending = list(messages)

    async def replayed():
        return pending.pop(0) if pending else await receive()

    return replayed


class _Answer:
    """The app's answer on its way out: a plain JSON answer is held until whole (its length may
    change), a stream is passed on event by event; both relabelled and noted in the record."""

    def __init__(self, send, record: RequestRecord):
        self._send, self.record = send, record
        self.start: dict | None = None
        self.streaming = False
        self.held = b""
        self.pending = b""

    async def send(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.record.status = int(message.get("status", 0))
            content_type = dict(message.get("headers") or []).get(b"content-type", b"")
            self.streaming = content_type.startswith(b"text/event-stream")
            if self.streaming:
                return await self._send(message)
            self.start = message
            return None
        if message["type"] != "http.response.body":
            return await self._send(message)
        if self.streaming:
            return await self._stream(message)
        self.held += message.get("body", b"")
        if message.get("more_body", False):
            return None
        return await self._flush()

    async def _stream(self, message: dict) -> None:
        data = self.pending + message.get("body", b"")
        events, _, self.pending = data.rpartition(b"\n\n")
        out = b"".join(self._event(event) + b"\n\n" for event in events.split(b"\n\n")) if events else b""
        if not message.get("more_body", False):
            out, self.pending = out + self.pending, b""
        await self._send({"type": "http.response.body", "body": out, "more_body": message.get("more_body", False)})

    def _event(self, event: bytes) -> bytes:
        if not event.startswith(b"data: ") or event == b"data: [DONE]":
            return event
        try:
            payload = json.loads(event[len(b"data: ") :])
        except ValueError:
            return event
        if not isinstance(payload, dict):
            return event
        changed = relabel(payload)
        self.record.note(payload)
        return b"data: " + json.dumps(payload).encode("utf-8") if changed else event

    async def _flush(self) -> None:
        body = self.held
        try:
            payload = json.loads(body) if body else None
        except ValueError:
            payload = None
        if isinstance(payload, dict):
            if relabel(payload):
                body = json.dumps(payload).encode("utf-8")
            self.record.note(payload)
        start = dict(self.start or {"type": "http.response.start", "status": 500, "headers": []})
        start["headers"] = [
            (name, str(len(body)).encode("latin-1") if name.lower() == b"content-length" else value)
            for name, value in start.get("headers") or []
        ]
        await self._send(start)
        await self._send({"type": "http.response.body", "body": body, "more_body": False})


async def _refuse(send, status: int, message: str, retry: bool = False) -> None:
    body = json.dumps({"error": {"message": message, "type": "optical", "code": status}}).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode("latin-1"))]
    if retry:
        headers += [(b"retry-after", b"5"), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
