"""/v1/documents: document ingestion for RAG, run by the worker service.

POST checks the collection exists (the vector store's GetCollection: collections are
created with their embedding model and dimension by whoever sets up the platform, e.g.
`kloop up`; an unknown collection is a 404, never created implicitly with a guessed
embedder), saves each document's record and text in Redis and sends the Celery task
`kloop.ingest_document` by name to the `ingestion` queue (the gateway never imports the
worker), answering 202 at once with a status URL per document. The worker chunks the
text, upserts the chunks to the vector store, removes the document's old chunks and
drops the cached RAG answers built from it. GET reads a document's status; DELETE
queues the removal of its chunks (`kloop.ingest_delete`).

A document is identified by (collection, id); posting an id again replaces the
document (a no-op when nothing changed). The latest request for a document wins.

Redis layout, shared with kloop_worker.documents (documented there in full):
`kloop:docs:<collection>:<id>` hash (the status record), `kloop:docs:<collection>:<id>:input`
string (the text), `kloop:docs:active` sorted set of JSON `[collection, id]`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import quote

import grpc
import redis.asyncio
import redis.exceptions
from celery import Celery
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kloop.vectorstore.v1 import vectorstore_pb2 as vs_pb
from kloop.vectorstore.v1 import vectorstore_pb2_grpc as vs_grpc
from kloop_core.errors import NotFound, PayloadTooLarge, Unavailable, Unprocessable
from kloop_core.logging import get_logger
from kloop_gateway.api.deps import AdminCaller, GatewayDep
from kloop_gateway.api.schemas import error_responses
from kloop_gateway.clients import create_async_redis
from kloop_gateway.settings import GatewaySettings

log = get_logger(__name__)

router = APIRouter(prefix="/v1/documents", tags=["documents"])

PREFIX = "kloop:docs"
ACTIVE_KEY = f"{PREFIX}:active"
COLLECTION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
# Chunk ids are "<id>:<index>" and the vector store takes ids of up to 512 characters.
MAX_ID_CHARS = 480
# A local absolute path or a file:// URI; the worker checks it may read it.
URI_PATTERN = r"^(/|file:///)\S.*$"

Status = Literal["queued", "running", "succeeded", "failed", "deleting", "deleted"]
Scalar = str | int | float | bool


class DocumentSettings(BaseSettings):
    """`KLOOP_GATEWAY_DOCUMENTS_*`: the document endpoints' own settings."""

    model_config = SettingsConfigDict(env_prefix="KLOOP_GATEWAY_DOCUMENTS_", extra="ignore")

    # The worker's Celery broker; default: the gateway's redis_url.
    broker_url: SecretStr | None = None
    vectorstore_addr: str = "127.0.0.1:50157"
    vectorstore_timeout_seconds: float = Field(default=5.0, gt=0)
    max_documents: int = Field(default=100, ge=1, le=10_000)
    # UTF-8 bytes of one document's text (the request body limit applies too).
    max_document_bytes: int = Field(default=1024 * 1024, ge=1)
    # How long a queued document's text waits for a worker at most.
    input_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=60)
    ingest_task: str = "kloop.ingest_document"
    delete_task: str = "kloop.ingest_delete"
    queue: str = "ingestion"
    send_timeout_seconds: float = Field(default=5.0, gt=0)


# --- bodies ---------------------------------------------------------------------------------


def _check_id(value: str) -> str:
    if not value.strip() or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("ids must not be blank nor contain control characters")
    return value


