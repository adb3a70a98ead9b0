#!/usr/bin/env python3
# ruff: noqa: E501  (PromQL reads best on one line)
"""Writes the Grafana dashboards the chart ships (deploy/helm/kloop/files/dashboards/).

Dashboards are code: edit this file and run `python deploy/grafana/gen_dashboards.py`;
`make dashboards-check` validates the JSON and parses every query with promtool.
Series come from libs/core/src/kloop_core/metrics.py (RED of every service).
"""

from __future__ import annotations

import json
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
        },
    }


def variables() -> list[dict[str, Any]]:
    def query(name: str, label: str, expr: str) -> dict[str, Any]:
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": DS,
            "query": {"query": expr, "refId": f"{name}-var"},
            "definition": expr,
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
            "current": {},
            "hide": 0,
            "refresh": 1,
            "options": [],
        },
        query("namespace", "Namespace", "label_values(kloop_build_info, namespace)"),
        query(
            "service", "Service", 'label_values(kloop_build_info{namespace=~"$namespace"}, service)'
        ),
    ]


def dashboard(uid: str, title: str, description: str, layout: Layout) -> dict[str, Any]:
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
        "templating": {"list": variables()},
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
                f'sum by (service) (rate(kloop_grpc_server_requests_total{{{SEL}, code=~"{SERVER_ERRORS}"}}[$__rate_interval]))'
                f" / sum by (service) (rate(kloop_grpc_server_requests_total{{{SEL}}}[$__rate_interval]))",
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
                f'sum by (service) (rate(kloop_http_requests_total{{{SEL}, code=~"5.."}}[$__rate_interval]))'
                f" / sum by (service) (rate(kloop_http_requests_total{{{SEL}}}[$__rate_interval]))",
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


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, board in {"platform-overview": platform_overview()}.items():
        path = OUT / f"{name}.json"
        path.write_text(json.dumps(board, indent=2) + "\n")
        print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")


if __name__ == "__main__":
    main()
