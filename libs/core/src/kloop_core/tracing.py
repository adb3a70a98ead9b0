"""OpenTelemetry set-up and the gRPC client/server hooks that carry trace context.

Without an OTLP endpoint the SDK provider still runs (no exporter), so spans get real
ids that logs can show and that propagate to the next hop; exporting is the only thing
that needs the endpoint.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import client_interceptor, server_interceptor
from opentelemetry.instrumentation.grpc import filters as grpc_filters
from opentelemetry.instrumentation.grpc.grpcext import intercept_channel as otel_intercept_channel
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_NAMESPACE, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from kloop_core.logging import get_logger, request_id_var

REQUEST_ID_METADATA_KEY = "x-request-id"

log = get_logger(__name__)
_lock = threading.Lock()
_provider: TracerProvider | None = None
_exporting_to: set[str] = set()


def configure_tracing(service: str, otlp_endpoint: str | None) -> None:
    """Install the SDK tracer provider once; add an OTLP exporter per new endpoint.

    Idempotent: calling it again (tests, a second app in one process) neither replaces
    the provider, which OpenTelemetry forbids, nor duplicates exporters.
    """
    global _provider
    with _lock:
        if _provider is None:
            current = trace.get_tracer_provider()
            if isinstance(current, TracerProvider):
                _provider = current  # someone (a test, auto-instrumentation) got there first
            else:
                _provider = TracerProvider(
                    resource=Resource.create({SERVICE_NAME: service, SERVICE_NAMESPACE: "kloop"})
                )
                trace.set_tracer_provider(_provider)
        if otlp_endpoint and otlp_endpoint not in _exporting_to:
            # Imported here: the exporter pulls in grpc/protobuf code that services
            # without an endpoint never need.
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter,
            )

            _provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint))
            )
            _exporting_to.add(otlp_endpoint)
            log.info("tracing exports via OTLP", otlp_endpoint=otlp_endpoint)


def shutdown_tracing() -> None:
    """Flush buffered spans (called on service shutdown)."""
    if _provider is not None:
        _provider.force_flush(timeout_millis=5000)


def get_tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


# Probes and reflection would otherwise produce a span every few seconds per pod.
_NOT_TRACED = grpc_filters.negate(
    grpc_filters.any_of(
        grpc_filters.health_check(),
        grpc_filters.service_prefix("grpc.reflection."),
    )
)


def grpc_server_interceptor() -> grpc.ServerInterceptor:
    """Server-side span per RPC, continuing the caller's trace from metadata."""
    return server_interceptor(filter_=_NOT_TRACED)  # type: ignore[no-untyped-call]


# grpc ships no type hints, hence the ignores on its base classes.
class _RequestIdClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Forwards the current request id so one request is one id across services."""

    def _with_request_id(self, details: Any) -> Any:
        request_id = request_id_var.get()
        if request_id is None:
            return details
        metadata = [(k, v) for k, v in (details.metadata or ()) if k != REQUEST_ID_METADATA_KEY]
        metadata.append((REQUEST_ID_METADATA_KEY, request_id))
        return _ClientCallDetails(details, metadata)

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return continuation(self._with_request_id(details), request)

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return continuation(self._with_request_id(details), request)

    def intercept_stream_unary(
        self, continuation: Callable[..., Any], details: Any, requests: Any
    ) -> Any:
        return continuation(self._with_request_id(details), requests)

    def intercept_stream_stream(
        self, continuation: Callable[..., Any], details: Any, requests: Any
    ) -> Any:
        return continuation(self._with_request_id(details), requests)


class _ClientCallDetails(grpc.ClientCallDetails):  # type: ignore[misc]
    def __init__(self, base: Any, metadata: list[tuple[str, str]]) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = metadata
        self.credentials = base.credentials
        self.wait_for_ready = base.wait_for_ready
        self.compression = base.compression


def instrument_channel(channel: grpc.Channel) -> grpc.Channel:
    """Wrap a client channel: a client span per call (trace context in metadata) and
    the current request id as `x-request-id`."""
    with_request_id = grpc.intercept_channel(channel, _RequestIdClientInterceptor())
    # OpenTelemetry's client interceptor has its own channel-wrapping protocol (grpcext).
    return otel_intercept_channel(
        with_request_id,
        client_interceptor(),  # type: ignore[no-untyped-call]
    )
