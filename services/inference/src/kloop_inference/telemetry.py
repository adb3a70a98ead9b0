"""Prometheus series and OpenTelemetry spans of the inference service.

The per-request series live in `LoopSeries`: plain counters and bucket lists, updated and
read (scrapes are served by the same loop) only on the event loop thread, so they need
no lock. prometheus_client's own metrics take a lock per update, and a request updates
half a dozen series: that was ~10 us of a ~100 us request. Model names come from
configuration only (a request for an unknown name is counted as model="unknown"), so
labels stay bounded.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import propagate, trace
from prometheus_client import REGISTRY, Gauge
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from kloop_core.metrics import (
    GRPC_SERVER_DURATION,
    GRPC_SERVER_REQUESTS,
    HTTP_DURATION,
    HTTP_REQUESTS,
    LATENCY_BUCKETS,
)
from kloop_core.tracing import get_tracer

SERVICE = "inference"
# Prometheus' float formatting for `le` labels ("1.0", "+Inf"); untyped upstream.
_format_bound: Callable[[float], str] = floatToGoString
UNKNOWN_MODEL = "unknown"


class _Value:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class _Buckets:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # buckets are "le": inclusive
        self.sum += value


class _Family:
    def __init__(
        self,
        kind: str,
        name: str,
        documentation: str,
        labels: tuple[str, ...],
        buckets: tuple[float, ...] = (),
    ) -> None:
        self.kind, self.name, self.documentation = kind, name, documentation
        self.labels, self.buckets = labels, buckets
        self.children: dict[tuple[str, ...], Any] = {}

    def child(self, *labels: str) -> Any:
        found = self.children.get(labels)
        if found is None:
            found = self.children[labels] = (
                _Buckets(self.buckets) if self.kind == "histogram" else _Value()
            )
        return found

    def metric(self) -> Metric:
        if self.kind == "counter":
            counter = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
            for labels, value in self.children.items():
                counter.add_metric(labels, value.value)
            return counter
        if self.kind == "gauge":
            gauge = GaugeMetricFamily(self.name, self.documentation, labels=self.labels)
            for labels, value in self.children.items():
                gauge.add_metric(labels, value.value)
            return gauge
        histogram = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for labels, series in self.children.items():
            cumulative, buckets = 0, []
            for bound, count in zip((*self.buckets, float("inf")), series.counts, strict=True):
                cumulative += count
                buckets.append((_format_bound(bound), cumulative))
            histogram.add_metric(labels, buckets, series.sum)
        return histogram


class LoopSeries(Collector):
    """The hot-path series, registered once on the default registry."""

    def __init__(self) -> None:
        self.requests = _Family(
            "counter",
            "kloop_inference_requests",
            "Inference requests, by model, the version that answered, protocol and status.",
            ("model", "version", "protocol", "status"),
        )
        self.request_duration = _Family(
            "histogram",
            "kloop_inference_request_duration_seconds",
            "Inference request time from arrival to encoded response.",
            ("model", "version", "protocol"),
            LATENCY_BUCKETS,
        )
        self.queue_duration = _Family(
            "histogram",
            "kloop_inference_queue_duration_seconds",
            "Time a request waited in the batcher before its batch started.",
            ("model", "version"),
            (0.0, *LATENCY_BUCKETS),
        )
        self.batch_size = _Family(
            "histogram",
            "kloop_inference_batch_size",
            "Rows per model execution.",
            ("model", "version"),
            (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
        )
        self.batch_requests = _Family(
            "histogram",
            "kloop_inference_batch_requests",
            "Requests per model execution.",
            ("model", "version"),
            (1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        self.pending = _Family(
            "gauge",
            "kloop_inference_pending_requests",
            "Requests queued or running in a model's batchers.",
            ("model",),
        )

    def collect(self) -> Iterable[Metric]:
        for family in (
            self.requests,
            self.request_duration,
            self.queue_duration,
            self.batch_size,
            self.batch_requests,
            self.pending,
        ):
            yield family.metric()


SERIES = LoopSeries()
REGISTRY.register(SERIES)

MODEL_INFO = Gauge(
    "kloop_inference_model_info",
    "1 for each alias and the version it serves.",
    ["model", "alias", "version", "sha256"],
)


class ModelMetrics:
    """The batch observer of one loaded version."""

    __slots__ = ("_batch_requests", "_batch_size", "_pending", "_queue")

    def __init__(self, model: str, version: str) -> None:
        self._queue = SERIES.queue_duration.child(model, version)
        self._batch_size = SERIES.batch_size.child(model, version)
        self._batch_requests = SERIES.batch_requests.child(model, version)
        self._pending = SERIES.pending.child(model)

    def batch_started(self, rows: int, requests: int) -> None:
        self._batch_size.observe(rows)
        self._batch_requests.observe(requests)

    def request_queued(self, seconds: float) -> None:
        self._queue.observe(seconds)

    def pending_changed(self, delta: int) -> None:
        self._pending.inc(delta)


def set_model_info(served: list[tuple[str, str, str, str]]) -> None:
    """(model, alias, version, sha256) of everything served now."""
    MODEL_INFO.clear()
    for labels in served:
        MODEL_INFO.labels(*labels).set(1)


class RequestMetrics:
    """Per-request series for one protocol."""

    def __init__(self, protocol: str, models: Mapping[str, Any]) -> None:
        self._protocol = protocol
        self._known_models = frozenset(models)

    def model_label(self, name: str) -> str:
        return name if name in self._known_models else UNKNOWN_MODEL

    def record(self, model: str, version: str, status: str, seconds: float) -> None:
        SERIES.requests.child(model, version, self._protocol, status).inc()
        if status == "ok":
            SERIES.request_duration.child(model, version, self._protocol).observe(seconds)


class RedMetrics:
    """kloop_core's RED series (every service has them) with cached children."""

    def __init__(self) -> None:
        self._http: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._grpc: dict[tuple[str, str], tuple[Any, Any]] = {}

    def http(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._http.get(key)
        if children is None:
            children = self._http[key] = (
                HTTP_REQUESTS.labels(SERVICE, route, method, str(status)),
                HTTP_DURATION.labels(SERVICE, route, method),
            )
        children[0].inc()
        children[1].observe(seconds)

    def grpc(self, method: str, code: str, seconds: float) -> None:
        key = (method, code)
        children = self._grpc.get(key)
        if children is None:
            children = self._grpc[key] = (
                GRPC_SERVER_REQUESTS.labels(SERVICE, method, code),
                GRPC_SERVER_DURATION.labels(SERVICE, method),
            )
        children[0].inc()
        children[1].observe(seconds)


class Spans:
    """One span per inference request, or none at all when tracing is off."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._tracer = get_tracer("kloop_inference")

    @contextmanager
    def request(
        self, protocol: str, model: str, carrier: Mapping[str, str]
    ) -> Iterator[trace.Span]:
        with self._tracer.start_as_current_span(
            f"{protocol} ModelInfer",
            context=propagate.extract(carrier),
            kind=trace.SpanKind.SERVER,
            attributes={"kloop.model.name": model, "kloop.protocol": protocol},
        ) as span:
            yield span
