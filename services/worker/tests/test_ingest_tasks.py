"""Document ingestion end to end: the gateway's own DocumentQueue queues documents (the
contract), a real Celery worker (a thread here, processes for kill -9) ingests them
into the real vector store (kloop_vectorstore over its embedded Qdrant engine, served
on gRPC in-process), which embeds through a stand-in Open Inference Protocol server (a
hashing bag-of-words embedder: no embedding model is trained here)."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import redis
from celery.contrib.testing.worker import start_worker
from pydantic import SecretStr

from kloop.oip.v2 import grpc_predict_v2_pb2 as oip
from kloop.oip.v2 import grpc_predict_v2_pb2_grpc as oip_grpc
from kloop.vectorstore.v1 import vectorstore_pb2 as pb
from kloop.vectorstore.v1 import vectorstore_pb2_grpc as pb_grpc
from kloop_client.local import free_port
from kloop_core.grpc_server import RunningService, start_service
from kloop_gateway.api.routes.documents import DocumentIn, DocumentQueue, DocumentSettings
from kloop_gateway.settings import GatewaySettings
from kloop_vectorstore.backends.embedded import EmbeddedBackend
from kloop_vectorstore.main import build_app
from kloop_vectorstore.settings import VectorStoreSettings
from kloop_worker.celery_app import create_celery
from kloop_worker.settings import WorkerSettings

from .conftest import TEST_SETTINGS, RedisServer, Workers, wait_until

DIM = 32
EMBEDDER = "embedder"
COLLECTION = "docs"


def embed(text: str) -> list[float]:
    vector = np.zeros(DIM, dtype=np.float32)
    for word in re.findall(r"\w+", text.lower()):
        vector[int(hashlib.sha256(word.encode()).hexdigest(), 16) % (DIM - 1)] += 1.0
    vector[DIM - 1] = 0.05
    return list(vector / np.linalg.norm(vector))


class Embedder(oip_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    delay_seconds = 0.0

    def ModelInfer(self, request: oip.ModelInferRequest, context: Any) -> oip.ModelInferResponse:
        time.sleep(self.delay_seconds)
        texts = [b.decode() for b in request.inputs[0].contents.bytes_contents]
        flat = [x for t in texts for x in embed(t)]
        return oip.ModelInferResponse(
            model_name=EMBEDDER,
            model_version="1",
            outputs=[
                oip.ModelInferResponse.InferOutputTensor(
                    name="embedding",
                    datatype="FP32",
                    shape=[len(texts), DIM],
                    contents=oip.InferTensorContents(fp32_contents=flat),
                )
            ],
        )


@pytest.fixture(scope="module")
def embedder() -> Iterator[str]:
    server = grpc.server(ThreadPoolExecutor(4))
    oip_grpc.add_GRPCInferenceServiceServicer_to_server(Embedder(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0)


class VectorStore:
    def __init__(self, running: RunningService) -> None:
        self.running = running
        self.addr = f"127.0.0.1:{running.grpc_port}"
        self.channel = grpc.insecure_channel(self.addr)
        self.stub = pb_grpc.VectorStoreServiceStub(self.channel)

    def reset(self) -> None:
        for c in self.stub.ListCollections(pb.ListCollectionsRequest()).collections:
            self.stub.DeleteCollection(pb.DeleteCollectionRequest(name=c.name))
        self.stub.CreateCollection(
            pb.CreateCollectionRequest(name=COLLECTION, vector_size=DIM, embedding_model=EMBEDDER)
        )

    def chunks(self, document_id: str) -> dict[str, pb.ScoredDocument]:
        """Every stored chunk of the document, by id."""
        flt = pb.Filter(must=[pb.FieldCondition(key="document_id", keyword=document_id)])
        hits = self.stub.Search(
            pb.SearchRequest(
                collection=COLLECTION,
                vector=pb.VectorQuery(values=[1.0] * DIM),
                k=1000,
                filter=flt,
                mode=pb.DENSE,
            )
        ).hits
        return {h.id: h for h in hits}

    def search(self, text: str, k: int = 3) -> list[pb.ScoredDocument]:
        request = pb.SearchRequest(collection=COLLECTION, text=text, k=k, mode=pb.HYBRID)
        return list(self.stub.Search(request).hits)


@pytest.fixture(scope="module")
def vectorstore(embedder: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VectorStore]:
    settings = VectorStoreSettings(
        grpc_port=0,
        http_port=0,
        inference_addr=embedder,
        shutdown_grace_seconds=0.5,
        log_level="WARNING",
    )
    backend = EmbeddedBackend(tmp_path_factory.mktemp("vectors") / "embedded", index_threshold=0)
    store = VectorStore(start_service(build_app(settings, backend)))
    yield store
    store.channel.close()
    store.running.stop(grace=0)


class Docs:
    """Queues documents with the gateway's own DocumentQueue (the contract)."""

    def __init__(self, redis_url: str, vectorstore_addr: str) -> None:
        self.loop = asyncio.new_event_loop()
        settings = GatewaySettings(redis_url=SecretStr(redis_url), grpc_port=0, http_port=0)
        self.queue = DocumentQueue(settings, DocumentSettings(vectorstore_addr=vectorstore_addr))

    def add(self, document_id: str, text: str | None = None, **fields: Any) -> None:
        source = fields.pop("source", f"{document_id}.md")
        doc = DocumentIn(id=document_id, source=source, text=text, **fields)
        self.loop.run_until_complete(self.queue.ingest(COLLECTION, [doc]))

    def delete(self, document_id: str) -> None:
        self.loop.run_until_complete(self.queue.delete(COLLECTION, document_id))

    def get(self, document_id: str) -> dict[str, str]:
        record: dict[str, str] = self.loop.run_until_complete(
            self.queue.get(COLLECTION, document_id)
        )
        return record

    def wait(self, document_id: str, timeout: float = 30.0) -> dict[str, str]:
        record: dict[str, str] = wait_until(
            lambda: (
                (rec := self.get(document_id))["status"] not in ("queued", "running", "deleting")
                and rec
            ),
            timeout,
        )
        return record

    def close(self) -> None:
        self.loop.run_until_complete(self.queue.close())
        self.loop.close()


