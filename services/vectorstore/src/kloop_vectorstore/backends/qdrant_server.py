"""Qdrant-server backend through `qdrant-client` (in-cluster use).

Collections are Qdrant collections with a named dense vector and a BM25 sparse vector
(IDF modifier); what Qdrant does not know (embedding model, BM25 parameters) travels in
the collection's `metadata`. Specs are cached briefly: they never change for a name,
but another replica may delete and re-create one.

Tested with qdrant-client's local mode (`QdrantClient(path=...)` / `":memory:"`), which
answers the same client API in-process: there is no Qdrant server binary on the build
machine. Local mode is not thread-safe, so calls are serialised when `location` is a
path or ":memory:"; against a real server the client is used concurrently.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse

from kloop_core.errors import AlreadyExists, NotFound, Unavailable
from kloop_vectorstore.types import (
    DENSE_VECTOR,
    SPARSE_VECTOR,
    CollectionSpec,
    DenseQuery,
    Distance,
    Filter,
    Hit,
    Point,
    Query,
    point_id,
)

T = TypeVar("T")

_DISTANCES = {
    Distance.COSINE: models.Distance.COSINE,
    Distance.DOT: models.Distance.DOT,
    Distance.EUCLID: models.Distance.EUCLID,
}
SPEC_METADATA_KEY = "kloop_vectorstore"
SPEC_CACHE_SECONDS = 10.0


def client_filter(flt: Filter | None) -> models.Filter | None:
    if not flt:
        return None

    def condition(c: Any) -> models.FieldCondition:
        return models.FieldCondition(key=c.payload_key, match=models.MatchValue(value=c.value))

    return models.Filter(
        must=[condition(c) for c in flt.must] or None,
        must_not=[condition(c) for c in flt.must_not] or None,
    )


def _client_query(query: Query) -> tuple[Any, str]:
    if isinstance(query, DenseQuery):
        return query.vector, DENSE_VECTOR
    terms = query.terms
    return (
        models.SparseVector(indices=list(terms.indices), values=list(terms.values)),
        SPARSE_VECTOR,
    )


class QdrantServerBackend:
    """A Qdrant server (`url`), or qdrant-client's local mode (`location`)."""

    name = "qdrant"

    def __init__(
        self,
        *,
        url: str | None = None,
        api_key: str | None = None,
        location: str | None = None,
        timeout_seconds: float = 10.0,
        prefer_grpc: bool = True,
    ) -> None:
        if (url is None) == (location is None):
            raise ValueError("give exactly one of url (a server) or location (local mode)")
        if url is not None:
            self._client = QdrantClient(
                url=url,
                api_key=api_key,
                timeout=max(1, round(timeout_seconds)),
                prefer_grpc=prefer_grpc,
            )
            self._serial: threading.Lock | None = None
        else:
            local = {"location": location} if location == ":memory:" else {"path": location}
            self._client = QdrantClient(**local)
            self._serial = threading.Lock()
        self._specs: dict[str, tuple[CollectionSpec, float]] = {}

    @contextlib.contextmanager
    def _calling(self) -> Iterator[QdrantClient]:
        lock = self._serial
        if lock is None:
            yield self._client
            return
        with lock:
            yield self._client

    def _call(self, name: str, fn: Callable[[QdrantClient], T]) -> T:
        """Run `fn` on the client; a missing collection is NotFound, a dead server
        Unavailable."""
        try:
            with self._calling() as client:
                return fn(client)
        except UnexpectedResponse as exc:
            if exc.status_code == 404:
                self._specs.pop(name, None)
                raise NotFound(f"collection {name!r} does not exist") from exc
            raise
        except ValueError as exc:  # local mode: "Collection X not found"
            if "not found" in str(exc).lower():
                self._specs.pop(name, None)
                raise NotFound(f"collection {name!r} does not exist") from exc
            raise
        except (ConnectionError, TimeoutError) as exc:
            raise Unavailable("the Qdrant server is unavailable") from exc

    # --- collections ---------------------------------------------------------------

    def create_collection(self, spec: CollectionSpec) -> None:
        def create(client: QdrantClient) -> None:
            if client.collection_exists(spec.name):
                raise AlreadyExists(f"collection {spec.name!r} already exists")
            client.create_collection(
                spec.name,
                vectors_config={
                    DENSE_VECTOR: models.VectorParams(
                        size=spec.vector_size, distance=_DISTANCES[spec.distance]
                    )
                },
                sparse_vectors_config={
                    SPARSE_VECTOR: models.SparseVectorParams(modifier=models.Modifier.IDF)
                },
                metadata={SPEC_METADATA_KEY: spec.to_json()},
            )

        self._call(spec.name, create)
        self._specs[spec.name] = (spec, time.monotonic())

    def _spec_from_info(self, name: str, info: models.CollectionInfo) -> CollectionSpec:
        metadata = info.config.metadata or {}
        stored = metadata.get(SPEC_METADATA_KEY)
        if stored:
            return CollectionSpec.from_json(stored)
        # A collection made outside kloop: describe what we can.
        vectors = info.config.params.vectors
        params = vectors.get(DENSE_VECTOR) if isinstance(vectors, dict) else vectors
        if params is None:
            raise NotFound(f"collection {name!r} has no {DENSE_VECTOR!r} vector")
        by_qdrant = {v: k for k, v in _DISTANCES.items()}
        return CollectionSpec(
            name=name,
            vector_size=params.size,
            distance=by_qdrant.get(params.distance, Distance.COSINE),
        )

    def get_collection(self, name: str) -> CollectionSpec:
        cached = self._specs.get(name)
        if cached is not None and time.monotonic() - cached[1] < SPEC_CACHE_SECONDS:
            return cached[0]
        info = self._call(name, lambda c: c.get_collection(name))
        spec = self._spec_from_info(name, info)
        self._specs[name] = (spec, time.monotonic())
        return spec

    def list_collections(self) -> list[CollectionSpec]:
        names = self._call("", lambda c: [d.name for d in c.get_collections().collections])
        specs = []
        for name in sorted(names):
            with contextlib.suppress(NotFound):
                specs.append(self.get_collection(name))
        return specs

    def delete_collection(self, name: str) -> bool:
        def delete(client: QdrantClient) -> bool:
            if not client.collection_exists(name):
                raise NotFound(f"collection {name!r} does not exist")
            return bool(client.delete_collection(name))

        self._specs.pop(name, None)
        return self._call(name, delete)

    # --- points --------------------------------------------------------------------

    def count(self, name: str) -> int:
        return int(self._call(name, lambda c: c.count(name, exact=True).count))

    def upsert(self, name: str, points: Sequence[Point]) -> None:
        structs = []
        for p in points:
            vector: dict[str, Any] = {DENSE_VECTOR: p.vector}
            if p.sparse:
                vector[SPARSE_VECTOR] = models.SparseVector(
                    indices=list(p.sparse.indices), values=list(p.sparse.values)
                )
            structs.append(models.PointStruct(id=p.point_id, vector=vector, payload=p.payload()))
        self._call(name, lambda c: c.upsert(name, structs, wait=True))

    def delete_ids(self, name: str, doc_ids: Sequence[str]) -> int:
        ids = [point_id(d) for d in dict.fromkeys(doc_ids)]

        def delete(client: QdrantClient) -> int:
            present = client.retrieve(name, ids, with_payload=False, with_vectors=False)
            if present:
                client.delete(name, models.PointIdsList(points=[r.id for r in present]), wait=True)
            return len(present)

        return self._call(name, delete)

    def delete_filter(self, name: str, flt: Filter) -> int:
        condition = client_filter(flt)

        def delete(client: QdrantClient) -> int:
            matching = client.count(name, count_filter=condition, exact=True).count
            if matching:
                client.delete(name, models.FilterSelector(filter=condition), wait=True)
            return int(matching)

        return self._call(name, delete)

    def search(
        self, name: str, queries: Sequence[Query], limit: int, flt: Filter | None
    ) -> list[list[Hit]]:
        condition = client_filter(flt)
        requests = []
        for q in queries:
            vector, using = _client_query(q)
            requests.append(
                models.QueryRequest(
                    query=vector, using=using, limit=limit, filter=condition, with_payload=True
                )
            )
        responses = self._call(name, lambda c: c.query_batch_points(name, requests))
        return [[Hit.from_payload(p.score, p.payload) for p in r.points] for r in responses]

    # --- lifecycle -----------------------------------------------------------------

    def ready(self) -> bool:
        try:
            with self._calling() as client:
                client.get_collections()
        except Exception:
            return False
        return True

    def close(self) -> None:
        with self._calling() as client:
            client.close()
