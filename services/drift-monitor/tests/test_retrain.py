"""The Celery retrain request, read back from a real Redis broker as kombu stored it."""

from __future__ import annotations

import base64
import json
import uuid

import redis

from kloop_drift_monitor.retrain import CeleryRetrainRequester, retrain_task_id


def test_request_lands_on_the_training_queue_as_a_kloop_retrain_task(
    redis_url: str, client: redis.Redis
) -> None:
    queue = f"test-training-{uuid.uuid4().hex[:8]}"
    requester = CeleryRetrainRequester(redis_url, queue=queue)
    evidence = {"trigger_id": "sentiment:3:7", "windows": [{"sequence": 7, "drifted": True}]}
    try:
        task_id = requester.request_retrain("sentiment", evidence)
    finally:
        requester.close()
    assert task_id == retrain_task_id("sentiment:3:7")  # deterministic per trigger
    (raw,) = client.lrange(queue, 0, -1)
    message = json.loads(raw)
    assert message["headers"]["task"] == "kloop.retrain"
    assert message["headers"]["id"] == task_id
    assert message["content-type"] == "application/json"
    assert message["properties"]["delivery_info"]["routing_key"] == queue
    args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    assert args == ["sentiment", evidence] and kwargs == {}


def test_unreachable_broker_fails_fast() -> None:
    requester = CeleryRetrainRequester("redis://127.0.0.1:1/0", timeout_seconds=0.5)
    try:
        try:
            requester.request_retrain("sentiment", {"trigger_id": "x"})
        except Exception as e:  # kombu's OperationalError: the caller records a failure
            assert "connect" in str(e).lower() or "refused" in str(e).lower()
        else:
            raise AssertionError("sending to a dead broker must raise")
    finally:
        requester.close()
