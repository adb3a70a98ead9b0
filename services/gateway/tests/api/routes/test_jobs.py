"""/v1/jobs: batch scoring jobs. The gateway saves the job and hands it to the worker as
a Celery message (checked on the broker list); here the test plays the worker's part by
writing results in the shared Redis layout (kloop_worker.jobs documents it; the worker's
own tests run the real worker against this same code)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from kloop_core.api_keys import ApiKeyStore
from kloop_gateway.app import create_app

from ...conftest import InferenceThread, gateway_settings

JOB = "kloop:jobs"


def make_client(redis_url: str, inference_addr: str) -> TestClient:
    return TestClient(create_app(gateway_settings(redis_url, inference_addr), serve_grpc=False))


@pytest.fixture
def app_client(
    gateway_redis_url: str,
    inference: InferenceThread,
    events_redis: redis.Redis,
    full_token: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[TestClient]:
    monkeypatch.setenv("KLOOP_GATEWAY_JOBS_MAX_INLINE_TEXTS", "5")
    monkeypatch.setenv("KLOOP_GATEWAY_JOBS_RESULT_TTL_SECONDS", "600")
    with make_client(gateway_redis_url, inference.addr) as client:
        client.headers["Authorization"] = f"Bearer {full_token}"
        yield client
    events_redis.delete("scoring")


def sent_tasks(r: redis.Redis) -> list[dict[str, Any]]:
    """The Celery messages waiting on the scoring queue (kombu's JSON envelope)."""
    messages = [json.loads(raw) for raw in r.lrange("scoring", 0, -1)]
    return [
        {"task": m["headers"]["task"], "args": json.loads(base64.b64decode(m["body"]))[0]}
        for m in messages
    ]


def play_worker(r: redis.Redis, job_id: str, chunks: list[list[list[Any]]], size: int) -> None:
    """What the worker does: plan (running, chunking) and write chunks."""
    total = r.llen(f"{JOB}:{job_id}:input")
    r.hset(
        f"{JOB}:{job_id}",
        mapping={"status": "running", "chunk_size": size, "chunks": -(-total // size)},
    )
    for index, rows in enumerate(chunks):
        if not r.sadd(f"{JOB}:{job_id}:done", index):
            continue  # written before: once only, as the worker does
        r.set(f"{JOB}:{job_id}:chunk:{index}", json.dumps({"version": "4", "rows": rows}))
        r.hincrby(f"{JOB}:{job_id}", "chunks_done", 1)
        r.hincrby(f"{JOB}:{job_id}", "scored", sum(row[0] is not None for row in rows))
        r.hincrby(f"{JOB}:{job_id}", "failed", sum(row[0] is None for row in rows))


def test_create_then_read_status_and_pages(
    app_client: TestClient, events_redis: redis.Redis
) -> None:
    texts = ["  great   food ", "awful", "fine", "bad", "good"]
    created = app_client.post("/v1/jobs", json={"model": "sentiment", "texts": texts})
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    assert created.json() == {"id": job_id, "status": "queued"}
    assert created.headers["location"] == f"/v1/jobs/{job_id}"
    # Saved with the canonical texts, and handed to the worker by task name.
    assert events_redis.lrange(f"{JOB}:{job_id}:input", 0, -1)[0] == "great food"
    assert {"task": "kloop.score_job", "args": [job_id]} in sent_tasks(events_redis)
    assert events_redis.zscore(f"{JOB}:active", job_id) is not None

    status = app_client.get(f"/v1/jobs/{job_id}").json()
    assert status["status"] == "queued" and status["model"] == "sentiment"
    assert status["version"] == "production" and status["progress"] == 0
    counts = {"total": 5, "scored": 0, "failed": 0, "chunks": 0, "chunks_done": 0}
    assert status["counts"] == counts
    assert status["results"] == f"/v1/jobs/{job_id}/results" and status["expires_at"] is None

    play_worker(events_redis, job_id, [[[0.9, None], [0.1, None]]], size=2)
    page = app_client.get(f"/v1/jobs/{job_id}/results", params={"limit": 10}).json()
    assert page["status"] == "running" and page["next_cursor"] == "2"
    row = {"index": 0, "score": 0.9, "label": "positive", "version": "4", "error": None}
    assert page["items"][0] == row
    assert page["items"][1]["label"] == "negative"
    assert app_client.get(f"/v1/jobs/{job_id}").json()["progress"] == pytest.approx(1 / 3)

    play_worker(
        events_redis,
        job_id,
        [[[0.9, None], [0.1, None]], [[0.6, None], [None, "empty text"]], [[0.7, None]]],
        size=2,
    )
    events_redis.hset(f"{JOB}:{job_id}", mapping={"status": "succeeded", "finished_at": "100"})
    first = app_client.get(f"/v1/jobs/{job_id}/results", params={"cursor": 1, "limit": 2}).json()
    assert [item["index"] for item in first["items"]] == [1, 2] and first["next_cursor"] == "3"
    rest = app_client.get(f"/v1/jobs/{job_id}/results", params={"cursor": 3}).json()
    failed = {"index": 3, "score": None, "label": None, "version": None, "error": "empty text"}
    assert rest["items"][0] == failed
    assert rest["next_cursor"] is None
    done = app_client.get(f"/v1/jobs/{job_id}").json()
    assert done["status"] == "succeeded" and done["progress"] == 1.0
    assert done["expires_at"] == "1970-01-01T00:11:40Z"  # finished_at + result_ttl


def test_cancel(app_client: TestClient, events_redis: redis.Redis) -> None:
    job_id = app_client.post("/v1/jobs", json={"model": "sentiment", "texts": ["a"]}).json()["id"]
    cancelled = app_client.delete(f"/v1/jobs/{job_id}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None
    assert 0 < events_redis.ttl(f"{JOB}:{job_id}") <= 600
    assert not events_redis.exists(f"{JOB}:{job_id}:input")
    assert app_client.delete(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
    page = app_client.get(f"/v1/jobs/{job_id}/results").json()
    assert page == {"id": job_id, "status": "cancelled", "items": [], "next_cursor": None}

    finished = app_client.post("/v1/jobs", json={"model": "sentiment", "texts": ["a"]}).json()
    events_redis.hset(f"{JOB}:{finished['id']}", "status", "succeeded")
    conflict = app_client.delete(f"/v1/jobs/{finished['id']}")
    assert conflict.status_code == 409 and "already succeeded" in conflict.text


def test_a_dataset_job(app_client: TestClient, events_redis: redis.Redis) -> None:
    body = {"model": "sentiment", "version": "3", "dataset_uri": "file:///data/texts.jsonl"}
    job_id = app_client.post("/v1/jobs", json=body).json()["id"]
    record = events_redis.hgetall(f"{JOB}:{job_id}")
    assert record["source"] == "uri" and record["dataset_uri"] == body["dataset_uri"]
    assert record["version"] == "3" and record["total"] == "0"
    assert not events_redis.exists(f"{JOB}:{job_id}:input")  # the worker reads the file


@pytest.mark.parametrize(
    "body",
    [
        {"model": "sentiment"},
        {"model": "sentiment", "texts": ["a"], "dataset_uri": "/data/x.jsonl"},
        {"model": "sentiment", "texts": []},
        {"model": "sentiment", "texts": ["ok", "   "]},
        {"model": "sentiment", "texts": ["a"] * 6},  # max_inline_texts is 5 here
        {"model": "sentiment", "dataset_uri": "relative/x.jsonl"},
        {"model": "sentiment", "dataset_uri": "s3://bucket/x.jsonl"},
        {"model": "sentiment", "texts": ["a"], "version": "latest"},
        {"model": "bad name", "texts": ["a"]},
    ],
)
def test_bad_requests_are_422(app_client: TestClient, body: dict[str, Any]) -> None:
    response = app_client.post("/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] in ("unprocessable", "invalid_argument")


def test_unknown_and_malformed_ids(app_client: TestClient) -> None:
    assert app_client.get(f"/v1/jobs/{'0' * 32}").status_code == 404
    assert app_client.get(f"/v1/jobs/{'0' * 32}/results").status_code == 404
    assert app_client.delete(f"/v1/jobs/{'0' * 32}").status_code == 404
    assert app_client.get("/v1/jobs/not-an-id").status_code == 422
    assert app_client.get(f"/v1/jobs/{'0' * 32}/results?cursor=-1").status_code == 422


def test_jobs_belong_to_their_key(
    app_client: TestClient, predict_token: str, key_store: ApiKeyStore
) -> None:
    job_id = app_client.post("/v1/jobs", json={"model": "sentiment", "texts": ["a"]}).json()["id"]
    other = {"Authorization": f"Bearer {predict_token}"}
    assert app_client.get(f"/v1/jobs/{job_id}", headers=other).status_code == 404
    assert app_client.delete(f"/v1/jobs/{job_id}", headers=other).status_code == 404
    own = app_client.post("/v1/jobs", json={"model": "m", "texts": ["a"]}, headers=other)
    assert own.status_code == 202
    # The full key has the admin scope: it sees every job.
    assert app_client.get(f"/v1/jobs/{own.json()['id']}").status_code == 200
    _, feedback_only = key_store.create(["feedback"], name="no-predict")
    denied = app_client.get(
        f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {feedback_only}"}
    )
    assert denied.status_code == 403
    assert app_client.get(f"/v1/jobs/{job_id}", headers={"Authorization": ""}).status_code == 401


def test_no_broker_is_503_and_leaves_no_job(
    gateway_redis_url: str,
    inference: InferenceThread,
    events_redis: redis.Redis,
    full_token: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KLOOP_GATEWAY_JOBS_BROKER_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("KLOOP_GATEWAY_JOBS_SEND_TIMEOUT_SECONDS", "0.5")
    before = set(events_redis.keys(f"{JOB}:*"))
    with make_client(gateway_redis_url, inference.addr) as client:
        response = client.post(
            "/v1/jobs",
            json={"model": "sentiment", "texts": ["a"]},
            headers={"Authorization": f"Bearer {full_token}"},
        )
    assert response.status_code == 503 and response.headers["retry-after"] == "2"
    assert set(events_redis.keys(f"{JOB}:*")) == before
