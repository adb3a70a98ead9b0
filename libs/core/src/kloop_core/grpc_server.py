"""gRPC service bootstrap: one sync server per process plus a small ops HTTP server.

`start_service` builds the server with the standard interceptors (tracing, request id,
RED metrics, error mapping), the grpc.health.v1 service driven by the app's readiness
check, reflection, and `/livez` `/readyz` `/metrics` on the ops port. `run_service` adds
logging/tracing set-up and graceful shutdown on SIGTERM/SIGINT.
"""

from __future__ import annotations

import contextvars
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import trace

from kloop_core.errors import (
    KloopError,
    error_for_unexpected,
    error_metadata,
)
from kloop_core.logging import (
    clean_request_id,
    configure_logging,
    get_logger,
    new_request_id,
    request_id_var,
)
from kloop_core.metrics import (
    GRPC_SERVER_DURATION,
    GRPC_SERVER_REQUESTS,
    metrics_payload,
    set_build_info,
)
from kloop_core.resilience import MAX_MESSAGE_BYTES
from kloop_core.settings import ServiceSettings, redacted_dict
from kloop_core.tracing import (
    REQUEST_ID_METADATA_KEY,
    configure_tracing,
    grpc_server_interceptor,
    shutdown_tracing,
)

log = get_logger(__name__)

SERVER_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Accept the 30 s keepalive pings of kloop_core.resilience.grpc_channel, also on
    # idle connections, instead of answering them with GOAWAY "too_many_pings".
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    # Without this a second server on the same port binds silently and steals calls.
    ("grpc.so_reuseport", 0),
)

# Streams that stay open for as long as the client wants: ended at shutdown instead of
# holding the drain for the whole grace period.
_UNBOUNDED_STREAMS = frozenset(
    {
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    }
)


def _always_ready() -> bool:
    return True


@dataclass
class GrpcApp:
    """What a service hands to `run_service`."""

    settings: ServiceSettings
    service_name: str  # short name, e.g. "training" (metric labels, logs)
    register: Callable[[grpc.Server], None]  # adds the servicers
    service_names: Sequence[str]  # full proto service names, for health + reflection
    # Polled every `readiness_interval` seconds, off the request path; must be quick
    # (use timeouts on anything remote) and may raise (counts as not ready).
    readiness: Callable[[], bool] = _always_ready
    on_shutdown: Callable[[], None] | None = None  # after the drain, e.g. close clients
    version: str | None = None  # kloop_build_info; default: the installed package version
    readiness_interval: float = 1.0
    # False when the service serves /livez /readyz /metrics from its own FastAPI app on
    # http_port (gRPC + HTTP services such as the gateway).
    ops_http: bool = True


# --- interceptor ------------------------------------------------------------------