class DocumentIn(BaseModel):
    id: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_ID_CHARS,
        description="Stable id of the document in its collection (default: its source).",
    )
    source: str = Field(
        min_length=1, max_length=2048, description="Where it comes from (path, URL, title)."
    )
    text: str | None = Field(default=None, description="The document (markdown or plain text).")
    uri: str | None = Field(
        default=None,
        pattern=URI_PATTERN,
        max_length=4096,
        description="Instead of text: a file the worker may read (absolute path or file://).",
    )
    format: Literal["markdown", "text"] | None = Field(
        default=None, description="Default: markdown for *.md/*.markdown sources, else text."
    )
    metadata: dict[str, Scalar] = Field(
        default_factory=dict, description="Copied to every chunk (reserved keys excepted)."
    )

    @field_validator("id")
    @classmethod
    def _valid_id(cls, value: str | None) -> str | None:
        return None if value is None else _check_id(value)

    @model_validator(mode="after")
    def _one_source(self) -> DocumentIn:
        if (self.text is None) == (self.uri is None):
            raise ValueError("give exactly one of text and uri")
        if self.id is None:
            if len(self.source) > MAX_ID_CHARS:
                raise ValueError(f"give an id: the source is longer than {MAX_ID_CHARS}")
            self.id = _check_id(self.source)
        return self

    @property
    def document_id(self) -> str:
        assert self.id is not None
        return self.id


class DocumentsCreate(BaseModel):
    collection: str = Field(default="docs", pattern=COLLECTION_PATTERN)
    documents: list[DocumentIn] = Field(min_length=1, description="At most max_documents.")


class DocumentAccepted(BaseModel):
    id: str
    status: Status
    status_url: str


class DocumentsAccepted(BaseModel):
    collection: str
    documents: list[DocumentAccepted]


class DocumentOut(BaseModel):
    id: str
    collection: str
    source: str
    status: Status
    chunks: int = Field(description="Chunks of the document in the vector store.")
    content_sha256: str | None = None
    size: int | None = Field(None, description="Bytes of text (UTF-8).")
    error: str | None = None
    created_at: datetime
    updated_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


def status_url(collection: str, document_id: str) -> str:
    return f"/v1/documents/{quote(document_id, safe='/')}?collection={collection}"


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _time(raw: str | None) -> datetime | None:
    return datetime.fromtimestamp(float(raw), UTC) if raw else None


def document_out(record: dict[str, str]) -> DocumentOut:
    size = record.get("size")
    return DocumentOut(
        id=record["id"],
        collection=record["collection"],
        source=record.get("source", ""),
        status=record.get("status", "queued"),  # type: ignore[arg-type]
        chunks=int(record.get("chunks") or 0),
        content_sha256=record.get("content_sha256") or None,
        size=int(size) if size else None,
        error=record.get("error") or None,
        created_at=_time(record.get("created_at")) or datetime.now(UTC),
        updated_at=_time(record.get("updated_at")),
        started_at=_time(record.get("started_at")),
        finished_at=_time(record.get("finished_at")),
    )


def _keys(collection: str, document_id: str) -> tuple[str, str]:
    record = f"{PREFIX}:{collection}:{document_id}"
    return record, f"{record}:input"


def _member(collection: str, document_id: str) -> str:
    return json.dumps([collection, document_id], separators=(",", ":"))


# --- the backend ----------------------------------------------------------------------------


