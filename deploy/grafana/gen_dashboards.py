#!/usr/bin/env python3
# ruff: noqa: E501  (PromQL reads best on one line)
"""Writes the Grafana dashboards the chart ships (deploy/helm/kloop/files/dashboards/).

Dashboards are code: edit this file and run `python deploy/grafana/gen_dashboards.py`;
`make dashboards-check` validates the JSON and parses every query with promtool.
Series come from libs/core/src/kloop_core/metrics.py (RED of every service) and from
the services' own domain series (services/*/src/*/metrics.py, kloop_inference.telemetry);
deploy/tests/test_dashboards_prometheus.py runs every query against a real Prometheus
scraping the running platform. One dashboard per concern: platform overview, inference,
gateway, loop (drift -> retrain -> promote), worker.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "helm" / "kloop" / "files" / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'namespace=~"$namespace", service=~"$service"'
STREAMS = r'method!~".*/Watch.*|grpc\\.health\\.v1\\..*|grpc\\.reflection\\..*"'
SERVER_ERRORS = "UNKNOWN|INTERNAL|UNAVAILABLE|DATA_LOSS|DEADLINE_EXCEEDED|UNIMPLEMENTED"


class Layout:
    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.y = 0
        self.x = 0
        self.next_id = 1

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {
                "type": "row",
                "title": title,
                "id": self._id(),
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "panels": [],
            }
        )
        self.y += 1

    def add(self, panel: dict[str, Any], w: int = 12, h: int = 8) -> None:
        if self.x + w > 24:
            self._newline()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        panel["id"] = self._id()
        self.panels.append(panel)
        self.x += w
        self._h = h

    def _newline(self) -> None:
        if self.x:
            self.y += getattr(self, "_h", 8)
            self.x = 0

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def target(expr: str, legend: str, ref: str = "A", instant: bool = False) -> dict[str, Any]:
    t: dict[str, Any] = {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref}
    if instant:
        t.update({"instant": True, "range": False, "format": "table"})
    return t


def timeseries(title: str, unit: str, *targets: dict[str, Any], desc: str = "") -> dict[str, Any]:
    return {
        "type": "timeseries",
        "title": title,
        "description": desc,
        "datasource": DS,
        "targets": list(targets),
        "fieldConfig": {
            "defaults": {"unit": unit, "min": 0, "custom": {"lineWidth": 1, "fillOpacity": 10}},
            "overrides": [],
        },
        "options": {
            "legend": {
                "showLegend": True,
                "displayMode": "table",
                "placement": "bottom",
                "calcs": ["mean", "max", "lastNotNull"],
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def stat(title: str, unit: str, expr: str, desc: str = "") -> dict[str, Any]:
    return {
        "type": "stat",
        "title": title,
        "description": desc,
        "datasource": DS,
        "targets": [target(expr, "")],
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": "auto",
            "wideLayout": True,
            "showPercentChange": False,
            "percentChangeColorMode": "standard",
        },
    }


def variable(name: str, label: str, expr: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": expr, "refId": f"{name}-var"},
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
        "hide": 0,
        "options": [],
    }


def variables(*extra: dict[str, Any]) -> list[dict[str, Any]]:
    def query(name: str, label: str, expr: str) -> dict[str, Any]:
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": DS,
            "query": {"query": expr, "refId": f"{name}-var"},
            "refresh": 2,
            "includeAll": True,
            "multi": True,
            "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "sort": 1,
            "hide": 0,
            "options": [],
        }

    return [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "hide": 0,
            "refresh": 1,
            "options": [],
        },
        query("namespace", "Namespace", "label_values(kloop_build_info, namespace)"),
        query(
            "service", "Service", 'label_values(kloop_build_info{namespace=~"$namespace"}, service)'
        ),
    ][: 3 if not extra else 2] + list(extra)


def dashboard(
    uid: str,
    title: str,
    description: str,
    layout: Layout,
    templating: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["kloop"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": templating if templating is not None else variables()},
        "annotations": {"list": []},
        "links": [],
        "panels": layout.panels,
    }


def platform_overview() -> dict[str, Any]:
    g = Layout()
    g.row("Platform")
    g.add(
        stat(
            "Services up",
            "none",
            'count(up{job=~"kloop-.+", namespace=~"$namespace"} == 1)',
            "Scrape targets of kloop services that answer.",
        ),
        w=6,
        h=4,
    )
    g.add(
        stat(
            "gRPC requests/s",
            "reqps",
            f"sum(rate(kloop_grpc_server_requests_total{{{SEL}}}[$__rate_interval]))",
        ),
        w=6,
        h=4,
    )
    g.add(
        stat(
            "HTTP requests/s",
            "reqps",
            f"sum(rate(kloop_http_requests_total{{{SEL}}}[$__rate_interval]))",
        ),
        w=6,
        h=4,
    )
    g.add(
        stat(
            "Versions running",
            "none",
            f"count(kloop_build_info{{{SEL}}})",
            "Service processes by kloop_build_info (one per replica).",
        ),
        w=6,
        h=4,
    )
    g.row("gRPC: rate, errors, duration per service")
    g.add(
        timeseries(
            "gRPC requests/s by service",
            "reqps",
            target(
                f"sum by (service) (rate(kloop_grpc_server_requests_total{{{SEL}}}[$__rate_interval]))",
                "{{service}}",
            ),
        )
    )
    g.add(
        timeseries(
            "gRPC server-error ratio by service",
            "percentunit",
            target(
                ratio(
                    "kloop_grpc_server_requests_total", SEL, f'code=~"{SERVER_ERRORS}"', "service"
                ),
                "{{service}}",
            ),
            desc=f"Calls ending {SERVER_ERRORS}; client errors (INVALID_ARGUMENT, NOT_FOUND, ...) are not counted.",
        )
    )
    g.add(
        timeseries(
            "gRPC latency p50 / p99 by service",
            "s",
            target(
                f"histogram_quantile(0.5, sum by (service, le) (rate(kloop_grpc_server_request_duration_seconds_bucket{{{SEL}, {STREAMS}}}[$__rate_interval])))",
                "{{service}} p50",
                "A",
            ),
            target(
                f"histogram_quantile(0.99, sum by (service, le) (rate(kloop_grpc_server_request_duration_seconds_bucket{{{SEL}, {STREAMS}}}[$__rate_interval])))",
                "{{service}} p99",
                "B",
            ),
            desc="Unary calls and bounded streams; Watch streams and health checks excluded.",
        )
    )
    g.add(
        timeseries(
            "gRPC requests/s by method and code",
            "reqps",
            target(
                f"sum by (service, method, code) (rate(kloop_grpc_server_requests_total{{{SEL}}}[$__rate_interval]))",
                "{{method}} {{code}}",
            ),
        )
    )
    g.row("HTTP: rate, errors, duration per service")
    g.add(
        timeseries(
            "HTTP requests/s by service",
            "reqps",
            target(
                f"sum by (service) (rate(kloop_http_requests_total{{{SEL}}}[$__rate_interval]))",
                "{{service}}",
            ),
        )
    )
    g.add(
        timeseries(
            "HTTP 5xx ratio by service",
            "percentunit",
            target(
                ratio("kloop_http_requests_total", SEL, 'code=~"5.."', "service"),
                "{{service}}",
            ),
        )
    )
    g.add(
        timeseries(
            "HTTP latency p50 / p99 by service",
            "s",
            target(
                f"histogram_quantile(0.5, sum by (service, le) (rate(kloop_http_request_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))",
                "{{service}} p50",
                "A",
            ),
            target(
                f"histogram_quantile(0.99, sum by (service, le) (rate(kloop_http_request_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))",
                "{{service}} p99",
                "B",
            ),
        )
    )
    g.add(
        timeseries(
            "HTTP requests/s by route and code",
            "reqps",
            target(
                f"sum by (service, route, code) (rate(kloop_http_requests_total{{{SEL}}}[$__rate_interval]))",
                "{{service}} {{route}} {{code}}",
            ),
        )
    )
    return dashboard(
        "kloop-platform-overview",
        "kloop / Platform overview",
        "RED (rate, errors, duration) of every kloop service, gRPC and HTTP.",
        g,
    )


NS = 'namespace=~"$namespace"'
MODEL_VAR = variable(
    "model", "Model", 'label_values(kloop_inference_model_info{namespace=~"$namespace"}, model)'
)


def rate(expr: str, by: str = "") -> str:
    """sum [by (...)] (rate(<expr>[$__rate_interval]))"""
    return f"sum{f' by ({by})' if by else ''} (rate({expr}[$__rate_interval]))"


def ratio(metric: str, sel: str, matcher: str, by: str) -> str:
    """Share of `metric`'s rate whose series also match `matcher`, per `by`."""
    total = rate(f"{metric}{{{sel}}}", by)
    # `or total * 0`: 0 (not "no data") while no series matches yet, e.g. no error so far.
    return f"({rate(f'{metric}{{{sel}, {matcher}}}', by)} or {total} * 0) / {total}"


