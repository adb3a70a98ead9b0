"""An in-memory stand-in for the vector store service: kloop.vectorstore.v1 Search and
GetCollection over fixed documents, scored by shared keywords (no embeddings)."""

from __future__ import annotations

import math
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.struct_pb2 import Struct
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from kloop.vectorstore.v1 import vectorstore_pb2 as pb
from kloop.vectorstore.v1 import vectorstore_pb2_grpc as pb_grpc

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_STOP_TEXT = (
    "a an and are as at be by do does for from how in is it of on or the to what which who "
    "why with "
)
_STOP = frozenset(_STOP_TEXT.split())


def _words(text: str) -> list[str]:
    return [w.casefold() for w in _WORD.findall(text)]


@dataclass
class StoredChunk:
    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


def chunk(doc_id: str, index: int, text: str, source: str | None = None) -> StoredChunk:
    """A chunk with the metadata ingestion writes: source, document_id, chunk."""
    return StoredChunk(
        f"{doc_id}#{index}",
        text,
        {"source": source or doc_id, "document_id": doc_id, "chunk": index},
    )


class InMemoryVectorStore(pb_grpc.VectorStoreServiceServicer):  # type: ignore[misc]
    def __init__(self, collections: dict[str, list[StoredChunk]] | None = None) -> None:
        self.collections: dict[str, list[StoredChunk]] = collections or {}
        self.delay = 0.0  # seconds before each answer (deadline tests)
        self.searches = 0
        self._lock = threading.Lock()

    def put(self, collection: str, chunks: list[StoredChunk]) -> None:
        """Insert or replace chunks by id."""
        with self._lock:
            stored = {c.id: c for c in self.collections.get(collection, [])}
            stored.update({c.id: c for c in chunks})
            self.collections[collection] = list(stored.values())

    def delete_document(self, collection: str, document_id: str) -> None:
        with self._lock:
            self.collections[collection] = [
                c
                for c in self.collections.get(collection, [])
                if c.metadata.get("document_id") != document_id
            ]

    def CreateCollection(self, request: pb.CreateCollectionRequest, context: Any) -> pb.Collection:
        with self._lock:
            if request.name in self.collections:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, f"collection {request.name!r} exists")
            self.collections[request.name] = []
        return pb.Collection(name=request.name, embedding_model=request.embedding_model)

    def Upsert(self, request: pb.UpsertRequest, context: Any) -> pb.UpsertResponse:
        if request.collection not in self.collections:
            context.abort(grpc.StatusCode.NOT_FOUND, f"collection {request.collection!r} not found")
        self.put(
            request.collection,
            [StoredChunk(d.id, d.text, MessageToDict(d.metadata)) for d in request.documents],
        )
        return pb.UpsertResponse(upserted=len(request.documents))

    def Delete(self, request: pb.DeleteRequest, context: Any) -> pb.DeleteResponse:
        """By ids, or by `must` keyword conditions (enough for ingestion)."""
        if request.collection not in self.collections:
            context.abort(grpc.StatusCode.NOT_FOUND, f"collection {request.collection!r} not found")
        ids = set(request.ids)
        must = [(c.key, c.keyword) for c in request.filter.must]

        def doomed(c: StoredChunk) -> bool:
            if ids:
                return c.id in ids
            return bool(must) and all(str(c.metadata.get(k)) == v for k, v in must)

        with self._lock:
            before = self.collections[request.collection]
            kept = [c for c in before if not doomed(c)]
            self.collections[request.collection] = kept
        return pb.DeleteResponse(deleted=len(before) - len(kept))

    def GetCollection(self, request: pb.GetCollectionRequest, context: Any) -> pb.Collection:
        chunks = self.collections.get(request.name)
        if chunks is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"collection {request.name!r} not found")
            raise AssertionError("abort raises")
        return pb.Collection(name=request.name, vector_size=0, documents=len(chunks))

    def Search(self, request: pb.SearchRequest, context: Any) -> pb.SearchResponse:
        self.searches += 1
        if self.delay:
            time.sleep(self.delay)
        with self._lock:
            chunks = self.collections.get(request.collection)
            chunks = list(chunks) if chunks is not None else None
        if chunks is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"collection {request.collection!r} not found")
            raise AssertionError("abort raises")
        if request.WhichOneof("query") != "text":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the stand-in only takes text queries")
        query = {w for w in _words(request.text) if w not in _STOP}
        scored = []
        for position, c in enumerate(chunks):
            words = _words(c.text)
            hits = sum(1 for w in set(words) if w in query)
            if hits:
                scored.append((hits / math.sqrt(len(words)), position, c))
        scored.sort(key=lambda s: (-s[0], s[1]))
        hits_pb = []
        for score, _, c in scored[: request.k or 10]:
            metadata = Struct()
            metadata.update(c.metadata)
            hits_pb.append(pb.ScoredDocument(id=c.id, score=score, text=c.text, metadata=metadata))
        return pb.SearchResponse(hits=hits_pb)


class VectorStoreServer:
    """The stand-in on a real gRPC server (with the health service) on 127.0.0.1."""

    def __init__(self, store: InMemoryVectorStore, port: int = 0) -> None:
        self.store = store
        self._server = grpc.server(ThreadPoolExecutor(max_workers=8))
        pb_grpc.add_VectorStoreServiceServicer_to_server(store, self._server)
        servicer = health.HealthServicer()
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, self._server)
        self.port = self._server.add_insecure_port(f"127.0.0.1:{port}")
        self.addr = f"127.0.0.1:{self.port}"
        self._server.start()

    def stop(self) -> None:
        self._server.stop(0).wait(5)