class _UnboundedStreams:
    """Open health-watch / reflection streams, which never end on their own.

    At shutdown they must not hold the drain for the whole grace period: a watch ends
    cleanly right after delivering NOT_SERVING; whatever is still open after a moment
    (reflection sessions) is cancelled.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._contexts: set[Any] = set()
        self.closing = False

    def add(self, context: Any) -> None:
        with self._changed:
            self._contexts.add(context)

    def discard(self, context: Any) -> None:
        with self._changed:
            self._contexts.discard(context)
            self._changed.notify_all()

    def begin_close(self) -> None:
        self.closing = True

    def close(self, timeout: float) -> None:
        with self._changed:
            self._changed.wait_for(lambda: not self._contexts, timeout=timeout)
            remaining, self._contexts = self._contexts, set()
        for context in remaining:
            context.cancel()


def _final_code(context: Any) -> grpc.StatusCode:
    """Status of a call whose handler returned without raising."""
    code = context.code()
    if code is not None:
        return code
    if context.is_active():
        return grpc.StatusCode.OK
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


class KloopServerInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Request id, RED metrics and error mapping for every RPC kind.

    Runs inside the OpenTelemetry interceptor, so the server span is current and its
    ids appear in the handler's logs.
    """

    def __init__(self, service: str, unbounded: _UnboundedStreams | None = None) -> None:
        self._service = service
        self._unbounded = unbounded or _UnboundedStreams()

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None  # grpc answers UNIMPLEMENTED; no metric: method names are unbounded
        full_method: str = handler_call_details.method or "/unknown"
        incoming_id = next(
            (
                value
                for key, value in handler_call_details.invocation_metadata or ()
                if key == REQUEST_ID_METADATA_KEY and isinstance(value, str)
            ),
            None,
        )
        call = _Call(self, full_method, incoming_id)
        if handler.response_streaming:
            if handler.request_streaming:
                return grpc.stream_stream_rpc_method_handler(
                    call.wrap_stream(handler.stream_stream),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
            return grpc.unary_stream_rpc_method_handler(
                call.wrap_stream(handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(
                call.wrap_unary(handler.stream_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.unary_unary_rpc_method_handler(
            call.wrap_unary(handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class _Call:
    """Per-method wrapping of a handler's behaviour (one instance per incoming call)."""

    def __init__(
        self, interceptor: KloopServerInterceptor, full_method: str, incoming_id: str | None
    ) -> None:
        self._service = interceptor._service
        self._unbounded = interceptor._unbounded
        self._full_method = full_method
        self._method = full_method.lstrip("/")
        self._incoming_id = incoming_id

    def _begin(self, context: Any) -> str:
        request_id = clean_request_id(self._incoming_id) or new_request_id()
        # Sent first thing, so the id reaches the client even when the call fails.
        # (Handlers therefore must not call send_initial_metadata themselves.)
        context.send_initial_metadata(((REQUEST_ID_METADATA_KEY, request_id),))
        return request_id

    def _record(self, code: grpc.StatusCode, started: float) -> None:
        GRPC_SERVER_REQUESTS.labels(self._service, self._method, code.name).inc()
        GRPC_SERVER_DURATION.labels(self._service, self._method).observe(
            time.perf_counter() - started
        )

    def _fail(
        self, exc: Exception, context: Any, request_id: str
    ) -> tuple[grpc.StatusCode, KloopError | None]:
        """Log `exc`, pick the call's status; error None = status already decided."""
        if type(exc) is Exception and context.code() is not None:
            return context.code(), None  # handler called context.abort() itself
        if isinstance(exc, grpc.RpcError) and not context.is_active():
            # The client left or its deadline passed and reading its request stream
            # raised: nothing to answer, not a server error.
            return _final_code(context), None
        if isinstance(exc, KloopError):
            error = exc
            log.info("rpc failed", method=self._method, code=error.code, error=error.message)
        else:
            error = error_for_unexpected(exc, request_id)
            trace.get_current_span().record_exception(exc)
            log.error("rpc handler raised", method=self._method, exc_info=exc)
        context.set_trailing_metadata(error_metadata(error))
        return error.grpc_code, error

    def wrap_unary(self, behavior: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        def unary(request: Any, context: Any) -> Any:
            started = time.perf_counter()
            request_id = self._begin(context)
            token = request_id_var.set(request_id)
            code = grpc.StatusCode.UNKNOWN
            try:
                response = behavior(request, context)
                code = _final_code(context)
                return response
            except Exception as exc:
                code, error = self._fail(exc, context, request_id)
                if error is None:
                    raise
                context.abort(code, error.message)
            finally:
                request_id_var.reset(token)
                self._record(code, started)

        return unary

    def wrap_stream(self, behavior: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        unbounded = self._full_method in _UNBOUNDED_STREAMS

        def stream(request: Any, context: Any) -> Iterator[Any]:
            started = time.perf_counter()
            request_id = self._begin(context)
            # Each step of the handler's generator runs in this one context: the request
            # id is visible to it, and never leaks into the pool thread's own context,
            # even if the generator is finalised later on another thread.
            call_context = contextvars.copy_context()
            call_context.run(request_id_var.set, request_id)
            code = grpc.StatusCode.UNKNOWN
            if unbounded:
                self._unbounded.add(context)
            try:
                responses = call_context.run(behavior, request, context)
                while True:
                    try:
                        item = call_context.run(next, responses)
                    except StopIteration:
                        break
                    yield item
                    if unbounded and self._unbounded.closing:
                        break  # shutting down: end a watch after its NOT_SERVING update
                code = _final_code(context)
            except GeneratorExit:
                code = grpc.StatusCode.CANCELLED  # grpc stopped iterating: client went away
                raise
            except Exception as exc:
                code, error = call_context.run(self._fail, exc, context, request_id)
                if error is None:
                    raise
                context.abort(code, error.message)
            finally:
                if unbounded:
                    self._unbounded.discard(context)
                self._record(code, started)

        return stream


# --- readiness and the ops HTTP server ---------------------------------------------------


class _Readiness:
    """Polls the app's readiness check and mirrors it into gRPC health and /readyz."""

    def __init__(
        self,
        check: Callable[[], bool],
        servicer: health.HealthServicer,
        service_names: Sequence[str],
        interval: float,
    ) -> None:
        self._check = check
        self._servicer = servicer
        self._names = ("", *service_names)  # "" = the whole server
        self._interval = interval
        self._stop = threading.Event()
        self._ready = False
        self._shutting_down = False
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self._thread = threading.Thread(target=self._run, name="kloop-readiness", daemon=True)

    @property
    def ready(self) -> bool:
        return self._ready and not self._shutting_down

    @property
    def reason(self) -> str:
        return "shutting down" if self._shutting_down else "not ready yet"

    def start(self) -> None:
        self._thread.start()

    def shutdown(self) -> None:
        self._shutting_down = True
        self._stop.set()
        # Permanently NOT_SERVING, pushed to every health watcher.
        self._servicer.enter_graceful_shutdown()

    def poll(self) -> None:
        try:
            ready = bool(self._check())
            problem = None
        except Exception as exc:  # a failing check means "not ready", never a dead poller
            ready, problem = False, exc
        if ready != self._ready and not self._shutting_down:
            self._ready = ready
            self._set_health(
                health_pb2.HealthCheckResponse.SERVING
                if ready
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            if problem is None:
                log.info("readiness changed", ready=ready)
            else:
                log.warning("readiness changed", ready=ready, error=repr(problem))

    def _set_health(self, status: int) -> None:
        for name in self._names:
            self._servicer.set(name, status)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self._interval)


_JSON = "application/json"


class _OpsServer(ThreadingHTTPServer):
    daemon_threads = True  # a stuck scrape must not block shutdown

    def __init__(self, address: tuple[str, int], readiness: _Readiness) -> None:
        self.readiness = readiness
        super().__init__(address, _OpsHandler)


class _OpsHandler(BaseHTTPRequestHandler):
    server: _OpsServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/livez":
            self._send(200, b'{"status":"ok"}', _JSON)
        elif path == "/readyz":
            readiness = self.server.readiness
            if readiness.ready:
                self._send(200, b'{"status":"ready"}', _JSON)
            else:
                body = {"error": {"code": "not_ready", "message": readiness.reason}}
                self._send(503, json.dumps(body).encode(), _JSON, {"Retry-After": "1"})
        elif path == "/metrics":
            payload, content_type = metrics_payload()
            self._send(200, payload, content_type)
        else:
            body = {"error": {"code": "not_found", "message": f"no route {path}"}}
            self._send(404, json.dumps(body).encode(), _JSON)

    def _send(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: probes and scrapes every few seconds would drown the logs."""


# --- running -----------------------------------------------------------------------------


class RunningService:
    """Handle on a started service: its bound ports, `stop()` and `wait()`."""

    def __init__(
        self,
        app: GrpcApp,
        server: grpc.Server,
        ops: _OpsServer | None,
        readiness: _Readiness,
        unbounded: _UnboundedStreams,
        grpc_port: int,
    ) -> None:
        self.app = app
        self.server = server
        self.grpc_port = grpc_port
        self.http_port: int = ops.server_address[1] if ops is not None else 0  # 0: none
        self._ops = ops
        self._readiness = readiness
        self._unbounded = unbounded
        self._lock = threading.Lock()
        self._stopping = False
        self._stopped = threading.Event()

    @property
    def ready(self) -> bool:
        return self._readiness.ready

    def stop(self, grace: float | None = None) -> None:
        """Graceful stop; blocks until done. Safe to call again (e.g. with grace=0 to
        cut a running drain short) and from several threads.

        Order: health NOT_SERVING and /readyz 503; new calls refused; in-flight calls
        get `grace` seconds (default settings.shutdown_grace_seconds) before being
        cancelled; `on_shutdown`; ops HTTP server closed.
        """
        if grace is None:
            grace = self.app.settings.shutdown_grace_seconds
        with self._lock:
            already_stopping, self._stopping = self._stopping, True
        if already_stopping:
            self.server.stop(grace)  # grpc: a shorter grace on a second stop() wins
            self._stopped.wait()
            return
        log.info("shutting down", grace_seconds=grace)
        self._unbounded.begin_close()
        self._readiness.shutdown()
        drained = self.server.stop(grace)
        self._unbounded.close(timeout=min(grace, 1.0))
        drained.wait()
        if self.app.on_shutdown is not None:
            try:
                self.app.on_shutdown()
            except Exception:
                log.exception("on_shutdown failed")
        if self._ops is not None:
            self._ops.shutdown()
            self._ops.server_close()
        log.info("stopped")
        self._stopped.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until stopped; False if `timeout` passed first."""
        return self._stopped.wait(timeout)

    def __enter__(self) -> RunningService:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(grace=0)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def start_service(
    app: GrpcApp, *, grpc_port: int | None = None, http_port: int | None = None
) -> RunningService:
    """Start the gRPC server and the ops HTTP server; returns once both listen.

    `grpc_port`/`http_port` override the settings; 0 picks a free port (tests), read
    the result from the returned handle.
    """
    settings = app.settings
    set_build_info(app.service_name, app.version)
    unbounded = _UnboundedStreams()
    server = grpc.server(
        ThreadPoolExecutor(max_workers=settings.grpc_max_workers, thread_name_prefix="grpc"),
        interceptors=[
            grpc_server_interceptor(),
            KloopServerInterceptor(app.service_name, unbounded),
        ],
        options=list(SERVER_OPTIONS),
        maximum_concurrent_rpcs=settings.grpc_max_concurrent_rpcs,
    )
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    app.register(server)
    reflection.enable_server_reflection(
        (*app.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = _host_port(settings.grpc_host, settings.grpc_port if grpc_port is None else grpc_port)
    try:
        bound_grpc = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise RuntimeError(f"cannot listen for gRPC on {address}: {exc}") from exc
    readiness = _Readiness(app.readiness, servicer, app.service_names, app.readiness_interval)
    ops: _OpsServer | None = None
    if app.ops_http:
        ops_address = (settings.http_host, settings.http_port if http_port is None else http_port)
        try:
            ops = _OpsServer(ops_address, readiness)
        except OSError as exc:
            server.stop(None)
            raise RuntimeError(f"cannot listen for HTTP on {ops_address}: {exc}") from exc
    server.start()
    if ops is not None:
        threading.Thread(
            target=ops.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="kloop-ops-http",
            daemon=True,
        ).start()
    readiness.start()
    running = RunningService(app, server, ops, readiness, unbounded, bound_grpc)
    log.info(
        "service started",
        grpc_address=_host_port(settings.grpc_host, bound_grpc),
        grpc_port=bound_grpc,
        http_port=running.http_port,
    )
    return running


def run_service(app: GrpcApp) -> None:
    """Run until SIGTERM/SIGINT, then shut down gracefully and return (exit status 0).

    A second signal during the drain cancels the remaining calls at once.
    """
    settings = app.settings
    configure_logging(app.service_name, settings.log_level, settings.log_format)
    configure_tracing(app.service_name, settings.otlp_endpoint)
    log.info("starting", config=redacted_dict(settings))
    running = start_service(app)

    received: list[int] = []
    stop_requested = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # Keep the handler minimal: it interrupts the main thread anywhere.
        received.append(signum)
        if stop_requested.is_set():
            threading.Thread(target=running.stop, kwargs={"grace": 0}, daemon=True).start()
        stop_requested.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        stop_requested.wait()
        log.info("signal received", signal=signal.Signals(received[0]).name)
        running.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutdown_tracing()
