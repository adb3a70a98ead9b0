"""The vector store's gRPC API (kloop.vectorstore.v1), as ingestion uses it."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.struct_pb2 import Struct

from kloop.vectorstore.v1 import vectorstore_pb2 as pb
from kloop.vectorstore.v1 import vectorstore_pb2_grpc as pb_grpc
from kloop_core.errors import error_from_rpc
from kloop_core.resilience import grpc_channel


@dataclass(frozen=True, slots=True)
class Point:
    id: str
    text: str
    metadata: Mapping[str, Any]


def keyword_filter(must: Mapping[str, str], must_not: Mapping[str, str] | None = None) -> pb.Filter:
    return pb.Filter(
        must=[pb.FieldCondition(key=k, keyword=v) for k, v in must.items()],
        must_not=[pb.FieldCondition(key=k, keyword=v) for k, v in (must_not or {}).items()],
    )


class VectorStoreClient:
    """Blocking calls with a deadline each; gRPC errors become KloopErrors (NotFound,
    Unavailable, ...), so callers tell "retry later" from "cannot work"."""

    def __init__(self, addr: str, *, timeout: float) -> None:
        self.addr = addr
        self.timeout = timeout
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._stub: pb_grpc.VectorStoreServiceStub | None = None

    def _call(self, method: str, request: Any) -> Any:
        with self._lock:
            if self._stub is None:
                self._channel = grpc_channel(self.addr)
                self._stub = pb_grpc.VectorStoreServiceStub(self._channel)
            stub = self._stub
        try:
            return getattr(stub, method)(request, timeout=self.timeout)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None

    def get_collection(self, name: str) -> pb.Collection:
        return self._call("GetCollection", pb.GetCollectionRequest(name=name))

    def upsert(self, collection: str, points: Sequence[Point]) -> int:
        documents = []
        for point in points:
            metadata = Struct()
            metadata.update(dict(point.metadata))
            documents.append(pb.Document(id=point.id, text=point.text, metadata=metadata))
        response = self._call(
            "Upsert", pb.UpsertRequest(collection=collection, documents=documents)
        )
        return int(response.upserted)

    def delete_where(self, collection: str, flt: pb.Filter) -> int:
        response = self._call("Delete", pb.DeleteRequest(collection=collection, filter=flt))
        return int(response.deleted)

    def search(
        self, collection: str, text: str, k: int = 10, flt: pb.Filter | None = None
    ) -> list[pb.ScoredDocument]:
        request = pb.SearchRequest(collection=collection, text=text, k=k, filter=flt)
        return list(self._call("Search", request).hits)

    def close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
            self._channel = self._stub = None