def quantile(q: float, metric: str, sel: str, by: str) -> str:
    return f"histogram_quantile({q}, {rate(f'{metric}_bucket{{{sel}}}', by + ', le')})"


def inference() -> dict[str, Any]:
    sel = f'{NS}, model=~"$model"'
    g = Layout()
    g.row("Throughput and errors per model version")
    g.add(
        timeseries(
            "Requests/s by model, version and protocol",
            "reqps",
            target(
                rate(f"kloop_inference_requests_total{{{sel}}}", "model, version, protocol"),
                "{{model}} v{{version}} {{protocol}}",
            ),
            desc="kloop_inference_requests_total: every OIP inference request, by the version that answered.",
        )
    )
    g.add(
        timeseries(
            "Errors/s by model, version and status",
            "reqps",
            target(
                rate(
                    f'kloop_inference_requests_total{{{sel}, status!="ok"}}',
                    "model, version, status",
                ),
                "{{model}} v{{version}} {{status}}",
            ),
            desc="Requests that did not end ok (the status is the OIP/gRPC error class).",
        )
    )
    g.row("Latency and batching")
    g.add(
        timeseries(
            "Request latency p50 / p99 by model version",
            "s",
            target(
                quantile(0.5, "kloop_inference_request_duration_seconds", sel, "model, version"),
                "{{model}} v{{version}} p50",
                "A",
            ),
            target(
                quantile(0.99, "kloop_inference_request_duration_seconds", sel, "model, version"),
                "{{model}} v{{version}} p99",
                "B",
            ),
            desc="Arrival to encoded response, successful requests.",
        )
    )
    g.add(
        timeseries(
            "Queue time p50 / p99 (dynamic batcher)",
            "s",
            target(
                quantile(0.5, "kloop_inference_queue_duration_seconds", sel, "model, version"),
                "{{model}} v{{version}} p50",
                "A",
            ),
            target(
                quantile(0.99, "kloop_inference_queue_duration_seconds", sel, "model, version"),
                "{{model}} v{{version}} p99",
                "B",
            ),
            desc="Time a request waited in the batcher before its batch started.",
        )
    )
    g.add(
        timeseries(
            "Batch size (rows per execution): mean and p99",
            "none",
            target(
                f"{rate(f'kloop_inference_batch_size_sum{{{sel}}}', 'model, version')} / {rate(f'kloop_inference_batch_size_count{{{sel}}}', 'model, version')}",
                "{{model}} v{{version}} mean",
                "A",
            ),
            target(
                quantile(0.99, "kloop_inference_batch_size", sel, "model, version"),
                "{{model}} v{{version}} p99",
                "B",
            ),
        )
    )
    g.add(
        timeseries(
            "Requests per batch (mean) and pending requests",
            "none",
            target(
                f"{rate(f'kloop_inference_batch_requests_sum{{{sel}}}', 'model, version')} / {rate(f'kloop_inference_batch_requests_count{{{sel}}}', 'model, version')}",
                "{{model}} v{{version}} requests/batch",
                "A",
            ),
            target(
                f"sum by (model) (kloop_inference_pending_requests{{{sel}}})",
                "{{model}} pending",
                "B",
            ),
        )
    )
    g.row("What is served")
    g.add(
        {
            **timeseries(
                "Versions loaded per alias",
                "none",
                target(
                    f"max by (model, alias, version) (kloop_inference_model_info{{{sel}}})",
                    "{{model}} {{alias}} v{{version}}",
                ),
            ),
            "description": "kloop_inference_model_info: 1 per (model, alias, version) loaded by an inference replica.",
        },
        w=24,
    )
    return dashboard(
        "kloop-inference",
        "kloop / Inference",
        "The inference service per model and version: throughput, errors, latency, dynamic batching.",
        g,
        variables(MODEL_VAR),
    )