class DocumentQueue:
    """Document records in Redis, the vector store's collections, and the Celery producer
    that hands documents to the worker."""

    def __init__(self, gateway_settings: GatewaySettings, settings: DocumentSettings) -> None:
        self.settings = settings
        self._redis = create_async_redis(
            gateway_settings.redis_url, timeout=max(gateway_settings.redis_timeout_seconds, 2.0)
        )
        self._channel = grpc.aio.insecure_channel(settings.vectorstore_addr)
        self._store = vs_grpc.VectorStoreServiceStub(self._channel)
        broker = (settings.broker_url or gateway_settings.redis_url).get_secret_value()
        self._celery = Celery("kloop-gateway-documents", broker=broker, set_as_current=False)
        self._celery.conf.update(
            task_serializer="json",
            accept_content=["json"],
            broker_connection_timeout=settings.send_timeout_seconds,
            broker_transport_options={"socket_timeout": settings.send_timeout_seconds},
        )

    async def close(self) -> None:
        await asyncio.to_thread(self._celery.close)
        await self._channel.close()
        await self._redis.aclose()

    async def check_collection(self, collection: str) -> None:
        try:
            await self._store.GetCollection(
                vs_pb.GetCollectionRequest(name=collection),
                timeout=self.settings.vectorstore_timeout_seconds,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(
                    f"collection {collection!r} does not exist (create it in the vector store)"
                ) from None
            log.warning("vector store unavailable", error=repr(error))
            raise Unavailable("the vector store is unavailable", retry_after=2.0) from None

    async def ingest(self, collection: str, documents: list[DocumentIn]) -> list[str]:
        """Saves the records and texts, sends one task per document; the request ids."""
        now = repr(time.time())
        requests = []
        async with self._redis.pipeline(transaction=True) as pipe:
            for doc in documents:
                request = uuid.uuid4().hex
                requests.append(request)
                record, text_key = _keys(collection, doc.document_id)
                fields: dict[Any, Any] = {
                    "id": doc.document_id,
                    "collection": collection,
                    "source": doc.source,
                    "format": doc.format or "",
                    "metadata": json.dumps(doc.metadata, separators=(",", ":")),
                    "uri": doc.uri or "",
                    "action": "ingest",
                    "request": request,
                    "status": "queued",
                    "error": "",
                    "updated_at": now,
                    "started_at": "",
                    "finished_at": "",
                }
                if doc.text is not None:
                    data = doc.text.encode()
                    fields["size"] = len(data)
                    fields["content_sha256"] = hashlib.sha256(data).hexdigest()
                    pipe.set(text_key, data, ex=self.settings.input_ttl_seconds)
                else:
                    fields["size"] = ""
                    fields["content_sha256"] = ""
                    pipe.delete(text_key)
                pipe.hset(record, mapping=fields)
                pipe.hsetnx(record, "created_at", now)
                pipe.persist(record)
                # The worker's sweeper re-sends a request that stays here without progress.
                pipe.zadd(ACTIVE_KEY, {_member(collection, doc.document_id): float(now)})
            await pipe.execute()
        tasks = [
            (self.settings.ingest_task, [collection, doc.document_id, request])
            for doc, request in zip(documents, requests, strict=True)
        ]
        await self._send(tasks)
        return requests

    async def get(self, collection: str, document_id: str) -> dict[str, str]:
        raw = await self._redis.hgetall(_keys(collection, document_id)[0])
        record = {_str(k): _str(v) for k, v in raw.items()}
        if not record:
            raise NotFound(f"no document {document_id!r} in collection {collection!r}")
        return record

    async def delete(self, collection: str, document_id: str) -> dict[str, str]:
        record, _ = _keys(collection, document_id)
        await self.get(collection, document_id)
        request = uuid.uuid4().hex
        now = repr(time.time())
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                record,
                mapping={
                    "action": "delete",
                    "request": request,
                    "status": "deleting",
                    "error": "",
                    "updated_at": now,
                    "started_at": "",
                    "finished_at": "",
                },
            )
            pipe.persist(record)
            pipe.zadd(ACTIVE_KEY, {_member(collection, document_id): float(now)})
            await pipe.execute()
        await self._send([(self.settings.delete_task, [collection, document_id, request])])
        return await self.get(collection, document_id)

    async def _send(self, tasks: list[tuple[str, list[str]]]) -> None:
        try:
            await asyncio.to_thread(self._send_all, tasks)
        except Exception as error:
            # The records stay queued: the worker's sweeper sends them once they stall.
            log.warning("cannot send documents to the worker", error=repr(error))
            raise Unavailable("the ingestion queue is unavailable", retry_after=2.0) from None

    def _send_all(self, tasks: list[tuple[str, list[str]]]) -> None:
        with self._celery.producer_or_acquire() as producer:
            for name, args in tasks:
                self._celery.send_task(
                    name,
                    args=args,
                    queue=self.settings.queue,
                    producer=producer,
                    retry=True,
                    retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
                )