@pytest.fixture
def docs(redis_server: RedisServer, r: redis.Redis, vectorstore: VectorStore) -> Iterator[Docs]:
    vectorstore.reset()
    client = Docs(redis_server.url, vectorstore.addr)
    yield client
    client.close()


def worker_settings(redis_url: str, vectorstore_addr: str, **overrides: Any) -> WorkerSettings:
    values: dict[str, Any] = {
        **TEST_SETTINGS,
        "redis_url": redis_url,
        "vectorstore_addr": vectorstore_addr,
        "vectorstore_timeout_seconds": 5.0,
        "ingest_chunk_size": 300,
        "ingest_chunk_overlap": 40,
        "ingest_batch_size": 4,
        "ingest_retries": 2,
        "ingest_lock_seconds": 3.0,
        **overrides,
    }
    return WorkerSettings(**values)


@pytest.fixture
def worker_factory(redis_server: RedisServer, vectorstore: VectorStore) -> Iterator[Any]:
    """start(**settings): a Celery worker thread consuming the ingestion queue."""
    running: list[Any] = []

    def start(**overrides: Any) -> WorkerSettings:
        addr = overrides.pop("vectorstore_addr", vectorstore.addr)
        settings = worker_settings(redis_server.url, addr, **overrides)
        app = create_celery(settings)
        context = start_worker(
            app,
            pool="threads",
            concurrency=2,
            perform_ping_check=False,
            queues=["ingestion", "maintenance"],
            loglevel="WARNING",
            shutdown_timeout=10.0,
        )
        context.__enter__()
        running.append(context)
        return settings

    yield start
    for context in reversed(running):
        context.__exit__(None, None, None)


GUIDE = """# Kloop guide

Kloop is a platform that keeps models healthy in production.

## Install

Install the package with pip and start the platform with one command.

## Drift

The drift monitor compares windows of traffic with the training reference.
When drift holds past a threshold the worker retrains the model.

### Thresholds

The population stability index threshold is configurable per feature.
"""


