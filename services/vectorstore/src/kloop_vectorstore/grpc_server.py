"""gRPC edge: kloop.vectorstore.v1 messages to and from the domain (service.py).

Errors are kloop errors raised by the domain, mapped to status codes by kloop_core's
interceptor.
"""

from __future__ import annotations

import grpc
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct

from kloop.vectorstore.v1 import vectorstore_pb2 as pb
from kloop.vectorstore.v1 import vectorstore_pb2_grpc
from kloop_core.errors import InvalidArgument
from kloop_core.resilience import Deadline
from kloop_vectorstore.service import CollectionView, DocumentIn, SearchMode, VectorStore
from kloop_vectorstore.types import Condition, Distance, Filter, Hit

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["VectorStoreService"].full_name

_DISTANCE_IN = {
    pb.DISTANCE_UNSPECIFIED: Distance.COSINE,
    pb.COSINE: Distance.COSINE,
    pb.DOT: Distance.DOT,
    pb.EUCLID: Distance.EUCLID,
}
_DISTANCE_OUT = {Distance.COSINE: pb.COSINE, Distance.DOT: pb.DOT, Distance.EUCLID: pb.EUCLID}
_MODES = {
    pb.SEARCH_MODE_UNSPECIFIED: None,
    pb.DENSE: SearchMode.DENSE,
    pb.SPARSE: SearchMode.SPARSE,
    pb.HYBRID: SearchMode.HYBRID,
}


def collection_to_proto(view: CollectionView) -> pb.Collection:
    spec = view.spec
    return pb.Collection(
        name=spec.name,
        vector_size=spec.vector_size,
        distance=_DISTANCE_OUT[spec.distance],
        embedding_model=spec.embedding_model,
        documents=view.documents,
    )


def condition_from_proto(c: pb.FieldCondition) -> Condition:
    which = c.WhichOneof("match")
    if which is None:
        raise InvalidArgument(f"filter condition on {c.key!r} has no value to match")
    return Condition(c.key, getattr(c, which))


def filter_from_proto(message: pb.Filter) -> Filter:
    return Filter(
        must=tuple(condition_from_proto(c) for c in message.must),
        must_not=tuple(condition_from_proto(c) for c in message.must_not),
    )


def metadata_to_proto(metadata: dict[str, object]) -> Struct:
    struct = Struct()
    struct.update(metadata)
    return struct


def hit_to_proto(hit: Hit) -> pb.ScoredDocument:
    return pb.ScoredDocument(
        id=hit.doc_id, score=hit.score, text=hit.text, metadata=metadata_to_proto(hit.metadata)
    )


def _distance(value: int) -> Distance:
    try:
        return _DISTANCE_IN[value]
    except KeyError:
        raise InvalidArgument(f"unknown distance {value}") from None


def _mode(value: int) -> SearchMode | None:
    try:
        return _MODES[value]
    except KeyError:
        raise InvalidArgument(f"unknown search mode {value}") from None


class VectorStoreServicer(vectorstore_pb2_grpc.VectorStoreServiceServicer):  # type: ignore[misc]
    def __init__(self, store: VectorStore, default_timeout: float) -> None:
        self._store = store
        self._timeout = default_timeout

    def CreateCollection(
        self, request: pb.CreateCollectionRequest, context: grpc.ServicerContext
    ) -> pb.Collection:
        view = self._store.create_collection(
            request.name,
            request.vector_size,
            _distance(request.distance),
            request.embedding_model,
        )
        return collection_to_proto(view)

    def GetCollection(
        self, request: pb.GetCollectionRequest, context: grpc.ServicerContext
    ) -> pb.Collection:
        return collection_to_proto(self._store.get_collection(request.name))

    def ListCollections(
        self, request: pb.ListCollectionsRequest, context: grpc.ServicerContext
    ) -> pb.ListCollectionsResponse:
        views = self._store.list_collections()
        return pb.ListCollectionsResponse(collections=[collection_to_proto(v) for v in views])

    def DeleteCollection(
        self, request: pb.DeleteCollectionRequest, context: grpc.ServicerContext
    ) -> pb.DeleteCollectionResponse:
        return pb.DeleteCollectionResponse(deleted=self._store.delete_collection(request.name))

    def Upsert(self, request: pb.UpsertRequest, context: grpc.ServicerContext) -> pb.UpsertResponse:
        documents = [
            DocumentIn(
                id=d.id,
                text=d.text,
                metadata=json_format.MessageToDict(d.metadata) if d.HasField("metadata") else {},
                vector=list(d.vector),
            )
            for d in request.documents
        ]
        result = self._store.upsert(
            request.collection, documents, Deadline.from_grpc_context(context, self._timeout)
        )
        return pb.UpsertResponse(
            upserted=result.upserted, embedding_model_version=result.embedding_model_version
        )

    def Delete(self, request: pb.DeleteRequest, context: grpc.ServicerContext) -> pb.DeleteResponse:
        flt = filter_from_proto(request.filter) if request.HasField("filter") else None
        deleted = self._store.delete(request.collection, list(request.ids), flt)
        return pb.DeleteResponse(deleted=deleted)

    def Search(self, request: pb.SearchRequest, context: grpc.ServicerContext) -> pb.SearchResponse:
        which = request.WhichOneof("query")
        result = self._store.search(
            request.collection,
            text=request.text if which == "text" else None,
            vector=list(request.vector.values) if which == "vector" else None,
            k=request.k,
            flt=filter_from_proto(request.filter) if request.HasField("filter") else None,
            mode=_mode(request.mode),
            deadline=Deadline.from_grpc_context(context, self._timeout),
        )
        return pb.SearchResponse(
            hits=[hit_to_proto(h) for h in result.hits],
            embedding_model_version=result.embedding_model_version,
        )


def add_to_server(store: VectorStore, server: grpc.Server, default_timeout: float) -> None:
    vectorstore_pb2_grpc.add_VectorStoreServiceServicer_to_server(
        VectorStoreServicer(store, default_timeout), server
    )