def gateway() -> dict[str, Any]:
    sel = f'{NS}, model=~"$model"'
    g = Layout()
    g.row("Traffic and cache")
    g.add(
        timeseries(
            "Predictions/s by alias and version",
            "reqps",
            target(
                rate(f"kloop_gateway_predictions_total{{{sel}}}", "model, alias, version"),
                "{{model}} {{alias}} v{{version}}",
            ),
            desc="Answers returned, by the alias (production or canary) and version that produced them.",
        )
    )
    g.add(
        timeseries(
            "Canary share of predictions",
            "percentunit",
            target(
                ratio("kloop_gateway_predictions_total", sel, 'alias="canary"', "model"),
                "{{model}}",
            ),
            desc="Compare with the model's configured canary percent.",
        )
    )
    g.add(
        timeseries(
            "Cache hit ratio",
            "percentunit",
            target(
                ratio("kloop_gateway_cache_lookups_total", sel, 'result="hit"', "model"),
                "{{model}}",
            ),
            desc="Hits over all lookups (hit, miss, bypass) per text.",
        )
    )
    g.add(
        timeseries(
            "Cache lookups/s by result",
            "reqps",
            target(
                rate(f"kloop_gateway_cache_lookups_total{{{sel}}}", "model, result"),
                "{{model}} {{result}}",
            ),
        )
    )
    g.row("Auth and rate limits")
    g.add(
        timeseries(
            "Rate-limited requests/s by scope",
            "reqps",
            target(
                rate(f"kloop_gateway_rate_limited_requests_total{{{NS}}}", "scope"), "{{scope}}"
            ),
            desc="Refused with 429 / RESOURCE_EXHAUSTED by the per-key token bucket.",
        )
    )
    g.add(
        timeseries(
            "Auth failures/s by reason",
            "reqps",
            target(rate(f"kloop_gateway_auth_failures_total{{{NS}}}", "reason"), "{{reason}}"),
        )
    )
    g.row("Shadow traffic (challenger)")
    g.add(
        timeseries(
            "Shadow label agreement with the answering alias",
            "percentunit",
            target(
                ratio(
                    "kloop_gateway_shadow_comparisons_total",
                    sel,
                    'agreement="agree"',
                    "model, primary_alias",
                ),
                "{{model}} challenger vs {{primary_alias}}",
            ),
        )
    )
    g.add(
        timeseries(
            "Shadow score difference p50 / p99",
            "none",
            target(
                quantile(0.5, "kloop_gateway_shadow_score_difference", sel, "model"),
                "{{model}} p50",
                "A",
            ),
            target(
                quantile(0.99, "kloop_gateway_shadow_score_difference", sel, "model"),
                "{{model}} p99",
                "B",
            ),
        )
    )
    g.add(
        timeseries(
            "Shadow requests/s by outcome",
            "reqps",
            target(
                rate(f"kloop_gateway_shadow_requests_total{{{sel}}}", "model, outcome"),
                "{{model}} {{outcome}}",
            ),
        )
    )
    g.row("Upstream, prediction events, feedback")
    g.add(
        timeseries(
            "Upstream (inference) latency p50 / p99 by alias",
            "s",
            target(
                quantile(
                    0.5, "kloop_gateway_upstream_request_duration_seconds", sel, "model, alias"
                ),
                "{{model}} {{alias}} p50",
                "A",
            ),
            target(
                quantile(
                    0.99, "kloop_gateway_upstream_request_duration_seconds", sel, "model, alias"
                ),
                "{{model}} {{alias}} p99",
                "B",
            ),
        )
    )
    g.add(
        timeseries(
            "Prediction events/s by outcome; writer queue",
            "none",
            target(
                rate(f"kloop_gateway_prediction_events_total{{{NS}}}", "outcome"),
                "{{outcome}}/s",
                "A",
            ),
            target(f"sum(kloop_gateway_prediction_event_queue{{{NS}}})", "queued", "B"),
        )
    )
    g.add(
        timeseries(
            "Feedback/s by result",
            "reqps",
            target(rate(f"kloop_gateway_feedback_total{{{NS}}}", "result"), "{{result}}"),
        ),
        w=24,
    )
    return dashboard(
        "kloop-gateway",
        "kloop / Gateway",
        "The front door: predictions per alias, cache, auth and rate limits, canary and shadow traffic.",
        g,
        variables(MODEL_VAR),
    )


