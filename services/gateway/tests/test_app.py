"""The HTTP app's ops endpoints, docs and gRPC health, and start-up settings."""

from __future__ import annotations

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import ValidationError

from kloop_gateway.settings import GatewaySettings

from .conftest import GatewayThread, wait_until


def test_ops_endpoints(client: httpx.Client) -> None:
    assert client.get("/livez").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    client.post("/v1/models/sentiment/predict", json={"text": "fine"})
    metrics = client.get("/metrics").text
    assert 'route="/v1/models/{name}/predict"' in metrics  # RED by route template
    for series in (
        "kloop_http_requests_total",
        "kloop_gateway_predictions_total",
        "kloop_gateway_cache_lookups_total",
        "kloop_gateway_upstream_request_duration_seconds_bucket",
    ):
        assert series in metrics


def test_openapi_documents_routes_and_auth(client: httpx.Client) -> None:
    assert client.get("/docs").status_code == 200
    document = client.get("/openapi.json").json()
    assert {
        "/v1/models/{name}/predict",
        "/v1/models/{name}/predict:batch",
        "/v1/feedback",
        "/v1/models/{name}/traffic",
    } <= set(document["paths"])
    schemes = document["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} == {"http", "apiKey"}
    responses = document["paths"]["/v1/models/{name}/predict"]["post"]["responses"]
    assert {"401", "403", "404", "413", "422", "429", "503"} <= set(responses)


def test_grpc_health_follows_readiness(running_gateway: GatewayThread) -> None:
    with grpc.insecure_channel(running_gateway.grpc_addr) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="kloop.gateway.v1.GatewayService")
        wait_until(
            lambda: stub.Check(request, timeout=2).status == health_pb2.HealthCheckResponse.SERVING
        )


@pytest.mark.parametrize(
    "bad",
    [
        {"labels": ["same", "same"]},
        {"canary_percent": 120},
        {"max_body_bytes": 2048, "max_text_chars": 4096},
        {"route_key_header": "bad header"},
    ],
)
def test_invalid_settings_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        GatewaySettings(**bad)  # type: ignore[arg-type]


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLOOP_GATEWAY_CANARY_PERCENT", "12.5")
    monkeypatch.setenv("KLOOP_GATEWAY_AUTH_ENABLED", "false")
    monkeypatch.setenv("KLOOP_GATEWAY_LABELS", '["bad", "good"]')
    settings = GatewaySettings()
    assert settings.canary_percent == 12.5 and not settings.auth_enabled
    assert settings.labels == ("bad", "good")
    assert (settings.grpc_port, settings.http_port) == (50154, 18154)
