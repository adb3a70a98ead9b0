"""/v1/documents: the gateway saves document records and texts in the Redis layout of
kloop_worker.documents and hands them to the worker by task name (checked on the broker
list); collections are checked with the vector store's GetCollection (a stand-in gRPC
server here; the worker's own tests run the real worker and vector store against this
same code)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
import redis
from fastapi.testclient import TestClient

from kloop.vectorstore.v1 import vectorstore_pb2 as pb
from kloop.vectorstore.v1 import vectorstore_pb2_grpc as pb_grpc
from kloop_client.local import free_port
from kloop_gateway.app import create_app

from ...conftest import InferenceThread, gateway_settings

DOCS = "kloop:docs"


class Collections(pb_grpc.VectorStoreServiceServicer):  # type: ignore[misc]
    def GetCollection(self, request: pb.GetCollectionRequest, context: Any) -> pb.Collection:
        if request.name != "docs":
            context.abort(grpc.StatusCode.NOT_FOUND, f"no collection {request.name!r}")
        return pb.Collection(name="docs", vector_size=8, embedding_model="embedder")


@pytest.fixture(scope="module")
def vectorstore_addr() -> Iterator[str]:
    server = grpc.server(ThreadPoolExecutor(2))
    pb_grpc.add_VectorStoreServiceServicer_to_server(Collections(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0)


@pytest.fixture
def app_client(
    gateway_redis_url: str,
    inference: InferenceThread,
    events_redis: redis.Redis,
    full_token: str,
    vectorstore_addr: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[TestClient]:
    monkeypatch.setenv("KLOOP_GATEWAY_DOCUMENTS_VECTORSTORE_ADDR", vectorstore_addr)
    monkeypatch.setenv("KLOOP_GATEWAY_DOCUMENTS_MAX_DOCUMENTS", "3")
    monkeypatch.setenv("KLOOP_GATEWAY_DOCUMENTS_MAX_DOCUMENT_BYTES", "1000")
    app = create_app(gateway_settings(gateway_redis_url, inference.addr), serve_grpc=False)
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {full_token}"
        yield client
    events_redis.delete("ingestion")
    for key in events_redis.scan_iter(f"{DOCS}:*"):
        events_redis.delete(key)


def sent_tasks(r: redis.Redis) -> list[dict[str, Any]]:
    """The Celery messages waiting on the ingestion queue (kombu's JSON envelope)."""
    messages = [json.loads(raw) for raw in r.lrange("ingestion", 0, -1)]
    return [
        {"task": m["headers"]["task"], "args": json.loads(base64.b64decode(m["body"]))[0]}
        for m in messages
    ]


def test_add_read_and_delete(app_client: TestClient, events_redis: redis.Redis) -> None:
    text = "# Title\n\nHéllo wörld."
    body = {
        "collection": "docs",
        "documents": [
            {"source": "guide/intro.md", "text": text, "metadata": {"lang": "en"}},
            {"id": "faq", "source": "faq.txt", "text": "Q? A.", "format": "markdown"},
            {"id": "file", "source": "f.md", "uri": "file:///srv/docs/f.md"},
        ],
    }
    created = app_client.post("/v1/documents", json=body)
    assert created.status_code == 202, created.text
    docs = created.json()["documents"]
    assert [d["id"] for d in docs] == ["guide/intro.md", "faq", "file"]
    assert docs[0] == {
        "id": "guide/intro.md",
        "status": "queued",
        "status_url": "/v1/documents/guide/intro.md?collection=docs",
    }
    record = events_redis.hgetall(f"{DOCS}:docs:guide/intro.md")
    assert record["status"] == "queued" and record["action"] == "ingest"
    assert record["content_sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert record["size"] == str(len(text.encode())) and json.loads(record["metadata"]) == {
        "lang": "en"
    }
    assert events_redis.get(f"{DOCS}:docs:guide/intro.md:input") == text
    assert events_redis.hget(f"{DOCS}:docs:faq", "format") == "markdown"
    assert events_redis.hget(f"{DOCS}:docs:file", "uri") == "file:///srv/docs/f.md"
    assert not events_redis.exists(f"{DOCS}:docs:file:input")
    tasks = sent_tasks(events_redis)
    assert {"task": "kloop.ingest_document", "args": ["docs", "faq", record["request"]]} not in (
        tasks
    )
    assert {
        "task": "kloop.ingest_document",
        "args": ["docs", "guide/intro.md", record["request"]],
    } in tasks
    assert len(tasks) == 3
    assert events_redis.zcard(f"{DOCS}:active") == 3

    status = app_client.get(docs[0]["status_url"]).json()
    assert status["status"] == "queued" and status["chunks"] == 0
    assert status["source"] == "guide/intro.md" and status["collection"] == "docs"
    # What the worker writes when it is done, as the API shows it.
    events_redis.hset(
        f"{DOCS}:docs:faq", mapping={"status": "succeeded", "chunks": 2, "finished_at": "100"}
    )
    done = app_client.get("/v1/documents/faq").json()  # collection defaults to docs
    assert done["status"] == "succeeded" and done["chunks"] == 2
    assert done["finished_at"] == "1970-01-01T00:01:40Z"

    deleted = app_client.delete("/v1/documents/faq?collection=docs")
    assert deleted.status_code == 202 and deleted.json()["status"] == "deleting"
    request = events_redis.hget(f"{DOCS}:docs:faq", "request")
    assert {"task": "kloop.ingest_delete", "args": ["docs", "faq", request]} in sent_tasks(
        events_redis
    )
    assert app_client.get("/v1/documents/nope").status_code == 404
    assert app_client.delete("/v1/documents/nope").status_code == 404


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"collection": "docs", "documents": []}, 422),
        ({"documents": [{"source": "a", "text": "x"}] * 2}, 422),  # the same id twice
        ({"documents": [{"id": f"d{i}", "source": "a", "text": "x"} for i in range(4)]}, 413),
        ({"documents": [{"source": "a", "text": "é" * 501}]}, 413),  # 1002 bytes
        ({"documents": [{"source": "a"}]}, 422),
        ({"documents": [{"source": "a", "text": "x", "uri": "/x.md"}]}, 422),
        ({"documents": [{"source": "a", "uri": "relative.md"}]}, 422),
        ({"documents": [{"source": "a", "uri": "https://example.com/x.md"}]}, 422),
        ({"documents": [{"id": "bad\nid", "source": "a", "text": "x"}]}, 422),
        ({"documents": [{"source": "a", "text": "x", "metadata": {"k": [1]}}]}, 422),
        ({"collection": "no such", "documents": [{"source": "a", "text": "x"}]}, 422),
        ({"collection": "other", "documents": [{"source": "a", "text": "x"}]}, 404),
    ],
)
def test_bad_requests(
    app_client: TestClient, events_redis: redis.Redis, body: dict[str, Any], status: int
) -> None:
    response = app_client.post("/v1/documents", json=body)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"}
    assert not sent_tasks(events_redis) and not list(events_redis.scan_iter(f"{DOCS}:*"))


