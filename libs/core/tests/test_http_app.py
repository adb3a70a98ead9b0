from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from pydantic import BaseModel, Field

from kloop_core import errors
from kloop_core.http_app import create_http_app
from kloop_core.logging import request_id_var


class Item(BaseModel):
    name: str = Field(min_length=1)
    quantity: int = Field(ge=1)


class State:
    ready = True


def build_app() -> FastAPI:
    app = create_http_app(service="http-test", readiness=lambda: State.ready)

    @app.get("/items/{item_id}")
    def get_item(item_id: int) -> dict[str, Any]:
        if item_id == 404:
            raise errors.NotFound(f"item {item_id} not found", details={"item_id": item_id})
        if item_id == 503:
            raise errors.Unavailable("store is down", retry_after=2.2)
        if item_id == 429:
            raise errors.ResourceExhausted("slow down")
        return {"id": item_id, "request_id": request_id_var.get()}

    @app.post("/items")
    def create_item(item: Item) -> Item:
        return item

    @app.get("/teapot")
    def teapot() -> None:
        raise HTTPException(status_code=418, detail="short and stout")

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("connection string postgres://app:hunter2@db/prod")

    @app.get("/redis-down")
    def redis_down() -> None:
        raise redis.ConnectionError("Error 111 connecting to 10.0.0.7:6379")

    return app


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(build_app()) as test_client:
        yield test_client


def test_livez_and_metrics(client: TestClient) -> None:
    assert client.get("/livez").json() == {"status": "ok"}
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'kloop_build_info{service="http-test",version="0.1.0"} 1.0' in metrics.text


def test_readyz_follows_the_readiness_check(client: TestClient) -> None:
    try:
        assert client.get("/readyz").status_code == 200
        State.ready = False
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert response.json() == {"error": {"code": "not_ready", "message": "not ready"}}
    finally:
        State.ready = True


def test_async_and_failing_readiness_checks() -> None:
    async def async_ready() -> bool:
        await asyncio.sleep(0)
        return False

    def broken() -> bool:
        raise ConnectionError("redis down")

    with TestClient(create_http_app(service="a", readiness=async_ready)) as c:
        assert c.get("/readyz").status_code == 503
    with TestClient(create_http_app(service="b", readiness=broken)) as c:
        response = c.get("/readyz")
        assert response.status_code == 503
        assert response.json()["error"]["message"] == "readiness check failed"
    with TestClient(create_http_app(service="c")) as c:
        assert c.get("/readyz").status_code == 200


@pytest.mark.parametrize(
    ("item_id", "status", "code", "retry_after"),
    [
        (404, 404, "not_found", None),
        (503, 503, "unavailable", "3"),
        (429, 429, "resource_exhausted", "1"),
    ],
)
def test_kloop_errors_become_the_error_contract(
    client: TestClient, item_id: int, status: int, code: str, retry_after: str | None
) -> None:
    response = client.get(f"/items/{item_id}")
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert response.headers.get("retry-after") == retry_after


def test_error_details_are_included(client: TestClient) -> None:
    assert client.get("/items/404").json() == {
        "error": {"code": "not_found", "message": "item 404 not found", "details": {"item_id": 404}}
    }


