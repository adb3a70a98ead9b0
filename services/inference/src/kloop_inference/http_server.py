"""A small HTTP/1.1 server on asyncio + httptools (the parser uvicorn uses).

Why not uvicorn: measured on the target machine, a bare ASGI app on uvicorn costs ~45 us
of CPU per request; this server ~10 us. With a budget of ~130 us per inference request
that difference is a third of it.

What it does: keep-alive and pipelining (one request at a time per connection, answered
in order), Content-Length and chunked request bodies, `Expect: 100-continue`, limits on
header and body size (431 / 413, then the connection closes), 400 on malformed requests,
idle keep-alive timeout, graceful stop (in-flight requests finish; idle connections
close). What it does not: TLS, HTTP/2, upgrades, response streaming (nothing here needs
them; TLS terminates at the ingress).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import cast

import httptools
import orjson

from kloop_core.logging import get_logger

log = get_logger(__name__)

MAX_HEADER_BYTES = 64 * 1024
# Parsed requests a client may queue up by pipelining before we stop reading from it.
MAX_PIPELINED = 32
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}


@dataclass(slots=True)
class HttpRequest:
    method: str
    path: str
    # Lower-case names; a repeated header keeps its last value.
    headers: dict[bytes, bytes]
    body: bytes


@dataclass(slots=True)
class HttpResponse:
    status: int
    body: bytes
    content_type: bytes = b"application/json"
    headers: tuple[tuple[bytes, bytes], ...] = ()


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


def encode_response(response: HttpResponse, keep_alive: bool, with_body: bool = True) -> bytes:
    head = [
        b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n"
        % (
            response.status,
            _REASONS.get(response.status, b"Unknown"),
            response.content_type,
            len(response.body),
        )
    ]
    for name, value in response.headers:
        head.append(b"%s: %s\r\n" % (name, value))
    if not keep_alive:
        head.append(b"connection: close\r\n")
    head.append(b"\r\n")
    if with_body:
        head.append(response.body)
    return b"".join(head)


def _error(status: int, message: str) -> HttpResponse:
    return HttpResponse(status, orjson.dumps({"error": message}))


class _Connection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._queue: deque[tuple[HttpRequest, bool]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._paused = False
        self._closing = False
        self.last_active = time.monotonic()
        # The request being parsed.
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_bytes = 0

    @property
    def busy(self) -> bool:
        return self._task is not None or bool(self._queue)

    # --- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement it.
        self._transport = cast(asyncio.Transport, transport)
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._server.connections.discard(self)
        if self._task is not None:
            self._task.cancel()  # nobody is left to read the answer

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self.last_active = time.monotonic()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.fail(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as error:
            self.fail(400, f"malformed HTTP request: {error}")

    # --- httptools callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._header_bytes = 0
        self._body = []
        self._body_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_header_bytes(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value
        self._count_header_bytes(len(name) + len(value))

    def _count_header_bytes(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_HEADER_BYTES:
            self.fail(431, f"request headers exceed {MAX_HEADER_BYTES} bytes")
            raise httptools.HttpParserError("headers too large")  # stops this feed_data

    def on_headers_complete(self) -> None:
        declared = self._headers.get(b"content-length")
        limit = self._server.max_body_bytes
        if declared is not None and declared.isdigit() and int(declared) > limit:
            self.fail(413, f"request body of {int(declared)} bytes exceeds {limit}")
            raise httptools.HttpParserError("body too large")
        if self._headers.get(b"expect", b"").lower() == b"100-continue":
            assert self._transport is not None
            self._transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self._server.max_body_bytes:
            self.fail(413, f"request body exceeds {self._server.max_body_bytes} bytes")
            raise httptools.HttpParserError("body too large")
        self._body.append(body)

    def on_message_complete(self) -> None:
        path = self._url.split(b"?", 1)[0].decode("latin-1")
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        method = self._parser.get_method().decode("latin-1")
        request = HttpRequest(method, path, self._headers, body)
        self._queue.append((request, self._parser.should_keep_alive()))
        if len(self._queue) > MAX_PIPELINED and not self._paused:
            assert self._transport is not None
            self._transport.pause_reading()
            self._paused = True
        if self._task is None:
            self._serve_next()

    # --- serving -----------------------------------------------------------------------

    def _serve_next(self) -> None:
        if self._paused and len(self._queue) <= MAX_PIPELINED // 2 and not self._closing:
            assert self._transport is not None
            self._transport.resume_reading()
            self._paused = False
        if not self._queue or self._closing:
            return
        request, keep_alive = self._queue.popleft()
        self._task = self._loop.create_task(self._serve(request, keep_alive))

    async def _serve(self, request: HttpRequest, keep_alive: bool) -> None:
        try:
            response = await self._server.handler(request)
        except Exception:
            log.exception("HTTP handler failed", path=request.path)
            response = _error(500, "internal error")
        if self._server.stopping:
            keep_alive = False
        self._respond(response, keep_alive, with_body=request.method != "HEAD")
        self._task = None
        self.last_active = time.monotonic()
        self._serve_next()

    def _respond(self, response: HttpResponse, keep_alive: bool, *, with_body: bool) -> None:
        if self._closing or self._transport is None:
            return
        self._transport.write(encode_response(response, keep_alive, with_body))
        if not keep_alive:
            self.close()

    def fail(self, status: int, message: str) -> None:
        """Answer a request that cannot be served, then close: the rest of the stream
        cannot be trusted to be at a request boundary."""
        self._queue.clear()
        self._respond(_error(status, message), keep_alive=False, with_body=True)

    def close(self) -> None:
        if not self._closing and self._transport is not None:
            self._closing = True
            self._transport.close()


class HttpServer:
    def __init__(
        self, handler: Handler, *, max_body_bytes: int, keep_alive_seconds: float = 75.0
    ) -> None:
        self.handler = handler
        self.max_body_bytes = max_body_bytes
        self._keep_alive_seconds = keep_alive_seconds
        self.connections: set[_Connection] = set()
        self.stopping = False
        self._server: asyncio.Server | None = None
        self._reaper: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port (useful with port 0)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), host, port, backlog=4096, reuse_address=True
        )
        self._reaper = loop.create_task(self._close_idle_connections())
        return int(self._server.sockets[0].getsockname()[1])

    async def _close_idle_connections(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, self._keep_alive_seconds))
            cutoff = time.monotonic() - self._keep_alive_seconds
            for connection in list(self.connections):
                if not connection.busy and connection.last_active < cutoff:
                    connection.close()

    async def stop(self, grace: float) -> None:
        """Stop accepting, let in-flight requests finish for up to `grace` seconds (their
        responses close the connection), close everything else."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        if self._reaper is not None:
            self._reaper.cancel()
        deadline = time.monotonic() + grace
        while True:
            for connection in list(self.connections):
                if not connection.busy:
                    connection.close()
            if not self.connections or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.01)
        for connection in list(self.connections):
            connection.close()
        if self._server is not None:
            await self._server.wait_closed()
