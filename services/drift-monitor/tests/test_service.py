"""End to end, with real processes: registry + MLflow + Redis + `kloop-drift-monitor`.

A version is registered like training registers one; shifted traffic goes through the
stream; status (HTTP and gRPC), Prometheus series and Evidently reports stored in
MLflow are checked; then the monitor is killed with SIGKILL in the middle of a backlog
and restarted, and every event is counted exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from email.message import Message
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from mlflow import MlflowClient

from kloop.drift.v1 import drift_pb2 as pb
from kloop.drift.v1.drift_pb2_grpc import DriftServiceStub
from kloop_client.local import ManagedProcess
from kloop_model.classifier import SentimentClassifier
from kloop_model.dataset import builtin_dataset, shifted_dataset

from .helpers import add_all, stream_of
from .processes import Monitor, Version, register_version, start_monitor, start_registry

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def registry(
    tmp_path_factory: pytest.TempPathFactory, mlflow_uri: str, redis_url: str
) -> Iterator[str]:
    process, addr = start_registry(tmp_path_factory.mktemp("registry"), mlflow_uri, redis_url)
    try:
        yield addr
    finally:
        process.stop()


@pytest.fixture(scope="module")
def version(registry: str, mlflow_uri: str, builtin_model: SentimentClassifier) -> Version:
    return register_version(
        registry,
        mlflow_uri,
        f"drift-{uuid.uuid4().hex[:8]}",
        builtin_model,
        builtin_dataset().texts,
    )


def monitor_env(redis_url: str, registry: str, mlflow_uri: str, **extra: str) -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    values = {
        "REDIS_URL": redis_url,
        "REGISTRY_ADDR": registry,
        "MLFLOW_TRACKING_URI": mlflow_uri,
        "EVENTS_STREAM": f"test:{tag}:predictions",
        "FEEDBACK_STREAM": f"test:{tag}:feedback",
        "KEY_PREFIX": f"test:{tag}:drift",
        "CONSUMER_NAME": "e2e",
        "WINDOW_EVENTS": "200",
        "MIN_WINDOW_EVENTS": "100",
        "BLOCK_MS": "100",
        "TRIGGER_WINDOWS": "2",
        "RETRAIN_QUEUE": f"test:{tag}:training",
        **extra,
    }
    return {f"KLOOP_DRIFT_MONITOR_{k}": v for k, v in values.items()}


def get(url: str) -> tuple[int, Message, bytes]:
    with urllib.request.urlopen(url, timeout=120) as response:  # noqa: S310 (loopback)
        return response.status, response.headers, response.read()


def status(monitor: Monitor, model: str) -> dict[str, Any]:
    _, _, body = get(f"{monitor.http}/v1/status?model={model}")
    result: dict[str, Any] = json.loads(body)
    return result


def processed(monitor: Monitor, model: str) -> int:
    try:
        versions = status(monitor, model)["versions"]
    except urllib.error.HTTPError as e:
        if e.code == 404:  # nothing counted for the model yet
            return 0
        raise
    return int(versions[0]["events_processed"])


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.2)


@pytest.fixture
def running(
    tmp_path: Path, redis_url: str, registry: str, mlflow_uri: str
) -> Iterator[Callable[..., Monitor]]:
    started: list[ManagedProcess] = []

    def start(env: dict[str, str]) -> Monitor:
        monitor = start_monitor(tmp_path, env)
        started.append(monitor.process)
        return monitor

    yield start
    for process in started:
        process.stop()


def test_drift_status_metrics_trigger_and_reports(
    running: Callable[..., Monitor],
    version: Version,
    builtin_model: SentimentClassifier,
    redis_url: str,
    registry: str,
    mlflow_uri: str,
    client: redis.Redis,
) -> None:
    env = monitor_env(redis_url, registry, mlflow_uri)
    monitor = running(env)
    stream = env["KLOOP_DRIFT_MONITOR_EVENTS_STREAM"]
    add_all(
        client,
        stream,
        stream_of(
            builtin_model, builtin_dataset().texts, 200, model=version.name, version=version.version
        ),
    )
    add_all(
        client,
        stream,
        stream_of(
            builtin_model, shifted_dataset().texts, 400, model=version.name, version=version.version
        ),
    )
    wait_for(lambda: processed(monitor, version.name) == 600)
    # The retrain request is sent (and recorded) right after the batch that drifted.
    wait_for(lambda: "last_trigger" in status(monitor, version.name)["versions"][0])

    (found,) = status(monitor, version.name)["versions"]
    assert found["reference_loaded"] and found["features"] == [
        "length",
        "score",
        "oov_rate",
        "tokens",
    ]
    assert "100% of events carry their text" in found["coverage"]
    assert found["last_window"]["sequence"] == "3" and found["last_window"]["drifted"]
    drift = {(d["feature"], d["metric"]): d for d in found["last_window"]["drift"]}
    assert drift[("tokens", "js")]["drifted"] and drift[("tokens", "js")]["threshold"] == 0.1
    assert found["last_trigger"]["outcome"] == "sent"  # windows 2 and 3 drifted
    assert client.llen(env["KLOOP_DRIFT_MONITOR_RETRAIN_QUEUE"]) == 1

    with grpc.insecure_channel(monitor.grpc_addr) as channel:
        stub = DriftServiceStub(channel)
        reply = stub.GetStatus(
            pb.GetStatusRequest(model=version.name, version=version.version), timeout=30
        )
        assert reply.versions[0].drift_detected and reply.consumer.connected
        with pytest.raises(grpc.RpcError) as info:
            stub.GetStatus(pb.GetStatusRequest(model="no-such-model"), timeout=30)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        html = stub.GetReport(
            pb.GetReportRequest(model=version.name, version=version.version), timeout=180
        )
    assert html.format == "html" and html.run_id == version.run_id and not html.content
    assert html.artifact_path.startswith("drift_reports/") and html.artifact_path.endswith(".html")
    assert html.current_rows > 0 and html.reference_rows == len(builtin_dataset().texts)

    code, headers, body = get(
        f"{monitor.http}/v1/reports/{version.name}/{version.version}?format=json"
    )
    assert code == 200 and headers["Content-Type"] == "application/json"
    report = json.loads(body)
    assert any("ValueDrift(column=oov_rate" in m["metric_name"] for m in report["metrics"])
    stored = {
        a.path for a in MlflowClient(mlflow_uri).list_artifacts(version.run_id, "drift_reports")
    }
    assert html.artifact_path in stored
    assert headers["X-Kloop-Report-Uri"].removeprefix(f"runs:/{version.run_id}/") in stored

    _, _, metrics = get(f"{monitor.http}/metrics")
    text = metrics.decode()
    labels = f'model="{version.name}",version="{version.version}"'
    assert f"kloop_drift_detected{{{labels}}} 1.0" in text
    assert f'kloop_drift_retrain_requests_total{{model="{version.name}"}} 1.0' in text
    assert "kloop_drift_consumer_lag" in text


def test_sigkill_during_a_backlog_then_restart_counts_every_event_once(
    running: Callable[..., Monitor],
    version: Version,
    builtin_model: SentimentClassifier,
    redis_url: str,
    registry: str,
    mlflow_uri: str,
    client: redis.Redis,
) -> None:
    env = monitor_env(redis_url, registry, mlflow_uri, BATCH_SIZE="100", TRIGGER_ENABLED="false")
    stream = env["KLOOP_DRIFT_MONITOR_EVENTS_STREAM"]
    total = 20_000
    add_all(
        client,
        stream,
        stream_of(
            builtin_model,
            builtin_dataset().texts,
            total,
            model=version.name,
            version=version.version,
        ),
    )
    state_key = f"{env['KLOOP_DRIFT_MONITOR_KEY_PREFIX']}:state:{version.name}:{version.version}"

    def counted() -> int:
        raw = client.get(state_key)
        return int(json.loads(raw)["events"]) if raw else 0

    for _ in range(2):  # killed twice, each time somewhere in the middle
        before = counted()
        monitor = running(env)
        wait_for(lambda before=before: counted() > before)  # making progress: kill it now
        os.kill(monitor.process.pid, signal.SIGKILL)
        monitor.process.stop(1)
    assert counted() < total, "the backlog drained before the kill: raise `total`"
    monitor = running(env)
    wait_for(lambda: counted() == total, timeout=120)
    (found,) = status(monitor, version.name)["versions"]
    assert found["events_processed"] == str(total) and found["duplicates_skipped"] == "0"
    assert client.xpending(stream, "kloop-drift-monitor")["pending"] == 0
    assert client.xlen(stream + ":dead") == 0
