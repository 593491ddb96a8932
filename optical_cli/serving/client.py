"""A small client of an OpenAI-compatible server running the optical model (``optical serve``).

Plain HTTP (the standard library): ``GET /v1/models``, ``POST /tokenize`` (vLLM's: the prompt a
chat request becomes, after the chat template and the pages' expansion, without running the
model) and ``POST /v1/chat/completions`` with the answer streamed as server-sent events.

Failures are the user's to fix and say so in one line: nothing listening at the URL, a server that
refuses a request (its 4xx message is passed on), a server that is not the optical model.
"""

from __future__ import annotations

import base64
import json
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from ..errors import InputError, RunFailed

CONNECT_TIMEOUT_S = 10.0  # the quick calls (models, tokenize): a server that does not answer them is not up


@dataclass
class ChatAnswer:
    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    first_token_s: float  # from sending the request to the first answer text (upload, queue, encoding, prefill)
    total_s: float
    finish_reason: str = ""  # stop, length or repetition (the server's loop guard ended it)


def png_data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def page_messages(pngs: list[bytes], question: str) -> list[dict]:
    """One user turn: the pages as ``image_url`` parts (PNG data URLs) in reading order, then the question."""
    parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": png_data_url(png)}} for png in pngs]
    parts.append({"type": "text", "text": question})
    return [{"role": "user", "content": parts}]


class OpenAIServer:
    """One server at ``url`` (``http://host:port``, with or without a trailing ``/v1``)."""

    def __init__(
        self, url: str, timeout_s: float = 600.0, api_key: str | None = None, key_setting: str = "serve.api_key_env"
    ):
        url = url.rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise InputError(f"--server {url}: write the server's URL as http://HOST:PORT")
        self.root = url[: -len("/v1")] if url.endswith("/v1") else url
        self.timeout_s = timeout_s
        self.headers = {"Content-Type": "application/json"}
        self.key_setting = key_setting  # the config key a 401 tells the user to set
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"

    # -- transport -------------------------------------------------------------------------
    def _open(self, path: str, body: dict | None, timeout: float):
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(self.root + path, data=data, headers=self.headers)
        try:
            return urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            raise self._refusal(path, exc) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, (socket.timeout, TimeoutError)):
                raise RunFailed(f"the server at {self.root} did not answer {path} within {timeout:.0f} s") from None
            raise InputError(
                f"nothing answers at {self.root} ({reason}); start the server with `optical serve -c CONFIG` "
                "or check --server"
            ) from None

    def _refusal(self, path: str, exc: urllib.error.HTTPError) -> Exception:
        try:
            payload = json.loads(exc.read().decode("utf-8", "replace"))
            message = payload.get("error", payload).get("message") if isinstance(payload, dict) else str(payload)
        except (ValueError, AttributeError, OSError):
            message = exc.reason
        message = " ".join(str(message).split())
        if exc.code == 401:
            return InputError(
                f"the server at {self.root} requires an API key and did not accept "
                + ("the one sent" if "Authorization" in self.headers else "a request without one")
                + f": set {self.key_setting} to the name of the variable holding the server's key"
            )
        if exc.code == 404 and path in ("/tokenize", "/v1/models"):
            return InputError(f"{self.root} has no {path}: it is not a vLLM server running the optical model")
        if 400 <= exc.code < 500:
            return InputError(f"the server at {self.root} refused the request ({exc.code}): {message}")
        return RunFailed(f"the server at {self.root} failed ({exc.code}): {message}")

    def _json(self, path: str, body: dict | None = None, timeout: float = CONNECT_TIMEOUT_S) -> dict:
        with self._open(path, body, timeout) as response:
            try:
                return json.loads(response.read().decode("utf-8"))
            except ValueError:
                raise InputError(
                    f"{self.root}{path} did not answer in JSON: is it an OpenAI-compatible server?"
                ) from None

    # -- calls -----------------------------------------------------------------------------
    def models(self) -> list[dict]:
        """The served models (``/v1/models``: the base model and, for each LoRA, a ``parent``)."""
        return list(self._json("/v1/models").get("data", []))

    def tokenize(self, model: str, messages: list[dict]) -> list[int]:
        """The token ids ``messages`` become on the server (chat template, pages expanded)."""
        body = {"model": model, "messages": messages, "add_generation_prompt": True}
        return list(self._json("/tokenize", body, timeout=max(CONNECT_TIMEOUT_S, self.timeout_s))["tokens"])

    def chat(
        self,
        model: str,
        messages: list[dict],
        *,
        max_tokens: int,
        temperature: float,
        seed: int | None = None,
        on_text: Callable[[str], None] | None = None,
        extra: dict | None = None,
    ) -> ChatAnswer:
        """A chat completion, streamed: ``on_text`` gets each piece of the answer as it arrives.
        ``extra``: more fields of the request body (vLLM's own, e.g. ``vllm_xargs``)."""
        body: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if seed is not None:
            body["seed"] = seed
        body.update(extra or {})
        start = time.perf_counter()
        first: float | None = None
        pieces: list[str] = []
        usage: dict = {}
        finish = ""
        with self._open("/v1/chat/completions", body, self.timeout_s) as response:
            for event in _events(response):
                if event.get("error"):
                    raise RunFailed(f"the server at {self.root} failed mid-answer: {event['error'].get('message')}")
                usage = event.get("usage") or usage
                for choice in event.get("choices", []):
                    finish = choice.get("finish_reason") or finish
                    piece = (choice.get("delta") or {}).get("content") or ""
                    if piece:
                        first = first if first is not None else time.perf_counter() - start
                        pieces.append(piece)
                        if on_text is not None:
                            on_text(piece)
        total = time.perf_counter() - start
        return ChatAnswer(
            "".join(pieces),
            usage.get("prompt_tokens"),
            usage.get("completion_tokens"),
            round(first if first is not None else total, 4),
            round(total, 4),
            str(finish),
        )


def _events(response) -> Iterator[dict]:
    """The JSON payloads of a server-sent event stream, until ``[DONE]``."""
    for raw in response:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            return
        try:
            yield json.loads(data)
        except ValueError:
            raise RunFailed(f"the server sent an event that is not JSON: {data[:200]}") from None
