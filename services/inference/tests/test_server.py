"""Start-up readiness, bounded waiting, limits, tracing, and the real entry point."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kloop.oip.v2 import grpc_predict_v2_pb2 as pb
from kloop.oip.v2.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from kloop_client.local import free_port
from kloop_inference.repository import LocalRepositorySource
from kloop_inference.sync import AliasEvent, ModelRef

from .conftest import ServerThread, make_settings

BODY = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["great"]}]}


class GatedSource:
    """The local repository, but downloads wait until the test opens the gate."""

    def __init__(self, root: Path) -> None:
        self._inner = LocalRepositorySource(root)
        self.gate: asyncio.Event | None = None

    async def resolve(self, name: str, alias: str) -> ModelRef | None:
        return await self._inner.resolve(name, alias)

    async def fetch(self, ref: ModelRef) -> bytes:
        self.gate = self.gate or asyncio.Event()
        await self.gate.wait()
        return await self._inner.fetch(ref)

    def watch(self, after_event_id: str) -> AsyncIterator[AliasEvent]:
        return self._inner.watch(after_event_id)

    async def close(self) -> None:
        await self._inner.close()


def open_gate(running: ServerThread, source: GatedSource) -> None:
    async def wait_for_fetch_then_open() -> None:
        while source.gate is None:  # noqa: ASYNC110 - a test polls state
            await asyncio.sleep(0.005)
        source.gate.set()

    running.call(wait_for_fetch_then_open)


def test_not_ready_until_warm_and_requests_wait_meanwhile(repository: Path) -> None:
    source = GatedSource(repository)
    with ServerThread(make_settings(startup_wait_seconds=30), source) as running:
        http = httpx.Client(base_url=f"http://{running.http}", timeout=30)
        assert http.get("/v2/health/ready").status_code == 503
        assert http.get("/readyz").json() == {"ready": False}
        assert http.get("/v2/models/sentiment/ready").status_code == 503
        with grpc.insecure_channel(running.grpc) as channel:
            assert not GRPCInferenceServiceStub(channel).ServerReady(pb.ServerReadyRequest()).ready
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING

        answers: list[httpx.Response] = []
        waiting = threading.Thread(
            target=lambda: answers.append(http.post("/v2/models/sentiment/infer", json=BODY))
        )
        waiting.start()
        time.sleep(0.2)
        assert not answers  # the request waits for the model instead of failing
        open_gate(running, source)
        waiting.join(30)
        assert answers[0].status_code == 200
        assert answers[0].json()["model_version"] == "1"
        assert http.get("/v2/health/ready").status_code == 200
        with grpc.insecure_channel(running.grpc) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_waiting_is_bounded_then_503_with_retry_after(repository: Path) -> None:
    source = GatedSource(repository)
    settings = make_settings(startup_wait_seconds=0.1, max_request_bytes=2048)
    with ServerThread(settings, source) as running:
        http = httpx.Client(base_url=f"http://{running.http}", timeout=30)
        response = http.post("/v2/models/sentiment/infer", json=BODY)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert response.json() == {"error": "model 'sentiment' (production) is still loading"}
        with grpc.insecure_channel(running.grpc) as channel:
            request = pb.ModelInferRequest(model_name="sentiment")
            with pytest.raises(grpc.RpcError) as info:
                GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert dict(info.value.trailing_metadata())["retry-after"] == "1"
        too_big = http.post("/v2/models/sentiment/infer", content=b"x" * 4096)
        assert too_big.status_code == 413
        assert too_big.json() == {"error": "request body of 4096 bytes exceeds 2048"}
        open_gate(running, source)


def test_each_request_is_a_span_with_model_and_version(repository: Path) -> None:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with ServerThread(make_settings(model_repository=repository, trace_requests=True)) as running:
        running.wait_ready()
        parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        response = httpx.post(
            f"http://{running.http}/v2/models/sentiment/infer",
            json=BODY,
            headers={"traceparent": parent},
        )
        assert response.status_code == 200
    spans = [s for s in exporter.get_finished_spans() if s.name == "http ModelInfer"]
    assert len(spans) == 1
    assert spans[0].attributes is not None
    assert spans[0].attributes["kloop.model.name"] == "sentiment"
    assert spans[0].attributes["kloop.model.version"] == "1"
    assert format(spans[0].context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"


def test_the_entry_point_serves_and_stops_cleanly_on_sigterm(repository: Path) -> None:
    http_port, grpc_port = free_port(), free_port()
    env = {
        **os.environ,
        "KLOOP_INFERENCE_MODEL_REPOSITORY": str(repository),
        "KLOOP_INFERENCE_MODELS": '{"sentiment": ["production"]}',
        "KLOOP_INFERENCE_HTTP_PORT": str(http_port),
        "KLOOP_INFERENCE_GRPC_PORT": str(grpc_port),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "kloop_inference.main"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{http_port}/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.1)
        answer = httpx.post(f"http://127.0.0.1:{http_port}/v2/models/sentiment/infer", json=BODY)
        assert answer.json()["model_version"] == "1"
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    output = process.stdout.read().decode() if process.stdout else ""
    assert "inference server stopped" in output


def test_invalid_configuration_exits_with_status_2() -> None:
    env = {**os.environ, "KLOOP_INFERENCE_MODELS": '{"sentiment": ["canary"]}'}
    completed = subprocess.run(
        [sys.executable, "-m", "kloop_inference.main"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 2
    assert "KLOOP_INFERENCE_MODELS" in completed.stderr
    assert "must include the 'production' alias" in completed.stderr
