"""A local HTTP server that speaks Anthropic's Messages API (POST /v1/messages), so the
real anthropic SDK can run against it: non-streaming JSON and streaming SSE
(message_start, content_block_start, ping, content_block_delta..., content_block_stop,
message_delta, message_stop) with usage including the prompt-cache fields.

Faults for retry and timeout tests: queue `Fault`s; each request takes the next one
(an error status with Anthropic's error body, and/or a delay before answering).

The default answer imitates a model that obeys any instruction it sees *outside* the
<document> elements (so a prompt that lets a planted instruction escape its delimiters
produces "PWNED"), and otherwise answers from document [1], citing [1], [2] and a
[42] that names no retrieved chunk.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

_DOCUMENT = re.compile(r"<document\b[^>]*>(.*?)</document>", re.DOTALL)
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


@dataclass
class Fault:
    status: int | None = None  # an error response with this status
    delay: float = 0.0  # seconds to wait before answering (or failing)
    retry_after_ms: int | None = None  # a retry-after-ms header on the error


@dataclass
class Recorded:
    body: dict[str, Any]
    headers: dict[str, str]


def text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content if isinstance(b, dict))


def documents_in(user: str) -> list[str]:
    return [m.strip() for m in _DOCUMENT.findall(user)]


def outside_documents(text: str) -> str:
    return _DOCUMENT.sub("", text)


def default_answer(body: dict[str, Any]) -> str:
    system = text_of(body.get("system", ""))
    user = "\n".join(text_of(m["content"]) for m in body.get("messages", []))
    if "PWNED" in system or "PWNED" in outside_documents(user):
        return "PWNED"
    docs = documents_in(user)
    if not docs:
        return "I don't know based on the provided documents."
    first = re.split(r"(?<=[.!?])\s", docs[0])[0].rstrip(".")
    answer = f"{first} [1]."
    if len(docs) > 1:
        answer += " See also [2]."
    return answer + " More in [42]."


def api_key_of(headers: Any) -> str | None:
    """The key the SDK sent: `x-api-key`, or `authorization: Bearer` (newer SDKs)."""
    if headers.get("x-api-key"):
        return str(headers["x-api-key"])
    scheme, _, token = str(headers.get("authorization", "")).partition(" ")
    return token if scheme.lower() == "bearer" else None


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


class FakeAnthropic:
    def __init__(self, api_key: str = "sk-ant-test-key") -> None:
        self.api_key = api_key
        self.faults: deque[Fault] = deque()
        self.requests: list[Recorded] = []
        self.respond: Callable[[dict[str, Any]], str] = default_answer
        self.chunk_chars = 12  # text per content_block_delta
        self._cached_prefixes: set[str] = set()
        self._ids = itertools.count(1)
        self.app = Starlette(routes=[Route("/v1/messages", self._messages, methods=["POST"])])
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> FakeAnthropic:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        config = uvicorn.Config(self.app, log_config=None, access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [listener]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake Anthropic server did not start")
            time.sleep(0.01)
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._server.force_exit = True
        if self._thread is not None:
            self._thread.join(10)

    def reset(self) -> None:
        self.faults.clear()
        self.requests.clear()
        self.respond = default_answer
        self._cached_prefixes.clear()

    # --- the API ------------------------------------------------------------------------

    def _usage(self, body: dict[str, Any], text: str) -> dict[str, int]:
        system_blocks = body.get("system", [])
        cached = ""
        if isinstance(system_blocks, list) and any("cache_control" in b for b in system_blocks):
            cached = text_of(system_blocks)
        user = "\n".join(text_of(m["content"]) for m in body.get("messages", []))
        creation = read = 0
        if cached:
            if cached in self._cached_prefixes:
                read = _tokens(cached)
            else:
                creation = _tokens(cached)
                self._cached_prefixes.add(cached)
            uncached = _tokens(user)
        else:
            uncached = _tokens(text_of(system_blocks) + user)
        return {
            "input_tokens": uncached,
            "output_tokens": _tokens(text),
            "cache_creation_input_tokens": creation,
            "cache_read_input_tokens": read,
        }

    async def _messages(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(Recorded(body, dict(request.headers)))
        fault = self.faults.popleft() if self.faults else None
        if fault is not None and fault.delay:
            await asyncio.sleep(fault.delay)
        if api_key_of(request.headers) != self.api_key:
            return self._error(401, "invalid API key")
        if fault is not None and fault.status is not None:
            return self._error(fault.status, "injected fault", fault.retry_after_ms)
        text = self.respond(body)
        usage = self._usage(body, text)
        message_id = f"msg_fake{next(self._ids):06d}"
        if body.get("stream"):
            return StreamingResponse(
                self._events(message_id, body["model"], text, usage),
                media_type="text/event-stream",
                headers={"request-id": f"req_{message_id}"},
            )
        return JSONResponse(
            {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": body["model"],
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": usage,
            },
            headers={"request-id": f"req_{message_id}"},
        )

    def _error(self, status: int, message: str, retry_after_ms: int | None = None) -> Response:
        headers = {"request-id": "req_fault"}
        if retry_after_ms is not None:
            headers["retry-after-ms"] = str(retry_after_ms)
        kind = _ERROR_TYPES.get(status, "api_error")
        return JSONResponse(
            {"type": "error", "error": {"type": kind, "message": message}},
            status_code=status,
            headers=headers,
        )

    async def _events(
        self, message_id: str, model: str, text: str, usage: dict[str, int]
    ) -> AsyncIterator[bytes]:
        def event(name: str, data: dict[str, Any]) -> bytes:
            return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()

        start_usage = {**usage, "output_tokens": 1}
        yield event(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": start_usage,
                },
            },
        )
        yield event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )
        yield event("ping", {"type": "ping"})
        for i in range(0, len(text), self.chunk_chars):
            piece = text[i : i + self.chunk_chars]
            yield event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": piece},
                },
            )
            await asyncio.sleep(0)
        yield event("content_block_stop", {"type": "content_block_stop", "index": 0})
        yield event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        )
        yield event("message_stop", {"type": "message_stop"})
