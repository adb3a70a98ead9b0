"""Prometheus series shared by every service (RED for gRPC and HTTP, build info).

All on prometheus_client's default registry, so a service's own domain series defined
with plain `prometheus_client.Counter(...)` show up on the same /metrics page. Labels
are bounded: method and route names come from what the server registered (templates,
never raw paths or ids).
"""

from __future__ import annotations

import importlib.metadata

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# Seconds. Dense below 10 ms (in-process inference and cache hits live there), then the
# usual 1-2.5-5 steps up to 10 s for training/LLM calls.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.00075,
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
)

GRPC_SERVER_REQUESTS = Counter(
    "kloop_grpc_server_requests_total",
    "gRPC requests handled, by final status code.",
    ["service", "method", "code"],
)
GRPC_SERVER_DURATION = Histogram(
    "kloop_grpc_server_request_duration_seconds",
    "gRPC request handling time (whole stream for streaming calls).",
    ["service", "method"],
    buckets=LATENCY_BUCKETS,
)
HTTP_REQUESTS = Counter(
    "kloop_http_requests_total",
    "HTTP requests handled, by route template and status code.",
    ["service", "route", "method", "code"],
)
HTTP_DURATION = Histogram(
    "kloop_http_request_duration_seconds",
    "HTTP request handling time until the response is fully sent.",
    ["service", "route", "method"],
    buckets=LATENCY_BUCKETS,
)
BUILD_INFO = Gauge(
    "kloop_build_info",
    "Always 1; labels say which service and version is running.",
    ["service", "version"],
)


def service_version(service: str) -> str:
    """Version of the service's distribution (`kloop-<service>`), else of kloop-core."""
    for dist in (f"kloop-{service}", "kloop-core"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def set_build_info(service: str, version: str | None = None) -> None:
    BUILD_INFO.labels(service=service, version=version or service_version(service)).set(1)


def metrics_payload() -> tuple[bytes, str]:
    """The /metrics body of the default registry and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