def loop() -> dict[str, Any]:
    sel = f'{NS}, model=~"$model"'
    g = Layout()
    g.row("Drift")
    g.add(
        timeseries(
            "Drift per feature (last window) vs threshold",
            "none",
            target(
                f"max by (model, version, feature, metric) (kloop_drift_value{{{sel}}})",
                "{{model}} v{{version}} {{feature}} {{metric}}",
                "A",
            ),
            target(
                f"max by (model, metric) (kloop_drift_threshold{{{sel}}})",
                "threshold {{metric}}",
                "B",
            ),
            desc="PSI / KS / JS of the last evaluated window against the version's training reference.",
        ),
        w=24,
        h=9,
    )
    g.add(
        stat(
            "Versions drifting now",
            "none",
            f"sum(kloop_drift_detected{{{sel}}})",
            "Versions whose last decided window drifted.",
        ),
        w=6,
        h=5,
    )
    g.add(
        timeseries(
            "Consecutive drifted windows",
            "none",
            target(
                f"max by (model, version) (kloop_drift_consecutive_windows{{{sel}}})",
                "{{model}} v{{version}}",
            ),
        ),
        w=9,
        h=5,
    )
    g.add(
        timeseries(
            "Windows/s by outcome",
            "none",
            target(
                rate(f"kloop_drift_windows_total{{{sel}}}", "model, outcome"),
                "{{model}} {{outcome}}",
            ),
        ),
        w=9,
        h=5,
    )
    g.row("Live quality (feedback)")
    g.add(
        timeseries(
            "Live accuracy and F1",
            "percentunit",
            target(
                f"max by (model, version) (kloop_live_accuracy{{{sel}}})",
                "{{model}} v{{version}} accuracy",
                "A",
            ),
            target(
                f"max by (model, version) (kloop_live_f1{{{sel}}})",
                "{{model}} v{{version}} F1",
                "B",
            ),
            desc="Over the most recent labeled predictions of each version.",
        )
    )
    g.add(
        timeseries(
            "Events counted/s and consumer lag",
            "none",
            target(rate(f"kloop_drift_events_processed_total{{{NS}}}", "kind"), "{{kind}}/s", "A"),
            target(f"max by (stream) (kloop_drift_consumer_lag{{{NS}}})", "lag {{stream}}", "B"),
        )
    )
    g.row("Retrain, gate, canary, promote")
    g.add(
        timeseries(
            "Retrain triggers (drift monitor)",
            "none",
            target(
                f"sum by (model) (increase(kloop_drift_retrain_requests_total{{{sel}}}[$__range]))",
                "{{model}} requested",
                "A",
            ),
            target(
                f"sum by (model) (increase(kloop_drift_retrain_suppressed_total{{{sel}}}[$__range]))",
                "{{model}} suppressed",
                "B",
            ),
            target(
                f"sum by (model) (increase(kloop_drift_retrain_failures_total{{{sel}}}[$__range]))",
                "{{model}} send failed",
                "C",
            ),
            desc="Over the dashboard's time range.",
        )
    )
    g.add(
        timeseries(
            "Retraining pipelines finished by state",
            "none",
            target(
                f"sum by (state) (increase(kloop_worker_pipelines_finished_total{{{NS}}}[$__range]))",
                "{{state}}",
            ),
            desc="succeeded = the new version was promoted to production; rejected = the gate said no; rolled_back = the canary failed its analysis.",
        )
    )
    g.add(
        timeseries(
            "Promotions: version per alias (inference)",
            "none",
            target(
                f'count by (model, alias, version) (kloop_inference_model_info{{{sel}, alias=~"production|canary"}})',
                "{{model}} {{alias}} v{{version}}",
                "A",
            ),
            desc="One series per (alias, version) loaded: a promotion or rollback ends one and starts the next.",
        )
    )
    g.add(
        timeseries(
            "Pipeline steps/s by step and outcome",
            "none",
            target(
                rate(f"kloop_worker_pipeline_steps_total{{{NS}}}", "step, outcome"),
                "{{step}} {{outcome}}",
            ),
        )
    )
    return dashboard(
        "kloop-loop",
        "kloop / Loop",
        "Drift per feature, live accuracy, retrain triggers, retraining pipelines and promotions.",
        g,
        variables(MODEL_VAR),
    )


