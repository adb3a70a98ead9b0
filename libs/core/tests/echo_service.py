"""A tiny bytes-in/bytes-out gRPC service for the tests (and, run as a script, for the
SIGTERM test): one method per RPC kind plus commands that raise each kind of error."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import redis
from opentelemetry import trace
from pydantic_settings import SettingsConfigDict

from kloop_core import errors
from kloop_core.grpc_server import GrpcApp, run_service
from kloop_core.logging import get_logger, request_id_var
from kloop_core.settings import Port, ServiceSettings, load_settings

SERVICE = "kloop.test.v1.Echo"
log = get_logger("echo")


class EchoSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="KLOOP_ECHO_")
    grpc_port: Port = 0
    http_port: Port = 0


def _command(text: str, context: Any) -> bytes:
    """Unary behaviour, driven by the request text."""
    if text.startswith("raise:"):
        name = text.removeprefix("raise:")
        if name == "boom":
            raise RuntimeError("cannot reach redis://:hunter2@db:6379/0")
        if name == "redis-down":
            raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:1. Refused.")
        if name == "abort":
            context.abort(grpc.StatusCode.NOT_FOUND, "aborted by the handler")
        if name == "set-code":
            context.set_code(grpc.StatusCode.FAILED_PRECONDITION)
            context.set_details("set by the handler")
            return b""
        cls = getattr(errors, name)
        retry_after = 2.5 if cls in (errors.Unavailable, errors.ResourceExhausted) else None
        raise cls(f"{name} happened", retry_after=retry_after)
    if text.startswith("sleep:"):
        time.sleep(float(text.removeprefix("sleep:")))
        return b"slept"
    if text == "request-id":
        return (request_id_var.get() or "").encode()
    if text == "trace-id":
        return format(trace.get_current_span().get_span_context().trace_id, "032x").encode()
    if text == "log":
        log.info("handled", item="x")
    return text.encode()


def echo(request: bytes, context: Any) -> bytes:
    return _command(request.decode(), context)


def count(request: bytes, context: Any) -> Iterator[bytes]:
    """unary-stream: "3" -> 0,1,2; "3:raise" -> 0,1,2 then NotFound."""
    text = request.decode()
    n, _, then = text.partition(":")
    for i in range(int(n)):
        yield str(i).encode()
    if then == "raise":
        raise errors.NotFound("ran out")
    if then == "request-id":
        yield (request_id_var.get() or "").encode()


# Set when a Join call reaches its handler: tests cancel only calls the server has.
JOIN_STARTED = threading.Event()


def join(requests: Iterator[bytes], context: Any) -> bytes:
    """stream-unary: joins the requests; a request "raise" -> InvalidArgument."""
    JOIN_STARTED.set()
    parts = []
    for request in requests:
        if request == b"raise":
            raise errors.InvalidArgument("bad part")
        parts.append(request)
    return b",".join(parts)


def shout(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
    """stream-stream: upper-cases each request; "boom" -> unexpected error."""
    for request in requests:
        if request == b"boom":
            raise ValueError("internal detail xyzzy")
        yield request.upper()


def register(server: grpc.Server) -> None:
    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
        "Count": grpc.unary_stream_rpc_method_handler(count),
        "Join": grpc.stream_unary_rpc_method_handler(join),
        "Shout": grpc.stream_stream_rpc_method_handler(shout),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


class Flag:
    """A thread-safe readiness switch."""

    def __init__(self, value: bool = True) -> None:
        self._value = value
        self._lock = threading.Lock()

    def set(self, value: bool) -> None:
        with self._lock:
            self._value = value

    def __call__(self) -> bool:
        with self._lock:
            return self._value


def build_app(
    settings: EchoSettings | None = None,
    *,
    readiness: Callable[[], bool] | None = None,
    on_shutdown: Callable[[], None] | None = None,
) -> GrpcApp:
    return GrpcApp(
        settings=settings or EchoSettings(),
        service_name="echo",
        register=register,
        service_names=[SERVICE],
        readiness=readiness or Flag(),
        on_shutdown=on_shutdown,
        readiness_interval=0.05,
    )


if __name__ == "__main__":
    run_service(
        build_app(load_settings(EchoSettings), on_shutdown=lambda: log.info("on_shutdown ran"))
    )
