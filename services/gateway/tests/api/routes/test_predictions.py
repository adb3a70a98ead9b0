"""POST /v1/models/{name}/predict and /predict:batch against the real inference server."""

from __future__ import annotations

import math
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis
from prometheus_client import REGISTRY

from kloop_core.api_keys import ApiKeyStore

from ...conftest import GatewayThread, InferenceThread, gateway_settings, redis_db, wait_until

PREDICT = "/v1/models/sentiment/predict"


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def predict(client: httpx.Client, text: str, model: str = "sentiment", **kw: Any) -> httpx.Response:
    return client.post(f"/v1/models/{model}/predict", json={"text": text}, **kw)


def test_predict_answers_with_label_score_and_model(client: httpx.Client) -> None:
    response = predict(client, "The food was great and the staff lovely")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"id", "label", "score", "model"}
    assert len(body["id"]) == 32 and body["label"] == "positive" and 0.5 <= body["score"] <= 1
    assert body["model"] == {"name": "sentiment", "version": "1", "alias": "production"}
    assert response.headers["x-request-id"]


def test_batch_keeps_order_and_gives_each_text_an_id(client: httpx.Client) -> None:
    texts = ["awful, cold and rude", "great food, lovely staff", "terrible service"]
    response = client.post("/v1/models/sentiment/predict:batch", json={"texts": texts})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["label"] for p in predictions] == ["negative", "positive", "negative"]
    assert len({p["id"] for p in predictions}) == 3
    single = predict(client, texts[1]).json()
    assert math.isclose(predictions[1]["score"], single["score"], rel_tol=1e-6)


# --- bad input (issue item 9) ------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   ", "\n\t "])
def test_empty_text_is_422(client: httpx.Client, text: str) -> None:
    response = predict(client, text)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "unprocessable"


def test_too_long_text_and_too_many_texts_are_422(
    client: httpx.Client, running_gateway: GatewayThread
) -> None:
    settings = running_gateway.settings
    long = predict(client, "a" * (settings.max_text_chars + 1))
    assert long.status_code == 422 and "limit" in long.json()["error"]["message"]
    many = client.post(
        "/v1/models/sentiment/predict:batch",
        json={"texts": ["ok"] * (settings.max_batch_texts + 1)},
    )
    assert many.status_code == 422 and "at most" in many.json()["error"]["message"]