async def get_documents(request: Request, gateway: GatewayDep) -> DocumentQueue:
    """The app's DocumentQueue, created on first use (close it with `close_documents`);
    in the event loop (its gRPC channel is an asyncio one)."""
    queue: DocumentQueue | None = getattr(request.app.state, "documents", None)
    if queue is None:
        queue = request.app.state.documents = DocumentQueue(gateway.settings, DocumentSettings())
    return queue


async def close_documents(app: FastAPI) -> None:
    queue: DocumentQueue | None = getattr(app.state, "documents", None)
    if queue is not None:
        await queue.close()
        app.state.documents = None


DocumentsDep = Annotated[DocumentQueue, Depends(get_documents)]
DocumentId = Annotated[
    str, Path(min_length=1, max_length=MAX_ID_CHARS, description="The document's id.")
]
Collection = Annotated[str, Query(pattern=COLLECTION_PATTERN, description="Its collection.")]

_ERRORS = error_responses(401, 403, 404, 413, 422, 429, 503)


async def _redis_call(coro: Any) -> Any:
    try:
        return await coro
    except (redis.exceptions.RedisError, OSError) as error:
        log.warning("document store unavailable", error=repr(error))
        raise Unavailable("the document store is unavailable", retry_after=1.0) from None


def check_documents(body: DocumentsCreate, settings: DocumentSettings) -> None:
    if len(body.documents) > settings.max_documents:
        raise PayloadTooLarge(
            f"{len(body.documents)} documents; at most {settings.max_documents} per request"
        )
    seen: set[str] = set()
    for n, doc in enumerate(body.documents):
        if doc.document_id in seen:
            raise Unprocessable(f"documents[{n}]: id {doc.document_id!r} appears twice")
        seen.add(doc.document_id)
        if doc.text is None:
            continue
        try:
            size = len(doc.text.encode())
        except UnicodeEncodeError as e:
            raise Unprocessable(
                f"documents[{n}] ({doc.document_id!r}): text is not valid Unicode "
                f"(lone surrogate at character {e.start})"
            ) from None
        if size > settings.max_document_bytes:
            raise PayloadTooLarge(
                f"documents[{n}] ({doc.document_id!r}): {size} bytes; the limit is "
                f"{settings.max_document_bytes}"
            )


# --- routes ---------------------------------------------------------------------------------


@router.post("", status_code=202, responses=_ERRORS)
async def add_documents(
    body: DocumentsCreate, caller: AdminCaller, docs: DocumentsDep
) -> JSONResponse:
    """Ingest (or replace) documents in a collection, in the background: chunked by
    structure, embedded and stored by the worker. Poll each status_url."""
    check_documents(body, docs.settings)
    await docs.check_collection(body.collection)
    await _redis_call(docs.ingest(body.collection, body.documents))
    accepted = DocumentsAccepted(
        collection=body.collection,
        documents=[
            DocumentAccepted(
                id=doc.document_id,
                status="queued",
                status_url=status_url(body.collection, doc.document_id),
            )
            for doc in body.documents
        ],
    )
    return JSONResponse(accepted.model_dump(), status_code=202)


@router.get("/{document_id:path}", responses=_ERRORS)
async def get_document(
    document_id: DocumentId,
    caller: AdminCaller,
    docs: DocumentsDep,
    collection: Collection = "docs",
) -> DocumentOut:
    """A document's ingestion status: queued, running, succeeded (with its chunk count),
    failed (with why), deleting, deleted."""
    return document_out(await _redis_call(docs.get(collection, document_id)))


@router.delete("/{document_id:path}", status_code=202, responses=_ERRORS)
async def delete_document(
    document_id: DocumentId,
    caller: AdminCaller,
    docs: DocumentsDep,
    collection: Collection = "docs",
) -> JSONResponse:
    """Remove a document's chunks from the collection, in the background (202; its
    status becomes deleting, then deleted)."""
    record = await _redis_call(docs.delete(collection, document_id))
    return JSONResponse(
        document_out(record).model_dump(mode="json"),
        status_code=202,
        headers={"Location": status_url(collection, document_id)},
    )