def worker() -> dict[str, Any]:
    g = Layout()
    g.row("Tasks")
    g.add(
        timeseries(
            "Tasks/s by task and outcome",
            "none",
            target(
                rate(f"kloop_worker_tasks_total{{{NS}}}", "task, outcome"), "{{task}} {{outcome}}"
            ),
        )
    )
    g.add(
        timeseries(
            "Task failure ratio by task",
            "percentunit",
            target(
                ratio("kloop_worker_tasks_total", NS, 'outcome="failure"', "task"),
                "{{task}}",
            ),
        )
    )
    g.add(
        timeseries(
            "Task duration p50 / p99 by task",
            "s",
            target(
                quantile(0.5, "kloop_worker_task_duration_seconds", NS, "task"), "{{task}} p50", "A"
            ),
            target(
                quantile(0.99, "kloop_worker_task_duration_seconds", NS, "task"),
                "{{task}} p99",
                "B",
            ),
        ),
        w=24,
    )
    g.row("Batch scoring jobs")
    g.add(
        timeseries(
            "Rows/s by model and outcome",
            "none",
            target(
                rate(f"kloop_worker_job_rows_total{{{NS}}}", "model, outcome"),
                "{{model}} {{outcome}}",
            ),
        )
    )
    g.add(
        timeseries(
            "Chunk writes/s by outcome",
            "none",
            target(rate(f"kloop_worker_job_chunks_total{{{NS}}}", "outcome"), "{{outcome}}"),
            desc="duplicate = a redelivered chunk (nothing written); dropped = the job was cancelled or had failed.",
        )
    )
    g.row("Workers")
    g.add(
        timeseries(
            "Queue depth by queue",
            "none",
            # Every worker reads the same Redis lists: max, not sum, over replicas.
            target(f"max by (queue) (kloop_worker_queue_length{{{NS}}})", "{{queue}}"),
            desc="Messages waiting in each queue, not yet taken by a worker (KEDA scales on these).",
        ),
        w=18,
    )
    g.add(
        stat(
            "Worker processes",
            "none",
            f'count(kloop_build_info{{{NS}, service="worker"}})',
            "Worker replicas exporting metrics.",
        ),
        w=6,
        h=4,
    )
    return dashboard(
        "kloop-worker",
        "kloop / Worker",
        "Celery tasks (rate, failures, durations), batch scoring jobs, queue depth.",
        g,
        variables(),
    )