def test_text_that_is_not_utf8_is_422(app_client: TestClient, events_redis: redis.Redis) -> None:
    raw = b'{"documents": [{"source": "a", "text": "bad \xff\xfe bytes"}]}'
    response = app_client.post(
        "/v1/documents", content=raw, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    # Valid JSON, but a lone surrogate is no text either.
    surrogate = b'{"documents": [{"source": "a", "text": "bad \\ud800 char"}]}'
    response = app_client.post(
        "/v1/documents", content=surrogate, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422 and "surrogate" in response.text
    assert not sent_tasks(events_redis)


def test_scopes(app_client: TestClient, predict_token: str) -> None:
    other = {"Authorization": f"Bearer {predict_token}"}
    body = {"documents": [{"source": "a", "text": "x"}]}
    assert app_client.post("/v1/documents", json=body, headers=other).status_code == 403
    assert app_client.get("/v1/documents/a", headers=other).status_code == 403
    assert app_client.delete("/v1/documents/a", headers=other).status_code == 403
    assert (
        app_client.post("/v1/documents", json=body, headers={"Authorization": ""}).status_code
        == 401
    )


def test_vector_store_down_is_503(
    gateway_redis_url: str,
    inference: InferenceThread,
    events_redis: redis.Redis,
    full_token: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KLOOP_GATEWAY_DOCUMENTS_VECTORSTORE_ADDR", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("KLOOP_GATEWAY_DOCUMENTS_VECTORSTORE_TIMEOUT_SECONDS", "1")
    app = create_app(gateway_settings(gateway_redis_url, inference.addr), serve_grpc=False)
    with TestClient(app) as client:
        response = client.post(
            "/v1/documents",
            json={"documents": [{"source": "a", "text": "x"}]},
            headers={"Authorization": f"Bearer {full_token}"},
        )
    assert response.status_code == 503 and response.headers["retry-after"] == "2"
    assert not list(events_redis.scan_iter(f"{DOCS}:*"))