def test_ingest_search_replace_and_delete(
    docs: Docs, worker_factory: Any, vectorstore: VectorStore, r: redis.Redis
) -> None:
    worker_factory()
    docs.add("guide", GUIDE)
    record = docs.wait("guide")
    assert record["status"] == "succeeded", record
    chunks = vectorstore.chunks("guide")
    assert int(record["chunks"]) == len(chunks) >= 4
    assert set(chunks) == {f"guide:{i}" for i in range(len(chunks))}
    assert record["content_sha256"] == hashlib.sha256(GUIDE.encode()).hexdigest()
    assert not r.exists(f"kloop:docs:{COLLECTION}:guide:input")
    assert not r.zcard("kloop:docs:active")

    best = vectorstore.search("population stability index threshold", k=1)[0]
    meta = dict(best.metadata)
    assert meta["heading"] == "Kloop guide > Drift > Thresholds"
    assert meta["document_id"] == "guide" and meta["source"] == "guide.md"
    assert meta["content_sha256"] == hashlib.sha256(best.text.encode()).hexdigest()
    assert best.id == f"guide:{int(meta['chunk'])}"

    # Unchanged: a no-op (nothing written, the RAG cache kept). To see that nothing is
    # written, one chunk is removed behind the worker's back: it stays missing.
    r.sadd("kloop:rag:doc:guide", "kloop:rag:answer:aaa")
    r.set("kloop:rag:answer:aaa", "{}")
    vectorstore.stub.Delete(pb.DeleteRequest(collection=COLLECTION, ids=["guide:1"]))
    docs.add("guide", GUIDE)
    record = docs.wait("guide")
    assert record["status"] == "succeeded" and int(record["chunks"]) == len(chunks)
    assert "guide:1" not in vectorstore.chunks("guide")
    assert r.exists("kloop:rag:answer:aaa")

    # Changed (shorter): exactly the new chunks, the cached answers dropped.
    new = "# Kloop guide\n\nOnly one short section about canaries now.\n"
    docs.add("guide", new)
    record = docs.wait("guide")
    assert record["status"] == "succeeded" and record["chunks"] == "1"
    chunks = vectorstore.chunks("guide")
    assert list(chunks) == ["guide:0"] and chunks["guide:0"].text == new
    assert not r.exists("kloop:rag:answer:aaa") and not r.exists("kloop:rag:doc:guide")

    # Another document is untouched by all this; deleting removes only its own chunks.
    docs.add("other", "Plain text about canaries.\n\nAnd a second paragraph.", source="o.txt")
    assert docs.wait("other")["status"] == "succeeded"
    r.sadd("kloop:rag:doc:guide", "kloop:rag:answer:bbb")
    r.set("kloop:rag:answer:bbb", "{}")
    docs.delete("guide")
    record = docs.wait("guide")
    assert record["status"] == "deleted" and record["chunks"] == "0"
    assert vectorstore.chunks("guide") == {}
    assert list(vectorstore.chunks("other")) == ["other:0"]
    assert not r.exists("kloop:rag:answer:bbb")
    assert r.ttl(f"kloop:docs:{COLLECTION}:guide") > 0

    # Re-adding a deleted document ingests it again.
    docs.add("guide", GUIDE)
    assert docs.wait("guide")["status"] == "succeeded"
    assert len(vectorstore.chunks("guide")) >= 4
    assert r.ttl(f"kloop:docs:{COLLECTION}:guide") == -1


def test_unreadable_documents_fail_clearly(
    docs: Docs, worker_factory: Any, tmp_path: Path, vectorstore: VectorStore
) -> None:
    root = tmp_path / "docs"
    root.mkdir()
    (root / "bad.md").write_bytes(b"# Title\n\nfine text \xff\xfe broken")
    (root / "good.md").write_bytes("# Héllo\n\nwörld".encode())
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    worker_factory(ingest_roots=[str(root)], ingest_max_document_bytes=1000)
    (root / "big.txt").write_text("x " * 600)

    docs.add("bad", uri=str(root / "bad.md"), source="bad.md")
    docs.add("good", uri=f"file://{root / 'good.md'}", source="good.md")
    docs.add("outside", uri=str(outside), source="secret.txt")
    docs.add("big", uri=str(root / "big.txt"), source="big.txt")
    docs.add("missing", uri=str(root / "nope.md"), source="nope.md")

    bad = docs.wait("bad")
    assert bad["status"] == "failed" and "not valid UTF-8 (byte offset 19" in bad["error"]
    good = docs.wait("good")
    assert good["status"] == "succeeded" and good["size"] == str(len("# Héllo\n\nwörld".encode()))
    assert dict(vectorstore.chunks("good")["good:0"].metadata)["heading"] == "Héllo"
    assert "outside the document roots" in docs.wait("outside")["error"]
    assert "more than the limit of 1000" in docs.wait("big")["error"]
    assert "no such file" in docs.wait("missing")["error"]


