"""Every panel query of every shipped Grafana dashboard, run against a REAL Prometheus
that scrapes the running platform.

`kloop up` starts the local platform (Redis, MLflow and every service as processes, on
free ports), `kloop demo` drives the whole loop through it (training, promotion,
predictions over HTTP and gRPC, shifted traffic -> drift -> retrain -> canary ->
promote, rollback), one batch scoring job goes through the gateway to the worker, and a
Prometheus (the Debian `prometheus` binary, `make deploy-tools`) scrapes every
service's /metrics each second, with the labels the chart's ServiceMonitors give
(job="kloop-<service>", namespace). Then every query must parse and evaluate, and must
return data unless it is listed in MAY_BE_EMPTY with the reason.

Run: `make dashboards-prometheus`, or as part of `make test` (scripts/run_tests.py runs
deploy/tests as one more package; the test is marked slow: `-m slow`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from kloop_client.local import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "deploy" / "helm" / "kloop" / "files" / "dashboards").glob("*.json"))
KLOOP = [sys.executable, "-m", "kloop_client.cli"]
GRPC_SERVICES = (
    "registry",
    "training",
    "inference",
    "gateway",
    "drift-monitor",
    "vectorstore",
    "rag",
)
NAMESPACE = "kloop-local"
# Dashboard variables as Grafana would substitute them with "All" selected.
VARIABLES = {
    "$__rate_interval": "2m",
    "$__interval": "15s",
    "$__range": "30m",
    "$namespace": ".*",
    "$service": ".*",
    "$model": ".*",
}

# (dashboard file, panel title, refId or "*") -> why that query may legitimately return
# nothing after the demo. Anything else that returns no series fails the test.
MAY_BE_EMPTY: dict[tuple[str, str, str], str] = {
    (
        "loop.json",
        "Retrain triggers (drift monitor)",
        "C",
    ): "send failures: the series exists only once a retrain request failed; none does",
    (
        "loop.json",
        "Retrain triggers (drift monitor)",
        "B",
    ): "suppressed triggers: only when drift persists past the first trigger (cooldown), "
    "which depends on how many windows close before the canary is promoted",
    ("gateway.json", "Auth failures/s by reason", "*"): "the demo always sends a valid key",
    (
        "gateway.json",
        "Shadow label agreement with the answering alias",
        "*",
    ): "the demo sets no shadow traffic",
    ("gateway.json", "Shadow score difference p50 / p99", "*"): "the demo sets no shadow traffic",
    ("gateway.json", "Shadow requests/s by outcome", "*"): "the demo sets no shadow traffic",
    ("rag.json", "Tokens/s by model and kind", "*"): "no API key here: answers are extractive",
    ("rag.json", "Cost per day (USD) by model", "*"): "no API key here: answers are extractive",
    ("rag.json", "LLM calls/s by outcome", "*"): "no API key here: answers are extractive",
}


def kloop(
    env: dict[str, str], *args: str, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KLOOP, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        # The repository, as for `make demo`: the embedder and the READMEs the RAG step
        # ingests are there.
        cwd=ROOT,
        check=False,
    )


def _get(url: str, timeout: float = 10) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (loopback)
        return json.load(response)


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """A minimal OTLP/gRPC trace receiver: keeps (service.name, trace id, span name)."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: object
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self._lock:
            for resource_spans in request.resource_spans:
                attributes = {
                    a.key: a.value.string_value for a in resource_spans.resource.attributes
                }
                service = attributes.get("service.name", "")
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append((service, span.trace_id.hex(), span.name))
        return trace_service_pb2.ExportTraceServiceResponse()

    def services_in(self, trace_id: str) -> set[str]:
        with self._lock:
            return {service for service, tid, _ in self.spans if tid == trace_id}


@pytest.fixture(scope="module")
def otlp() -> Iterator[tuple[OtlpReceiver, str]]:
    receiver = OtlpReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield receiver, f"http://127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


