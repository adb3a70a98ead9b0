from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from fastapi.testclient import TestClient
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from kloop_core.grpc_server import RunningService, start_service
from kloop_core.http_app import create_http_app
from kloop_core.logging import bind_request_id, request_id_var
from kloop_core.resilience import grpc_channel
from kloop_core.tracing import configure_tracing, get_tracer

SERVICE = "kloop.test.v1.Echo"


@pytest.fixture(scope="module")
def service(echo: Any, span_exporter: InMemorySpanExporter) -> Iterator[RunningService]:
    running = start_service(echo.build_app(), grpc_port=0, http_port=0)
    yield running
    running.stop(grace=0)


def _spans_named(exporter: InMemorySpanExporter, name: str) -> list[Any]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def test_client_and_server_spans_share_one_trace_over_a_real_call(
    service: RunningService, span_exporter: InMemorySpanExporter
) -> None:
    span_exporter.clear()
    method = f"/{SERVICE}/Echo"
    with grpc_channel(f"127.0.0.1:{service.grpc_port}") as channel:
        server_trace_id = channel.unary_unary(method)(b"trace-id", timeout=5)
    spans = _spans_named(span_exporter, method)
    client = next(s for s in spans if s.kind == SpanKind.CLIENT)
    server = next(s for s in spans if s.kind == SpanKind.SERVER)
    assert client.context.trace_id == server.context.trace_id
    assert server.parent is not None and server.parent.span_id == client.context.span_id
    # The handler ran inside the server span.
    assert server_trace_id.decode() == format(server.context.trace_id, "032x")


def test_a_local_parent_span_continues_across_the_call(
    service: RunningService, span_exporter: InMemorySpanExporter
) -> None:
    span_exporter.clear()
    with (
        get_tracer("test").start_as_current_span("caller") as parent,
        grpc_channel(f"127.0.0.1:{service.grpc_port}") as channel,
    ):
        seen = channel.unary_unary(f"/{SERVICE}/Echo")(b"trace-id", timeout=5)
    assert seen.decode() == format(parent.get_span_context().trace_id, "032x")


def test_health_checks_are_not_traced(
    service: RunningService, span_exporter: InMemorySpanExporter
) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    span_exporter.clear()
    with grpc_channel(f"127.0.0.1:{service.grpc_port}", instrument=False) as channel:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert not [s for s in span_exporter.get_finished_spans() if "Health" in s.name]


def test_instrumented_channel_forwards_the_current_request_id(service: RunningService) -> None:
    token = request_id_var.set(None)
    try:
        bound = bind_request_id("upstream-req-7")
        with grpc_channel(f"127.0.0.1:{service.grpc_port}") as channel:
            seen = channel.unary_unary(f"/{SERVICE}/Echo")(b"request-id", timeout=5)
        assert seen.decode() == bound == "upstream-req-7"
    finally:
        request_id_var.reset(token)


def test_http_server_span_continues_the_callers_trace(
    span_exporter: InMemorySpanExporter,
) -> None:
    app = create_http_app(service="tracing-http")

    @app.get("/ping")
    def ping() -> dict[str, str]:
        span = trace.get_current_span().get_span_context()
        return {"trace_id": format(span.trace_id, "032x")}

    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    span_exporter.clear()
    with TestClient(app) as client:
        body = client.get(
            "/ping", headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
        ).json()
        client.get("/livez")
    assert body["trace_id"] == trace_id
    server_spans = [s for s in span_exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert [s.attributes.get("http.route") for s in server_spans] == ["/ping"]  # no /livez
    assert server_spans[0].context.trace_id == int(trace_id, 16)


def test_configure_tracing_is_idempotent(span_exporter: InMemorySpanExporter) -> None:
    provider = trace.get_tracer_provider()
    configure_tracing("other", None)
    configure_tracing("other", None)
    assert trace.get_tracer_provider() is provider
    assert isinstance(provider, TracerProvider)
    with get_tracer("t").start_as_current_span("x") as span:
        assert span.get_span_context().is_valid


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    """A minimal OTLP receiver: remembers the span names it is sent."""

    def __init__(self) -> None:
        self.span_names: list[str] = []
        self.service_names: list[str] = []

    def Export(self, request: Any, context: Any) -> Any:
        for resource_spans in request.resource_spans:
            for attr in resource_spans.resource.attributes:
                if attr.key == "service.name":
                    self.service_names.append(attr.value.string_value)
            for scope_spans in resource_spans.scope_spans:
                self.span_names.extend(span.name for span in scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def test_spans_are_exported_over_otlp_when_an_endpoint_is_set() -> None:
    collector = _Collector()
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    # In a child process: the exporter would otherwise stay on this process's provider.
    code = textwrap.dedent(
        f"""
        from kloop_core.tracing import configure_tracing, get_tracer, shutdown_tracing
        configure_tracing("otlp-test", "http://127.0.0.1:{port}")
        with get_tracer("t").start_as_current_span("exported-span"):
            pass
        shutdown_tracing()
        """
    )
    try:
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert collector.span_names == ["exported-span"]
        assert collector.service_names == ["otlp-test"]
    finally:
        server.stop(None)
