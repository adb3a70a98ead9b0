# Celery ships no type hints: its decorators would make every task "untyped".
# mypy: disable-error-code="untyped-decorator"
"""Celery tasks of document ingestion (queue `ingestion`), sent by the gateway by name:

- `kloop.ingest_document(collection, document_id, request)`: chunk the document and
  replace its chunks in the vector store (kloop_worker.ingestion);
- `kloop.ingest_delete(collection, document_id, request)`: remove its chunks;
- `kloop.maintenance.sweep_documents()`: re-send requests that made no progress for
  `stall_seconds` (a lost message, a gateway that died before sending).

The record in Redis (kloop_worker.documents) says what to do; `request` names the
latest request for the document, and a task for any other request does nothing. One
worker at a time works on a document (a lock in Redis, refreshed between batches, that
expires if its holder dies); a task finding it taken comes back later. Acknowledged
late and idempotent: a task redelivered after a crash runs again harmlessly.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery, Task, shared_task

from kloop_core.errors import KloopError, NotFound, is_transient_error
from kloop_core.logging import get_logger
from kloop_core.redis import create_redis
from kloop_worker import metrics
from kloop_worker.celery_app import INGEST_DELETE, INGEST_DOCUMENT, SWEEP_DOCUMENTS, settings_of
from kloop_worker.chunking import ChunkSpec
from kloop_worker.documents import DocRecord, DocStatus, DocumentStore
from kloop_worker.ingestion import (
    DocumentError,
    chunk_points,
    chunks_of,
    decode_text,
    delete_chunks,
    fingerprint,
    invalidate_answers,
    read_document,
    replace_chunks,
    sha256,
)
from kloop_worker.retrain import backoff
from kloop_worker.settings import WorkerSettings
from kloop_worker.vectorstore import VectorStoreClient

log = get_logger(__name__)

# Waits for another worker's lock on the same document are not failures.
_LOCK_WAIT_RETRIES = 10_000


@dataclass
class IngestRuntime:
    settings: WorkerSettings
    docs: DocumentStore
    vectors: VectorStoreClient
    rag_cache: redis.Redis
    spec: ChunkSpec

    @classmethod
    def create(cls, settings: WorkerSettings) -> IngestRuntime:
        client = create_redis(settings.redis_url, socket_timeout=10.0)
        cache_url = settings.rag_cache_redis_url
        return cls(
            settings=settings,
            docs=DocumentStore(client),
            vectors=VectorStoreClient(
                settings.vectorstore_addr, timeout=settings.vectorstore_timeout_seconds
            ),
            rag_cache=create_redis(cache_url) if cache_url else client,
            spec=ChunkSpec.of(
                settings.ingest_chunk_size,
                settings.ingest_chunk_overlap,
                settings.ingest_chunk_unit,
            ),
        )


_runtimes: dict[tuple[int, int], IngestRuntime] = {}
_lock = threading.Lock()


def ingest_runtime(app: Celery) -> IngestRuntime:
    key = (id(app), os.getpid())
    with _lock:
        found = _runtimes.get(key)
        if found is None:
            found = _runtimes[key] = IngestRuntime.create(settings_of(app))
    return found


class _Superseded(Exception):
    pass


def _retry_later(task: Task, s: WorkerSettings, error: Exception | None) -> Any:
    delay = backoff(task.request.retries, s.retry_backoff_seconds, s.retry_backoff_max_seconds, 0.5)
    return task.retry(countdown=delay, max_retries=_LOCK_WAIT_RETRIES, exc=error)


def _vector_store_error(task: Task, rt: IngestRuntime, error: KloopError) -> str | None:
    """Retry (raises) while the vector store is unavailable and retries remain; else
    the failure message."""
    if is_transient_error(error) and task.request.retries < rt.settings.ingest_retries:
        log.warning("vector store unavailable: retrying", error=str(error))
        _retry_later(task, rt.settings, None)
    if isinstance(error, NotFound):
        return f"vector store: {error}"
    return f"vector store {'unavailable' if is_transient_error(error) else 'error'}: {error}"


def _read_text(rt: IngestRuntime, rec: DocRecord) -> bytes:
    if rec.uri:
        return read_document(
            rec.uri, roots=rt.settings.ingest_roots, max_bytes=rt.settings.ingest_max_document_bytes
        )
    data = rt.docs.input_text(rec.collection, rec.id)
    if data is None:
        raise DocumentError("the document's text is gone (expired before it was ingested)")
    if len(data) > rt.settings.ingest_max_document_bytes:
        raise DocumentError(
            f"{len(data)} bytes, more than the limit of {rt.settings.ingest_max_document_bytes}"
        )
    return data


@shared_task(name=INGEST_DOCUMENT, bind=True)
def ingest_document(self: Task, collection: str, document_id: str, request: str) -> None:
    rt = ingest_runtime(self.app)
    s = rt.settings
    rec = rt.docs.get(collection, document_id)
    if rec is None or rec.request != request or rec.action != "ingest":
        metrics.DOCUMENTS.labels("ingest", "superseded").inc()
        return
    if rec.status not in (DocStatus.QUEUED, DocStatus.RUNNING):
        return  # a duplicate of a finished request
    token = uuid.uuid4().hex
    if not rt.docs.lock(collection, document_id, token, s.ingest_lock_seconds):
        _retry_later(self, s, None)
    try:
        if not rt.docs.start(rec, request, DocStatus.QUEUED, DocStatus.RUNNING):
            return
        outcome = _ingest(self, rt, rec, request, token)
    finally:
        rt.docs.unlock(collection, document_id, token)
    metrics.DOCUMENTS.labels("ingest", outcome).inc()


def _ingest(task: Task, rt: IngestRuntime, rec: DocRecord, request: str, token: str) -> str:
    s = rt.settings
    name = rec.uri or rec.source or rec.id
    try:
        data = _read_text(rt, rec)
        text = decode_text(data, name)
    except DocumentError as error:
        rt.docs.finish(rec, request, status=DocStatus.FAILED.value, error=str(error))
        log.warning("document failed", collection=rec.collection, id=rec.id, error=str(error))
        return "failed"
    text_sha = sha256(text)
    generation = fingerprint(text_sha, rec.source, rec.metadata, rec.format, rt.spec)
    done: dict[str, Any] = {
        "status": DocStatus.SUCCEEDED.value,
        "error": "",
        "content_sha256": text_sha,
    }
    if rec.uri:
        rt.docs.set_fields(rec, request, size=len(data), content_sha256=text_sha)
    if generation == rec.ingested_fingerprint:
        rt.docs.finish(rec, request, chunks=rec.chunks, **done)
        log.info("document unchanged", collection=rec.collection, id=rec.id)
        return "unchanged"
    started = time.perf_counter()
    chunks = chunks_of(text, rec.source or rec.id, rec.format, rt.spec)
    points = chunk_points(rec.id, rec.source, rec.metadata, chunks, generation)

    def still_ours() -> bool:
        if not rt.docs.current(rec.collection, rec.id, request):
            return False
        return rt.docs.refresh(rec.collection, rec.id, token, s.ingest_lock_seconds)

    rt.docs.store_changing(rec)
    try:
        replaced = replace_chunks(
            rt.vectors, rec.collection, rec.id, points, generation, s.ingest_batch_size, still_ours
        )
    except KloopError as error:
        message = _vector_store_error(task, rt, error)
        rt.docs.finish(rec, request, status=DocStatus.FAILED.value, error=message)
        log.warning("document failed", collection=rec.collection, id=rec.id, error=message)
        return "failed"
    if replaced is None:
        return "superseded"
    # The old chunks may be gone even if the record below is not written (superseded):
    # the cached answers built from them must go either way.
    invalidate_answers(rt.rag_cache, s.rag_cache_namespace, rec.id)
    rt.docs.finish(
        rec,
        request,
        chunks=replaced.chunks,
        ingested_fingerprint=generation,
        ingested_sha256=text_sha,
        size=len(data),
        **done,
    )
    metrics.DOCUMENT_CHUNKS.inc(replaced.chunks)
    log.info(
        "document ingested",
        collection=rec.collection,
        id=rec.id,
        chunks=replaced.chunks,
        removed=replaced.removed,
        seconds=round(time.perf_counter() - started, 3),
    )
    return "succeeded"


@shared_task(name=INGEST_DELETE, bind=True)
def ingest_delete(self: Task, collection: str, document_id: str, request: str) -> None:
    rt = ingest_runtime(self.app)
    s = rt.settings
    rec = rt.docs.get(collection, document_id)
    if rec is None or rec.request != request or rec.action != "delete":
        metrics.DOCUMENTS.labels("delete", "superseded").inc()
        return
    if rec.status is not DocStatus.DELETING:
        return
    token = uuid.uuid4().hex
    if not rt.docs.lock(collection, document_id, token, s.ingest_lock_seconds):
        _retry_later(self, s, None)
    try:
        if not rt.docs.start(rec, request, DocStatus.DELETING):
            return
        rt.docs.store_changing(rec)
        try:
            removed = delete_chunks(rt.vectors, collection, document_id)
        except KloopError as error:
            message = _vector_store_error(self, rt, error)
            rt.docs.finish(rec, request, status=DocStatus.FAILED.value, error=message)
            metrics.DOCUMENTS.labels("delete", "failed").inc()
            return
        invalidate_answers(rt.rag_cache, s.rag_cache_namespace, document_id)
        rt.docs.finish(
            rec,
            request,
            ttl=s.ingest_deleted_ttl_seconds,
            status=DocStatus.DELETED.value,
            error="",
            chunks=0,
            ingested_fingerprint="",
            ingested_sha256="",
        )
    finally:
        rt.docs.unlock(collection, document_id, token)
    metrics.DOCUMENTS.labels("delete", "succeeded").inc()
    log.info("document deleted", collection=collection, id=document_id, chunks=removed)


@shared_task(name=SWEEP_DOCUMENTS, bind=True)
def sweep_documents(self: Task) -> None:
    """Re-send the task of every document request without progress for stall_seconds."""
    rt = ingest_runtime(self.app)
    older_than = time.time() - rt.settings.stall_seconds
    for collection, document_id in rt.docs.stalled(older_than):
        rec = rt.docs.get(collection, document_id)
        if rec is None or rec.status not in (
            DocStatus.QUEUED,
            DocStatus.RUNNING,
            DocStatus.DELETING,
        ):
            rt.docs.forget(collection, document_id)
            continue
        rt.docs.touch(collection, document_id)
        task = INGEST_DELETE if rec.action == "delete" else INGEST_DOCUMENT
        self.app.send_task(task, args=(collection, document_id, rec.request))
        log.warning("re-sent a stalled document request", collection=collection, id=document_id)