@pytest.fixture(scope="module")
def platform(
    tmp_path_factory: pytest.TempPathFactory, otlp: tuple[OtlpReceiver, str]
) -> Iterator[dict[str, Any]]:
    if shutil.which("prometheus") is None:
        pytest.fail("no prometheus binary: `make test-tools` installs it (Debian package)")
    # The embedder (a no-op when built), so that the demo's RAG step feeds the RAG panels.
    built = subprocess.run(
        ["make", "-s", "embedder"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert built.returncode == 0, built.stdout + built.stderr
    home = tmp_path_factory.mktemp("kloop-home")
    ports = {
        "REDIS_PORT": free_port(),
        "MLFLOW_PORT": free_port(),
        "WORKER_HTTP_PORT": free_port(),
        **{
            f"{s.upper().replace('-', '_')}_{kind}_PORT": free_port()
            for s in GRPC_SERVICES
            for kind in ("GRPC", "HTTP")
        },
    }
    env = {
        **os.environ,
        "KLOOP_LOCAL_HOME": str(home),
        "COLUMNS": "200",
        **{f"KLOOP_LOCAL_{name}": str(port) for name, port in ports.items()},
        # Every service exports its spans to the test's OTLP receiver (the chart's
        # otel.endpoint sets the same variables in-cluster).
        **{
            f"KLOOP_{s.upper().replace('-', '_')}_OTLP_ENDPOINT": otlp[1]
            for s in (*GRPC_SERVICES, "worker")
        },
    }
    up = kloop(env, "up")
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        yield {"env": env, "home": home, "ports": ports}
    finally:
        kloop(env, "down")


@pytest.fixture(scope="module")
def prometheus(platform: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    ports = platform["ports"]
    targets = {s: ports[f"{s.upper().replace('-', '_')}_HTTP_PORT"] for s in GRPC_SERVICES}
    targets["worker"] = ports["WORKER_HTTP_PORT"]
    workdir = tmp_path_factory.mktemp("prometheus")
    scrape_configs = [
        {
            "job_name": f"kloop-{name}",
            "scrape_interval": "1s",
            "scrape_timeout": "1s",
            "static_configs": [
                {"targets": [f"127.0.0.1:{port}"], "labels": {"namespace": NAMESPACE}}
            ],
        }
        for name, port in targets.items()
    ]
    config = workdir / "prometheus.yml"
    config.write_text(
        json.dumps({"global": {"scrape_interval": "1s"}, "scrape_configs": scrape_configs})
    )
    port = free_port()
    process = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=(workdir / "prometheus.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                active = _get(f"{url}/api/v1/targets")["data"]["activeTargets"]
                if len(active) == len(targets) and all(t["health"] == "up" for t in active):
                    break
            except OSError:
                active = []
            assert time.monotonic() < deadline, f"targets not all up: {active}"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def batch_job(platform: dict[str, Any]) -> None:
    """One batch scoring job through the gateway: the worker's series get data."""
    token = (platform["home"] / "api-key").read_text().strip()
    base = f"http://127.0.0.1:{platform['ports']['GATEWAY_HTTP_PORT']}"

    def call(path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(  # noqa: S310 (loopback)
            base + path,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return json.load(response)

    job = call("/v1/jobs", {"model": "sentiment", "texts": ["great", "awful", "fine"] * 10})
    deadline = time.monotonic() + 120
    while job["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.5)
        job = call(f"/v1/jobs/{job['id']}")
    assert job["status"] == "succeeded", job


def panel_queries() -> list[tuple[str, str, str, str]]:
    """(dashboard, panel title, refId, expr) of every panel query."""
    found = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for t in panel.get("targets", []):
                found.append((path.name, panel["title"], t["refId"], t["expr"]))
    return found


def substitute(expr: str) -> str:
    for name in sorted(VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, VARIABLES[name])
    assert not re.search(r"\$\w", expr), f"unsubstituted variable in {expr}"
    return expr


def test_every_dashboard_query_runs_against_real_prometheus(
    platform: dict[str, Any], prometheus: str
) -> None:
    demo = kloop(platform["env"], "demo")
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    batch_job(platform)
    time.sleep(5)  # a few scrapes after the last request

    queries = panel_queries()
    assert len(queries) > 40
    failures, empty, with_data = [], [], 0
    for board, title, ref, expr in queries:
        url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": substitute(expr)})
        try:
            answer = _get(url)
        except urllib.error.HTTPError as e:
            failures.append(f"{board} / {title} [{ref}]: {e.code} {e.read()[:300]!r}")
            continue
        if answer.get("status") != "success":
            failures.append(f"{board} / {title} [{ref}]: {answer}")
        elif not answer["data"]["result"]:
            if (board, title, ref) not in MAY_BE_EMPTY and (board, title, "*") not in MAY_BE_EMPTY:
                empty.append(f"{board} / {title} [{ref}]: {expr}")
        else:
            with_data += 1
    print(f"{len(queries)} queries, {with_data} with data")
    assert not failures, "queries Prometheus rejected:\n" + "\n".join(failures)
    assert not empty, "queries without data (fix them or list them in MAY_BE_EMPTY):\n" + "\n".join(
        empty
    )


def _post(url: str, body: dict[str, Any], headers: dict[str, str]) -> Any:
    request = urllib.request.Request(  # noqa: S310 (loopback)
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **headers},
    )
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
        return json.load(response)


def test_one_trace_spans_gateway_worker_inference_and_the_rag_hops(
    platform: dict[str, Any], otlp: tuple[OtlpReceiver, str]
) -> None:
    receiver, _ = otlp
    ports = platform["ports"]
    token = (platform["home"] / "api-key").read_text().strip()
    auth = {"Authorization": f"Bearer {token}"}

    def traced(trace_id: str) -> dict[str, str]:
        return {**auth, "traceparent": f"00-{trace_id}-{os.urandom(8).hex()}-01"}

    predict_trace, job_trace, ask_trace = (os.urandom(16).hex() for _ in range(3))
    _post(
        f"http://127.0.0.1:{ports['GATEWAY_HTTP_PORT']}/v1/jobs",
        {"model": "sentiment", "texts": ["traced batch job", "another row"]},
        traced(job_trace),
    )
    _post(
        f"http://127.0.0.1:{ports['GATEWAY_HTTP_PORT']}/v1/models/sentiment/predict",
        {"text": f"a traced request {predict_trace}"},
        traced(predict_trace),
    )
    _post(
        f"http://127.0.0.1:{ports['RAG_HTTP_PORT']}/v1/ask",
        {"question": "What does the drift monitor compute?", "collection": "docs"},
        traced(ask_trace),
    )
    # Spans are exported in batches (every few seconds).
    wanted = {
        predict_trace: {"gateway", "inference"},
        job_trace: {"gateway", "worker", "inference"},
        ask_trace: {"rag", "vectorstore", "inference"},
    }
    deadline = time.monotonic() + 30
    while any(not want <= receiver.services_in(t) for t, want in wanted.items()):
        assert time.monotonic() < deadline, {t: receiver.services_in(t) for t in wanted}
        time.sleep(0.5)