def test_vector_store_down_retries_then_fails(
    docs: Docs, worker_factory: Any, vectorstore: VectorStore
) -> None:
    worker_factory(vectorstore_addr=f"127.0.0.1:{free_port()}", ingest_retries=2)
    started = time.monotonic()
    docs.add("doc", "Some text.")
    record = docs.wait("doc")
    assert record["status"] == "failed"
    assert record["error"].startswith("vector store unavailable"), record["error"]
    assert time.monotonic() - started > 0.1  # retried with backoff before failing


def test_a_collection_deleted_meanwhile_fails_the_document(
    docs: Docs, worker_factory: Any, vectorstore: VectorStore
) -> None:
    vectorstore.stub.DeleteCollection(pb.DeleteCollectionRequest(name=COLLECTION))
    worker_factory()
    docs.add("doc", "Some text.")
    record = docs.wait("doc")
    assert record["status"] == "failed" and "does not exist" in record["error"], record


def test_superseded_and_duplicate_requests_do_nothing(
    docs: Docs, worker_factory: Any, vectorstore: VectorStore, r: redis.Redis
) -> None:
    settings = worker_factory()
    docs.add("doc", "first version")
    docs.add("doc", "second version")  # before a worker took the first: the latest wins
    assert docs.wait("doc")["status"] == "succeeded"
    assert vectorstore.chunks("doc")["doc:0"].text == "second version"
    # A stale message (old request id) and a duplicate of the finished one: no change.
    app = create_celery(settings)
    record = r.hgetall(f"kloop:docs:{COLLECTION}:doc")
    finished = record["finished_at"]
    app.send_task("kloop.ingest_document", args=[COLLECTION, "doc", "0" * 32])
    app.send_task("kloop.ingest_document", args=[COLLECTION, "doc", record["request"]])
    time.sleep(1.0)
    assert r.hget(f"kloop:docs:{COLLECTION}:doc", "finished_at") == finished
    assert vectorstore.chunks("doc")["doc:0"].text == "second version"
    app.close()


def test_the_sweeper_resends_a_lost_request(
    docs: Docs, redis_server: RedisServer, vectorstore: VectorStore, r: redis.Redis
) -> None:
    # Queued by the gateway, but no worker ever got the message (purged: "lost").
    docs.add("doc", "text that waited")
    r.delete("ingestion")
    settings = worker_settings(redis_server.url, vectorstore.addr, stall_seconds=0.01)
    app = create_celery(settings)
    time.sleep(0.05)
    with start_worker(
        app, pool="threads", concurrency=1, perform_ping_check=False, queues=["ingestion"]
    ):
        app.tasks["kloop.maintenance.sweep_documents"].apply()
        assert docs.wait("doc")["status"] == "succeeded"
    assert vectorstore.chunks("doc")["doc:0"].text == "text that waited"


@pytest.mark.slow
def test_a_worker_killed_mid_document_leaves_exactly_the_new_chunks(
    docs: Docs, redis_server: RedisServer, vectorstore: VectorStore, tmp_path: Path
) -> None:
    """kill -9 while a long document is being upserted batch by batch: the message is
    redelivered, the lock expires, another worker redoes it; the store ends with exactly
    the document's chunks."""
    Embedder.delay_seconds = 0.05
    workers = Workers(
        redis_server.url,
        tmp_path,
        {
            **TEST_SETTINGS,
            "vectorstore_addr": vectorstore.addr,
            "ingest_chunk_size": 200,
            "ingest_chunk_overlap": 20,
            "ingest_batch_size": 2,
            "ingest_lock_seconds": 2.0,
            "queues": ["ingestion"],
        },
    )
    try:
        old = "\n\n".join(f"Old paragraph {i} " + "filler " * 20 for i in range(40))
        docs.add("long", old, source="long.txt")
        first = workers.start()
        assert docs.wait("long")["status"] == "succeeded"
        old_count = len(vectorstore.chunks("long"))
        new = "\n\n".join(f"New paragraph {i} " + "words " * 25 for i in range(60))
        docs.add("long", new, source="long.txt")
        wait_until(lambda: docs.get("long")["status"] == "running")
        time.sleep(0.5)  # some batches in
        first.kill()
        assert docs.get("long")["status"] == "running"
        workers.start()
        record = docs.wait("long", timeout=60)
        assert record["status"] == "succeeded"
        chunks = vectorstore.chunks("long")
        assert len(chunks) == int(record["chunks"]) != old_count
        assert set(chunks) == {f"long:{i}" for i in range(len(chunks))}
        assert all(c.text in new for c in chunks.values())
    finally:
        Embedder.delay_seconds = 0.0
        workers.stop_all()
