"""The vector store's behaviour: validation, embedding, BM25 encoding, fusion.

I/O stays at the edges: storage behind `VectorBackend`, embedding behind
`InferenceEmbedder`, the wire format in `grpc_server.py`. Every bad input raises
InvalidArgument with a message that says what was wrong.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from kloop_core.errors import FailedPrecondition, InvalidArgument
from kloop_core.resilience import Deadline
from kloop_core.tracing import get_tracer
from kloop_vectorstore import bm25
from kloop_vectorstore.backends.base import VectorBackend
from kloop_vectorstore.embedder import Embeddings
from kloop_vectorstore.fusion import rrf
from kloop_vectorstore.metrics import (
    DELETED_DOCUMENTS,
    DOCUMENTS,
    SEARCH_DURATION,
    UPSERT_DURATION,
    UPSERTED_DOCUMENTS,
)
from kloop_vectorstore.settings import VectorStoreSettings
from kloop_vectorstore.types import (
    MAX_DOC_ID_CHARS,
    MAX_VECTOR_SIZE,
    METADATA_KEY,
    Bm25Params,
    CollectionSpec,
    DenseQuery,
    Distance,
    Filter,
    Hit,
    Point,
    SparseQuery,
    plain_metadata,
    validate_collection_name,
    validate_vector,
)

tracer = get_tracer(__name__)


class Embedder(Protocol):
    def embed(
        self, model: str, texts: Sequence[str], deadline: Deadline, *, purpose: str = ...
    ) -> Embeddings: ...


class SearchMode(StrEnum):
    DENSE = "dense"
    SPARSE = "sparse"
    HYBRID = "hybrid"


@dataclass(frozen=True)
class CollectionView:
    spec: CollectionSpec
    documents: int


@dataclass(frozen=True)
class DocumentIn:
    id: str
    text: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    vector: Sequence[float] = ()


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    embedding_model_version: str = ""


@dataclass(frozen=True)
class UpsertResult:
    upserted: int
    embedding_model_version: str = ""


class VectorStore:
    def __init__(
        self, settings: VectorStoreSettings, backend: VectorBackend, embedder: Embedder
    ) -> None:
        self._settings = settings
        self._backend = backend
        self._embedder = embedder

    @property
    def backend(self) -> VectorBackend:
        return self._backend

    def ready(self) -> bool:
        return self._backend.ready()

    # --- collections ---------------------------------------------------------------

    def _view(self, spec: CollectionSpec) -> CollectionView:
        documents = self._backend.count(spec.name)
        DOCUMENTS.labels(spec.name).set(documents)
        return CollectionView(spec, documents)

    def create_collection(
        self, name: str, vector_size: int, distance: Distance, embedding_model: str
    ) -> CollectionView:
        validate_collection_name(name)
        if not 1 <= vector_size <= MAX_VECTOR_SIZE:
            raise InvalidArgument(f"vector_size must be between 1 and {MAX_VECTOR_SIZE}")
        if len(embedding_model) > 128 or embedding_model != embedding_model.strip():
            raise InvalidArgument("embedding_model must be a model name (at most 128 chars)")
        s = self._settings
        spec = CollectionSpec(
            name=name,
            vector_size=vector_size,
            distance=distance,
            embedding_model=embedding_model,
            bm25=Bm25Params(k1=s.bm25_k1, b=s.bm25_b, avg_doc_length=s.bm25_avg_doc_length),
        )
        self._backend.create_collection(spec)
        DOCUMENTS.labels(name).set(0)
        return CollectionView(spec, 0)

    def get_collection(self, name: str) -> CollectionView:
        return self._view(self._backend.get_collection(validate_collection_name(name)))

    def list_collections(self) -> list[CollectionView]:
        return [self._view(spec) for spec in self._backend.list_collections()]

    def delete_collection(self, name: str) -> bool:
        deleted = self._backend.delete_collection(validate_collection_name(name))
        with contextlib.suppress(KeyError):
            DOCUMENTS.remove(name)
        return deleted

    # --- writes --------------------------------------------------------------------

    def upsert(
        self, collection: str, documents: Sequence[DocumentIn], deadline: Deadline
    ) -> UpsertResult:
        started = time.perf_counter()
        spec = self._backend.get_collection(validate_collection_name(collection))
        self._check_batch(documents)
        to_embed = [i for i, d in enumerate(documents) if not d.vector]
        if to_embed and not spec.embedding_model:
            raise InvalidArgument(
                f"{len(to_embed)} documents have no vector (first: {documents[to_embed[0]].id!r})"
                f" and collection {spec.name!r} has no embedding model to embed their text:"
                " give vectors, or create the collection with an embedding_model"
            )
        vectors: dict[int, list[float]] = {}
        for i, doc in enumerate(documents):
            if doc.vector:
                vectors[i] = validate_vector(
                    list(doc.vector), spec.vector_size, spec.distance, f"document {doc.id!r} vector"
                )
        version = ""
        if to_embed:
            texts = [documents[i].text for i in to_embed]
            embeddings = self._embed(spec, texts, deadline, "document")
            version = embeddings.model_version
            for i, row in zip(to_embed, embeddings.vectors, strict=True):
                vectors[i] = validate_vector(
                    row.tolist(),
                    spec.vector_size,
                    spec.distance,
                    f"the embedding of document {documents[i].id!r}",
                )
        params = spec.bm25
        points = [
            Point(
                doc_id=doc.id,
                vector=vectors[i],
                sparse=bm25.document_vector(
                    doc.text, k1=params.k1, b=params.b, avg_doc_length=params.avg_doc_length
                ),
                text=doc.text,
                metadata=plain_metadata(doc.metadata),
            )
            for i, doc in enumerate(documents)
        ]
        self._backend.upsert(spec.name, points)
        UPSERTED_DOCUMENTS.labels(self._backend.name).inc(len(points))
        DOCUMENTS.labels(spec.name).set(self._backend.count(spec.name))
        UPSERT_DURATION.labels(self._backend.name).observe(time.perf_counter() - started)
        return UpsertResult(len(points), version)

    def _check_batch(self, documents: Sequence[DocumentIn]) -> None:
        s = self._settings
        if not documents:
            raise InvalidArgument("an upsert needs at least one document")
        if len(documents) > s.max_batch_documents:
            raise InvalidArgument(
                f"{len(documents)} documents in one upsert; at most {s.max_batch_documents}:"
                " split the batch"
            )
        seen: set[str] = set()
        for doc in documents:
            if not doc.id or len(doc.id) > MAX_DOC_ID_CHARS:
                raise InvalidArgument(
                    f"every document needs an id of 1 to {MAX_DOC_ID_CHARS} characters"
                )
            if doc.id in seen:
                raise InvalidArgument(f"document id {doc.id!r} appears twice in the batch")
            seen.add(doc.id)
            if len(doc.text) > s.max_text_chars:
                raise InvalidArgument(
                    f"document {doc.id!r} text has {len(doc.text)} characters;"
                    f" at most {s.max_text_chars}"
                )
            if not doc.vector and not doc.text.strip():
                raise InvalidArgument(f"document {doc.id!r} has neither a vector nor text")
            size = len(json.dumps(doc.metadata, separators=(",", ":")))
            if size > s.max_metadata_bytes:
                raise InvalidArgument(
                    f"document {doc.id!r} metadata is {size} bytes as JSON;"
                    f" at most {s.max_metadata_bytes}"
                )

    def delete(self, collection: str, ids: Sequence[str], flt: Filter | None) -> int:
        spec = self._backend.get_collection(validate_collection_name(collection))
        if ids and flt:
            raise InvalidArgument("delete by ids or by filter, not both")
        if ids:
            if len(ids) > self._settings.max_batch_documents:
                raise InvalidArgument(
                    f"{len(ids)} ids in one delete; at most {self._settings.max_batch_documents}"
                )
            deleted = self._backend.delete_ids(spec.name, ids)
        elif flt:
            self.check_filter(flt)
            deleted = self._backend.delete_filter(spec.name, flt)
        else:
            raise InvalidArgument(
                "a delete needs ids or a filter with at least one condition"
                " (to drop everything, delete the collection)"
            )
        DELETED_DOCUMENTS.labels(self._backend.name).inc(deleted)
        DOCUMENTS.labels(spec.name).set(self._backend.count(spec.name))
        return deleted

    # --- search --------------------------------------------------------------------

    def check_filter(self, flt: Filter) -> None:
        conditions = (*flt.must, *flt.must_not)
        if len(conditions) > self._settings.max_filter_conditions:
            raise InvalidArgument(
                f"filter has {len(conditions)} conditions; at most"
                f" {self._settings.max_filter_conditions}"
            )
        for c in conditions:
            if not METADATA_KEY.match(c.key):
                raise InvalidArgument(
                    f"filter key {c.key[:80]!r} is invalid: metadata field names of letters,"
                    " digits, '_' or '-', joined by '.' for nested fields"
                )
            if isinstance(c.value, str) and len(c.value) > 1024:
                raise InvalidArgument(f"filter value for {c.key!r} is longer than 1024 chars")

    def search(
        self,
        collection: str,
        *,
        text: str | None,
        vector: Sequence[float] | None,
        k: int,
        flt: Filter | None,
        mode: SearchMode | None,
        deadline: Deadline,
    ) -> SearchResult:
        started = time.perf_counter()
        spec = self._backend.get_collection(validate_collection_name(collection))
        s = self._settings
        k = k or s.default_k
        if not 1 <= k <= s.max_k:
            raise InvalidArgument(f"k must be between 1 and {s.max_k}, got {k}")
        if flt:
            self.check_filter(flt)
        if text is None and vector is None:
            raise InvalidArgument("a search needs a query: text or vector")
        if vector is not None:
            mode = mode or SearchMode.DENSE
            if mode is not SearchMode.DENSE:
                raise InvalidArgument(
                    f"mode {mode.name} needs a text query (BM25 scores words); a vector query"
                    " is DENSE only"
                )
            query_vector = validate_vector(
                list(vector), spec.vector_size, spec.distance, "query vector"
            )
        else:
            assert text is not None
            if not text.strip():
                raise InvalidArgument("the query text is empty")
            if len(text) > s.max_text_chars:
                raise InvalidArgument(f"the query text is longer than {s.max_text_chars} chars")
            mode = mode or SearchMode.HYBRID
            if mode is not SearchMode.SPARSE and not spec.embedding_model:
                raise InvalidArgument(
                    f"collection {spec.name!r} has no embedding model, so a text query can"
                    f" only be searched with mode SPARSE (BM25), not {mode.name}; or give a"
                    " vector"
                )

        with tracer.start_as_current_span(f"retrieve {spec.name}") as span:
            span.set_attribute("gen_ai.operation.name", "retrieve")
            span.set_attribute("gen_ai.data_source.id", spec.name)
            span.set_attribute("db.system.name", "qdrant")
            span.set_attribute("db.collection.name", spec.name)
            span.set_attribute("kloop.vectorstore.backend", self._backend.name)
            span.set_attribute("kloop.search.mode", mode.value)
            span.set_attribute("gen_ai.request.top_k", k)
            span.set_attribute("kloop.search.filtered", bool(flt))
            version = ""
            if mode is SearchMode.SPARSE:
                assert text is not None
                hits = self._backend.search(
                    spec.name, [SparseQuery(bm25.query_vector(text))], k, flt
                )[0]
            else:
                if text is not None:
                    embeddings = self._embed(spec, [text], deadline, "query")
                    version = embeddings.model_version
                    query_vector = validate_vector(
                        embeddings.vectors[0].tolist(),
                        spec.vector_size,
                        spec.distance,
                        "the query's embedding",
                    )
                dense = DenseQuery(query_vector)
                if mode is SearchMode.DENSE:
                    hits = self._backend.search(spec.name, [dense], k, flt)[0]
                else:
                    assert text is not None
                    hits = self._hybrid(spec.name, dense, text, k, flt)
            span.set_attribute("kloop.search.hits", len(hits))
            if version:
                span.set_attribute("gen_ai.request.model", spec.embedding_model)
        SEARCH_DURATION.labels(self._backend.name, mode.value).observe(
            time.perf_counter() - started
        )
        return SearchResult(hits, version)

    def _hybrid(
        self, collection: str, dense: DenseQuery, text: str, k: int, flt: Filter | None
    ) -> list[Hit]:
        candidates = max(k, self._settings.hybrid_candidates)
        sparse = SparseQuery(bm25.query_vector(text))
        if len(sparse.terms):
            dense_hits, sparse_hits = self._backend.search(
                collection, [dense, sparse], candidates, flt
            )
        else:  # only stopwords or punctuation: nothing for BM25 to score
            dense_hits = self._backend.search(collection, [dense], candidates, flt)[0]
            sparse_hits = []
        by_id = {h.doc_id: h for h in (*sparse_hits, *dense_hits)}
        fused = rrf(
            [[h.doc_id for h in dense_hits], [h.doc_id for h in sparse_hits]],
            k=self._settings.rrf_k,
        )
        return [
            Hit(doc_id, score, by_id[doc_id].text, by_id[doc_id].metadata)
            for doc_id, score in fused[:k]
        ]

    def _embed(
        self, spec: CollectionSpec, texts: list[str], deadline: Deadline, purpose: str
    ) -> Embeddings:
        embeddings = self._embedder.embed(spec.embedding_model, texts, deadline, purpose=purpose)
        dim = embeddings.vectors.shape[1] if embeddings.vectors.ndim == 2 else 0
        if dim != spec.vector_size:
            raise FailedPrecondition(
                f"embedding model {spec.embedding_model!r} returns {dim}-dimensional vectors;"
                f" collection {spec.name!r} holds {spec.vector_size}"
            )
        return embeddings