def test_lone_surrogate_is_422_not_500(client: httpx.Client) -> None:
    response = client.post(
        PREDICT,
        content=b'{"text": "bad \\ud800 text"}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422


@pytest.mark.parametrize(
    "body", [b'{"text": "unterminated', b"not json", b'["a list"]', b'{"txt": "x"}', b""]
)
def test_malformed_json_is_422(client: httpx.Client, body: bytes) -> None:
    response = client.post(PREDICT, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "unprocessable"


def test_ten_megabyte_body_is_413(client: httpx.Client) -> None:
    started = time.monotonic()
    response = client.post(
        PREDICT,
        content=b'{"text": "' + b"a" * (10 * 1024 * 1024) + b'"}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert time.monotonic() - started < 5


def test_declared_oversize_body_is_refused_before_it_is_sent(
    running_gateway: GatewayThread,
) -> None:
    """The 413 comes back after the headers alone: nothing is buffered first."""
    with socket.create_connection(("127.0.0.1", running_gateway.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/models/sentiment/predict HTTP/1.1\r\nHost: t\r\n"
            b"Content-Type: application/json\r\nContent-Length: 10485760\r\n\r\n"
        )
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 413")


def test_chunked_oversize_body_is_cut_off_while_reading(running_gateway: GatewayThread) -> None:
    limit = running_gateway.settings.max_body_bytes

    def chunks() -> Any:
        yield b'{"text": "'
        for _ in range(limit // 65536 + 2):
            yield b"a" * 65536
        yield b'"}'

    with httpx.Client(base_url=running_gateway.url, timeout=10) as http:
        response = http.post(
            PREDICT, content=chunks(), headers={"content-type": "application/json"}
        )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_unknown_model_is_404(client: httpx.Client) -> None:
    response = predict(client, "fine", model="no-such-model")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_invalid_model_name_is_422(client: httpx.Client) -> None:
    assert predict(client, "fine", model="..bad").status_code == 422


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer kloop_0123456789ab_wrong"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"X-API-Key": "not-a-key"},
    ],
)
def test_missing_or_wrong_key_is_401(
    running_gateway: GatewayThread, headers: dict[str, str]
) -> None:
    response = httpx.post(running_gateway.url + PREDICT, json={"text": "x"}, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"


def test_x_api_key_header_works(running_gateway: GatewayThread, predict_token: str) -> None:
    response = httpx.post(
        running_gateway.url + PREDICT, json={"text": "nice"}, headers={"X-API-Key": predict_token}
    )
    assert response.status_code == 200


def test_revoked_key_is_401(running_gateway: GatewayThread, key_store: ApiKeyStore) -> None:
    key, token = key_store.create(["predict"])
    headers = {"Authorization": f"Bearer {token}"}
    url = running_gateway.url + PREDICT
    assert httpx.post(url, json={"text": "x"}, headers=headers).status_code == 200
    key_store.revoke(key.id)
    # Effective within auth_cache_seconds (1 s): a gateway trusts a verified key that long.
    wait_until(lambda: httpx.post(url, json={"text": "x"}, headers=headers).status_code == 401)


def test_wrong_scope_is_403(running_gateway: GatewayThread, key_store: ApiKeyStore) -> None:
    _, token = key_store.create(["feedback"])
    response = httpx.post(
        running_gateway.url + PREDICT,
        json={"text": "x"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"


def test_over_the_rate_limit_is_429_with_retry_after(
    running_gateway: GatewayThread, key_store: ApiKeyStore
) -> None:
    _, token = key_store.create(["predict"], rate_per_second=0.5, burst=3)
    before = metric("kloop_gateway_rate_limited_requests_total", scope="predict")
    with httpx.Client(
        base_url=running_gateway.url, headers={"Authorization": f"Bearer {token}"}
    ) as http:
        codes = [predict(http, "fine").status_code for _ in range(4)]
        refused = predict(http, "fine")
    assert codes == [200, 200, 200, 429] and refused.status_code == 429
    assert refused.json()["error"]["code"] == "resource_exhausted"
    assert 1 <= int(refused.headers["retry-after"]) <= 2  # a token every 2 s
    assert metric("kloop_gateway_rate_limited_requests_total", scope="predict") == before + 2


# --- inference down -------------------------------------------------------------------


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_inference_down_is_a_fast_503_with_retry_after(
    redis_url: str, key_store: ApiKeyStore, full_token: str
) -> None:
    settings = gateway_settings(
        redis_db(redis_url, 3), f"127.0.0.1:{_dead_port()}", inference_timeout_seconds=5.0
    )
    running = GatewayThread(settings)
    try:
        with httpx.Client(
            base_url=running.url, headers={"Authorization": f"Bearer {full_token}"}
        ) as http:
            timings = []
            for _ in range(5):
                started = time.perf_counter()
                response = predict(http, "anything")
                timings.append(time.perf_counter() - started)
                assert response.status_code == 503, response.text
                assert response.headers["retry-after"] == "1"
                assert response.json()["error"]["code"] == "unavailable"
            assert http.get("/readyz").status_code == 503
    finally:
        running.close()
    assert sorted(timings)[len(timings) // 2] < 0.1, timings
    assert max(timings) < 0.5, timings


# --- cache -----------------------------------------------------------------------------


def test_repeat_is_a_cache_hit_with_the_same_answer(
    client: httpx.Client, running_gateway: GatewayThread
) -> None:
    text = f"cache me {time.time_ns()}  please"
    first = predict(client, text)
    assert first.headers["x-kloop-cache-hits"] == "0"
    running_gateway.flush()
    hits = metric("kloop_gateway_cache_lookups_total", model="sentiment", result="hit")
    # Whitespace differences are the same canonical text, hence the same entry.
    second = predict(client, "  " + text.replace("  ", " \n ") + " ")
    assert second.headers["x-kloop-cache-hits"] == "1"
    assert second.json()["score"] == first.json()["score"]
    assert second.json()["model"] == first.json()["model"]
    assert second.json()["id"] != first.json()["id"]
    assert metric("kloop_gateway_cache_lookups_total", model="sentiment", result="hit") == hits + 1


def test_a_new_version_never_answers_from_the_old_cache(
    client: httpx.Client,
    running_gateway: GatewayThread,
    inference: InferenceThread,
    events_redis: redis.Redis,
) -> None:
    text = f"fine food but slow {time.time_ns()}"
    start = inference.serves("moving", "production")
    target = "3" if start != "3" else "1"
    old = predict(client, text, model="moving").json()
    running_gateway.flush()
    assert predict(client, text, model="moving").headers["x-kloop-cache-hits"] == "1"

    inference.move("moving", "production", target, events_redis)
    # From the moment inference answers with the new version, the gateway does too.
    fresh = predict(client, text, model="moving")
    assert fresh.json()["model"]["version"] == target
    assert fresh.headers["x-kloop-cache-hits"] == "0"
    assert fresh.json()["score"] != old["score"]
    running_gateway.flush()
    again = predict(client, text, model="moving")
    assert again.headers["x-kloop-cache-hits"] == "1"
    assert again.json()["model"]["version"] == target

    inference.move("moving", "production", start, events_redis)  # a rollback
    back = predict(client, text, model="moving").json()
    assert back["model"]["version"] == start and back["score"] == old["score"]


def test_without_events_a_learned_version_expires(
    redis_url: str, inference: InferenceThread, full_token: str
) -> None:
    """No registry events at all: the version learned from answers keys cache reads for
    at most learned_alias_ttl_seconds, then inference is asked again."""
    settings = gateway_settings(
        redis_db(redis_url, 3),
        inference.addr,
        model_events_stream="kloop:test:no-events",
        learned_alias_ttl_seconds=0.3,
    )
    running = GatewayThread(settings)
    try:
        with httpx.Client(
            base_url=running.url, headers={"Authorization": f"Bearer {full_token}"}
        ) as http:
            text = f"learned {time.time_ns()}"
            predict(http, text)
            running.flush()
            assert predict(http, text).headers["x-kloop-cache-hits"] == "1"
            time.sleep(0.4)
            assert predict(http, text).headers["x-kloop-cache-hits"] == "0"
    finally:
        running.close()


# --- traffic policy ---------------------------------------------------------------------


def test_canary_weight_routes_about_that_share(
    client: httpx.Client, traffic: Callable[..., None]
) -> None:
    traffic("sentiment", canary_percent=30)
    n = 400
    aliases = Counter(predict(client, f"routing {i}").json()["model"]["alias"] for i in range(n))
    # Binomial(400, 0.3): mean 120, sd 9.2; 4.5 sd either side (fails ~1 in 150,000).
    assert 79 <= aliases["canary"] <= 161, aliases
    assert aliases["canary"] + aliases["production"] == n
    canary = predict(client, "great").json()
    versions = {"canary": "3", "production": "1"}
    assert canary["model"]["version"] == versions[canary["model"]["alias"]]


def test_sticky_route_keys_always_get_the_same_alias(
    client: httpx.Client, traffic: Callable[..., None]
) -> None:
    traffic("sentiment", canary_percent=50, sticky=True)
    header = "X-Kloop-Route-Key"
    chosen = {}
    for key in (f"user-{i}" for i in range(40)):
        seen = {
            predict(client, f"text {j}", headers={header: key}).json()["model"]["alias"]
            for j in range(5)
        }
        assert len(seen) == 1, (key, seen)
        chosen[key] = seen.pop()
    assert 5 <= sum(alias == "canary" for alias in chosen.values()) <= 35


def test_missing_canary_falls_back_to_production(
    client: httpx.Client, traffic: Callable[..., None]
) -> None:
    traffic("solo", canary_percent=100)
    for _ in range(3):
        body = predict(client, "fine", model="solo").json()
        assert body["model"] == {"name": "solo", "version": "1", "alias": "production"}


def test_shadow_answers_are_compared_but_never_returned(
    client: httpx.Client, running_gateway: GatewayThread, traffic: Callable[..., None]
) -> None:
    traffic("sentiment", shadow_percent=100)
    labels = {"model": "sentiment", "primary_alias": "production"}
    disagree = metric("kloop_gateway_shadow_comparisons_total", **labels, agreement="disagree")
    compared = metric("kloop_gateway_shadow_requests_total", model="sentiment", outcome="compared")
    for i in range(10):
        body = predict(client, f"great food, lovely staff {i}").json()
        # The challenger (v2) scores the opposite; only production's answer comes back.
        assert body["model"]["alias"] == "production" and body["model"]["version"] == "1"
        assert body["label"] == "positive"

    def settled() -> bool:
        done = metric("kloop_gateway_shadow_requests_total", model="sentiment", outcome="compared")
        skipped = metric(
            "kloop_gateway_shadow_requests_total", model="sentiment", outcome="skipped"
        )
        return done + skipped >= compared + 10

    wait_until(settled)
    compared_now = metric(
        "kloop_gateway_shadow_requests_total", model="sentiment", outcome="compared"
    )
    assert compared_now > compared
    assert metric(
        "kloop_gateway_shadow_comparisons_total", **labels, agreement="disagree"
    ) >= disagree + (compared_now - compared)
    assert metric("kloop_gateway_shadow_score_difference_count", **labels) > 0


# --- prediction events ------------------------------------------------------------------


def test_each_prediction_lands_in_the_event_stream(
    client: httpx.Client, running_gateway: GatewayThread, events_redis: redis.Redis
) -> None:
    body = predict(client, "Loved   it, would come back").json()
    running_gateway.flush()
    entries = events_redis.xrevrange("kloop:prediction-events", count=50)
    (event,) = [fields for _, fields in entries if fields["id"] == body["id"]]
    assert event["model"] == "sentiment" and event["version"] == "1"
    assert event["alias"] == "production" and event["label"] == body["label"]
    assert float(event["score"]) == body["score"]
    assert event["tokens"] == "5" and event["chars"] == str(len("Loved it, would come back"))
    assert float(event["latency_seconds"]) > 0 and event["schema"] == "1"
    assert "text" not in event  # raw text only when configured
