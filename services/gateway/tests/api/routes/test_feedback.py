"""POST /v1/feedback: stored once per prediction and streamed for live accuracy."""

from __future__ import annotations

import httpx
import pytest
import redis

from kloop_core.api_keys import ApiKeyStore

from ...conftest import GatewayThread


def _predict(client: httpx.Client, text: str = "great food, lovely staff") -> dict[str, object]:
    response = client.post("/v1/models/sentiment/predict", json={"text": text})
    assert response.status_code == 200
    body: dict[str, object] = response.json()
    return body


def test_feedback_round_trip(client: httpx.Client, events_redis: redis.Redis) -> None:
    prediction = _predict(client)
    # No flush first: feedback right after the prediction must find it.
    response = client.post(
        "/v1/feedback", json={"prediction_id": prediction["id"], "label": "negative"}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "prediction_id": prediction["id"],
        "label": "negative",
        "status": "recorded",
    }
    assert events_redis.get(f"kloop:gw:feedback:{prediction['id']}") == "negative"
    assert events_redis.ttl(f"kloop:gw:feedback:{prediction['id']}") > 0
    entries = events_redis.xrevrange("kloop:feedback-events", count=20)
    (event,) = [f for _, f in entries if f["prediction_id"] == prediction["id"]]
    assert event["label"] == "negative" and event["predicted_label"] == prediction["label"]
    assert event["model"] == "sentiment" and event["version"] == "1"
    assert event["alias"] == "production" and float(event["score"]) == prediction["score"]
    assert event["prediction_time"] and event["time"]


def test_same_label_again_is_a_duplicate_and_another_is_409(
    client: httpx.Client, events_redis: redis.Redis
) -> None:
    prediction_id = _predict(client)["id"]
    body = {"prediction_id": prediction_id, "label": "positive"}
    assert client.post("/v1/feedback", json=body).json()["status"] == "recorded"
    length = events_redis.xlen("kloop:feedback-events")
    assert client.post("/v1/feedback", json=body).json()["status"] == "duplicate"
    conflict = client.post("/v1/feedback", json={**body, "label": "negative"})
    assert conflict.status_code == 409
    assert "already recorded as 'positive'" in conflict.json()["error"]["message"]
    assert events_redis.xlen("kloop:feedback-events") == length  # streamed once


@pytest.mark.parametrize("prediction_id", ["0" * 32, "not-an-id", "f" * 64])
def test_unknown_prediction_is_404(client: httpx.Client, prediction_id: str) -> None:
    response = client.post(
        "/v1/feedback", json={"prediction_id": prediction_id, "label": "positive"}
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    "body",
    [{"prediction_id": "0" * 32, "label": "maybe"}, {"label": "positive"}, {"prediction_id": ""}],
)
def test_bad_feedback_is_422(client: httpx.Client, body: dict[str, str]) -> None:
    assert client.post("/v1/feedback", json=body).status_code == 422


def test_feedback_needs_the_feedback_scope(
    running_gateway: GatewayThread, predict_token: str, key_store: ApiKeyStore
) -> None:
    url = running_gateway.url + "/v1/feedback"
    body = {"prediction_id": "0" * 32, "label": "positive"}
    denied = httpx.post(url, json=body, headers={"Authorization": f"Bearer {predict_token}"})
    assert denied.status_code == 403
    _, token = key_store.create(["feedback"])
    allowed = httpx.post(url, json=body, headers={"Authorization": f"Bearer {token}"})
    assert allowed.status_code == 404  # past auth: the id is unknown
