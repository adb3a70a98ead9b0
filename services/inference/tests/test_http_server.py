"""The HTTP/1.1 server, byte for byte over real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from kloop_inference.http_server import HttpRequest, HttpResponse, HttpServer

pytestmark = pytest.mark.anyio


async def echo(request: HttpRequest) -> HttpResponse:
    if request.path == "/slow":
        await asyncio.sleep(0.2)
    if request.path == "/boom":
        raise RuntimeError("handler bug")
    body = b"%s %s %d:%s" % (
        request.method.encode(),
        request.path.encode(),
        len(request.body),
        request.body,
    )
    return HttpResponse(
        200, body, b"text/plain", ((b"x-seen", request.headers.get(b"x-tag", b"")),)
    )


@pytest.fixture
async def server() -> AsyncIterator[tuple[HttpServer, int]]:
    http = HttpServer(echo, max_body_bytes=1024, keep_alive_seconds=0.2)
    port = await http.start("127.0.0.1", 0)
    yield http, port
    await http.stop(1.0)


async def exchange(port: int, payload: bytes, read_until_close: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    async with asyncio.timeout(5):
        data = await reader.read() if read_until_close else await reader.read(65536)
    writer.close()
    return data


async def test_keep_alive_and_pipelining_answer_in_order(server: tuple[HttpServer, int]) -> None:
    _, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /fast?q=1 HTTP/1.1\r\nHost: x\r\nX-Tag: t2\r\n\r\n"
    )
    await writer.drain()
    async with asyncio.timeout(5):
        first = await reader.readuntil(b"POST /slow 3:abc")
        second = await reader.readuntil(b"GET /fast 0:")
    assert first.startswith(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 16\r\n"
    )
    assert b"x-seen: t2\r\n" in second
    assert b"connection: close" not in first + second
    writer.close()


async def test_chunked_bodies_and_100_continue(server: tuple[HttpServer, int]) -> None:
    _, port = server
    data = await exchange(
        port,
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n"
        b"Connection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    )
    assert data.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")
    assert data.endswith(b"POST /c 5:abcde")
    assert b"connection: close\r\n" in data


async def test_http_1_0_closes_and_head_has_no_body(server: tuple[HttpServer, int]) -> None:
    _, port = server
    data = await exchange(port, b"HEAD /h HTTP/1.0\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-length: 10\r\n" in data  # "HEAD /h 0:"
    assert data.endswith(b"connection: close\r\n\r\n")


@pytest.mark.parametrize(
    ("payload", "status", "message"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", b"400 Bad Request", b"malformed HTTP request"),
        (
            b"POST /big HTTP/1.1\r\nContent-Length: 5000\r\n\r\n",
            b"413 Request Entity Too Large",
            b"request body of 5000 bytes exceeds 1024",
        ),
        (
            b"POST /big HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n"
            + b"x" * 2048
            + b"\r\n",
            b"413 Request Entity Too Large",
            b"request body exceeds 1024 bytes",
        ),
        (
            b"GET /h HTTP/1.1\r\nX-Big: " + b"y" * 70_000 + b"\r\n\r\n",
            b"431 Request Header Fields Too Large",
            b"request headers exceed 65536 bytes",
        ),
        (
            b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"400 Bad Request",
            b"protocol upgrades are not supported",
        ),
    ],
)
async def test_bad_requests_are_answered_then_closed(
    server: tuple[HttpServer, int], payload: bytes, status: bytes, message: bytes
) -> None:
    _, port = server
    data = await exchange(port, payload)
    assert data.startswith(b"HTTP/1.1 " + status + b"\r\n")
    assert b"connection: close\r\n" in data
    assert message in data


async def test_a_failing_handler_gives_500_and_the_connection_lives_on(
    server: tuple[HttpServer, int],
) -> None:
    _, port = server
    data = await exchange(
        port,
        b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert data.startswith(b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json")
    assert b'{"error":"internal error"}' in data
    assert data.endswith(b"GET /ok 0:")


async def test_idle_keep_alive_connections_are_closed(server: tuple[HttpServer, int]) -> None:
    http, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    async with asyncio.timeout(10):
        await reader.readuntil(b"GET /a 0:")
        assert await reader.read() == b""  # closed by the server after 0.2 s idle
    assert not http.connections


async def test_stop_lets_in_flight_requests_finish() -> None:
    http = HttpServer(echo, max_body_bytes=1024)
    port = await http.start("127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(0.05)
    await http.stop(5.0)
    async with asyncio.timeout(5):
        data = await reader.read()
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"connection: close\r\n" in data
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