def rag() -> dict[str, Any]:
    g = Layout()
    g.row("Answers")
    g.add(
        timeseries(
            "Answers/s by mode and cache",
            "none",
            target(
                rate(f"kloop_rag_answers_total{{{NS}}}", "mode, cached"),
                "{{mode}} cached={{cached}}",
            ),
        )
    )
    g.add(
        timeseries(
            "Answer cache hit ratio",
            "percentunit",
            target(
                ratio("kloop_rag_answer_cache_lookups_total", NS, 'result="hit"', ""), "hit ratio"
            ),
        )
    )
    g.add(
        timeseries(
            "Latency p50 / p99 by stage",
            "s",
            target(
                quantile(0.5, "kloop_rag_stage_duration_seconds", NS, "stage"), "{{stage}} p50", "A"
            ),
            target(
                quantile(0.99, "kloop_rag_stage_duration_seconds", NS, "stage"),
                "{{stage}} p99",
                "B",
            ),
            desc="retrieve (vector store), generate (LLM or extractive), total.",
        ),
        w=24,
    )
    g.row("LLM spend")
    g.add(
        timeseries(
            "Tokens/s by model and kind",
            "none",
            target(
                rate(f"kloop_rag_llm_tokens_total{{{NS}}}", "model, kind"), "{{model}} {{kind}}"
            ),
            desc="input (uncached), output, cache_read and cache_creation input tokens.",
        )
    )
    g.add(
        timeseries(
            "Cost per day (USD) by model",
            "currencyUSD",
            target(
                f"sum by (model) (increase(kloop_rag_llm_cost_usd_total{{{NS}}}[1d]))", "{{model}}"
            ),
            desc="From the per-model price table in the rag service's settings.",
        )
    )
    g.add(
        timeseries(
            "LLM calls/s by outcome",
            "none",
            target(
                rate(f"kloop_rag_llm_requests_total{{{NS}}}", "model, outcome"),
                "{{model}} {{outcome}}",
            ),
            desc="After the SDK's retries: ok, timeout, rate_limited, overloaded, error.",
        ),
        w=24,
    )
    return dashboard(
        "kloop-rag",
        "kloop / RAG",
        "Answers (mode, cache), latency per stage, LLM tokens, cost per day and call outcomes.",
        g,
        variables(),
    )


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    boards = {
        "platform-overview": platform_overview(),
        "inference": inference(),
        "gateway": gateway(),
        "loop": loop(),
        "worker": worker(),
        "rag": rag(),
    }
    check = "--check" in sys.argv[1:]
    stale = []
    for name, board in boards.items():
        path = OUT / f"{name}.json"
        text = json.dumps(board, indent=2) + "\n"
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
            continue
        path.write_text(text)
        print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    if stale:
        sys.exit(f"stale dashboards (run python deploy/grafana/gen_dashboards.py): {stale}")
    if check:
        print(f"dashboards match deploy/grafana/gen_dashboards.py ({len(boards)})")


if __name__ == "__main__":
    main()