def test_validation_errors_name_the_field(client: TestClient) -> None:
    response = client.post("/items", json={"name": "", "quantity": "many", "secret": "s3"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "unprocessable"
    assert "body.name" in error["message"] and "body.quantity" in error["message"]
    assert {f["field"] for f in error["details"]["fields"]} == {"body.name", "body.quantity"}
    assert "many" not in response.text  # inputs are not echoed back

    bad_path = client.get("/items/abc")
    assert bad_path.status_code == 422 and "path.item_id" in bad_path.json()["error"]["message"]

    not_json = client.post(
        "/items", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 422


def test_http_exceptions_keep_their_status(client: TestClient) -> None:
    assert client.get("/teapot").json() == {
        "error": {"code": "i_m_a_teapot", "message": "short and stout"}
    }
    missing = client.get("/no/such/route")
    assert missing.status_code == 404
    assert missing.json() == {"error": {"code": "not_found", "message": "Not Found"}}
    wrong_method = client.delete("/items/1")
    assert wrong_method.status_code == 405 and "allow" in wrong_method.headers


def test_unhandled_exception_is_a_generic_500_and_logged(
    client: TestClient, log_lines: Any
) -> None:
    response = client.get("/boom", headers={"X-Request-ID": "req-boom"})
    assert response.status_code == 500
    assert response.json() == {
        "error": {"code": "internal", "message": "internal error (request id req-boom)"}
    }
    assert response.headers["x-request-id"] == "req-boom"
    assert "hunter2" not in response.text and "postgres" not in response.text
    logged = [line for line in log_lines() if line["event"] == "unhandled exception"]
    assert logged and logged[0]["request_id"] == "req-boom"
    assert "RuntimeError" in logged[0]["exception"]
    assert "hunter2" not in logged[0]["exception"]


def test_dependency_down_is_a_503(client: TestClient) -> None:
    response = client.get("/redis-down")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert "10.0.0.7" not in response.text


def test_request_id_in_and_out(client: TestClient) -> None:
    response = client.get("/items/1", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    assert response.json()["request_id"] == "abc-123"

    generated = client.get("/items/1", headers={"X-Request-ID": "not ok!"})
    assert generated.headers["x-request-id"] != "not ok!"
    assert len(generated.headers["x-request-id"]) == 32
    assert generated.json()["request_id"] == generated.headers["x-request-id"]
    assert client.get("/no/such/route").headers["x-request-id"]


def test_metrics_are_labelled_by_route_template(client: TestClient) -> None:
    def count(route: str, code: str, method: str = "GET") -> float:
        labels = {"service": "http-test", "route": route, "method": method, "code": code}
        return REGISTRY.get_sample_value("kloop_http_requests_total", labels) or 0.0

    before_ok = count("/items/{item_id}", "200")
    before_nf = count("/items/{item_id}", "404")
    before_unmatched = count("unmatched", "404")
    before_boom = count("/boom", "500")
    for item_id in (7, 8, 9):
        client.get(f"/items/{item_id}")
    client.get("/items/404")
    client.get("/random/path/123")
    client.get("/boom")
    assert count("/items/{item_id}", "200") == before_ok + 3
    assert count("/items/{item_id}", "404") == before_nf + 1
    assert count("unmatched", "404") == before_unmatched + 1
    assert count("/boom", "500") == before_boom + 1
    text = client.get("/metrics").text
    assert "/items/7" not in text and "/random/path" not in text
    assert (
        REGISTRY.get_sample_value(
            "kloop_http_request_duration_seconds_count",
            {"service": "http-test", "route": "/items/{item_id}", "method": "GET"},
        )
        or 0
    ) >= 4


def test_unknown_http_methods_fold_into_one_label(client: TestClient) -> None:
    client.request("BREW", "/items/1")
    labels = {"service": "http-test", "route": "/items/{item_id}", "method": "other"}
    assert REGISTRY.get_sample_value("kloop_http_request_duration_seconds_count", labels)


def test_bodies_over_the_limit_are_413_declared_or_streamed() -> None:
    app = create_http_app(service="limit-test", max_body_bytes=100)

    @app.post("/echo")
    def echo(item: Item) -> Item:
        return item

    with TestClient(app) as c:
        assert c.post("/echo", json={"name": "ok", "quantity": 1}).status_code == 200
        declared = c.post("/echo", content=b"x" * 101, headers={"content-type": "application/json"})
        assert declared.status_code == 413
        assert declared.json()["error"]["code"] == "payload_too_large"
        assert declared.headers["x-request-id"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: cut off while reading
            yield b'{"name": "'
            yield b"y" * 200

        streamed = c.post("/echo", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413, streamed.text


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"name": "caf\xe9", "quantity": 1}', "request body is not valid UTF-8"),
        (b'{"name": ', "JSON decode error"),
    ],
)
def test_undecodable_bodies_are_422_with_a_clear_message(
    client: TestClient, body: bytes, message: str
) -> None:
    response = client.post("/items", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert message in response.json()["error"]["message"]
