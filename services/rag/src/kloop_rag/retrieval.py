"""Retrieval from the vector store service (gRPC kloop.vectorstore.v1), behind the small
`Retriever` interface the rest of the service uses."""

from __future__ import annotations

from typing import Any, Protocol

import grpc
from google.protobuf.json_format import MessageToDict
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from kloop.vectorstore.v1 import vectorstore_pb2 as pb
from kloop.vectorstore.v1 import vectorstore_pb2_grpc as pb_grpc
from kloop_core.errors import KloopError, NotFound, Unavailable, Unprocessable, error_from_rpc
from kloop_core.logging import get_logger, request_id_var
from kloop_core.resilience import CHANNEL_OPTIONS
from kloop_core.tracing import REQUEST_ID_METADATA_KEY
from kloop_rag.chunks import Chunk

log = get_logger(__name__)

# Reconnect to a restarted vector store within a second (grpc's default backoff goes
# up to two minutes, during which every call fails fast).
_RECONNECT_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


class Retriever(Protocol):
    async def search(self, collection: str, query: str, k: int) -> list[Chunk]:
        """The k best chunks, best first. NotFound for an unknown collection,
        Unavailable when the store is down or too slow."""
        ...

    async def ready(self) -> bool: ...

    async def close(self) -> None: ...


def chunk_from_hit(hit: pb.ScoredDocument) -> Chunk:
    metadata = MessageToDict(hit.metadata) if hit.HasField("metadata") else {}
    chunk = metadata.get("chunk")
    if isinstance(chunk, float) and chunk.is_integer():  # Struct numbers are doubles
        metadata["chunk"] = int(chunk)
    return Chunk(id=hit.id, text=hit.text, score=float(hit.score), metadata=metadata)


class VectorStoreRetriever:
    """Hybrid text search on the vector store; errors become the kloop contract."""

    def __init__(self, target: str, *, timeout: float, traced: bool = False) -> None:
        self._timeout = timeout
        self._channel = grpc.aio.insecure_channel(
            target,
            options=[*CHANNEL_OPTIONS, *_RECONNECT_OPTIONS],
            interceptors=aio_client_interceptors() if traced else None,  # type: ignore[no-untyped-call]
        )
        self._stub = pb_grpc.VectorStoreServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    async def search(self, collection: str, query: str, k: int) -> list[Chunk]:
        request = pb.SearchRequest(collection=collection, text=query, k=k, mode=pb.HYBRID)
        request_id = request_id_var.get()
        metadata = ((REQUEST_ID_METADATA_KEY, request_id),) if request_id else None
        try:
            response = await self._stub.Search(request, timeout=self._timeout, metadata=metadata)
        except grpc.aio.AioRpcError as error:
            raise _retrieval_error(error, collection) from None
        return [chunk_from_hit(hit) for hit in response.hits]

    async def ready(self) -> bool:
        try:
            reply = await self._health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def close(self) -> None:
        await self._channel.close()


def _retrieval_error(error: grpc.aio.AioRpcError, collection: str) -> KloopError:
    code = error.code()
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(f"collection {collection!r} does not exist")
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE):
        return Unprocessable(f"the vector store refused the search: {error.details()}")
    if code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
    ):
        log.warning("vector store unavailable", code=code.name)
        hint = error_from_rpc(error).retry_after
        return Unavailable("the vector store is unavailable", retry_after=hint or 1.0)
    log.warning("vector store failed", code=code.name, error=error.details())
    return Unavailable("the vector store failed", retry_after=1.0)
