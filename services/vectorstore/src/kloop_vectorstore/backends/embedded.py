"""Embedded backend: Qdrant's engine in-process through `qdrant-edge-py`.

One Edge shard per collection under `<data_dir>/collections/<name>/shard`, next to a
`collection.json` holding what Qdrant does not (embedding model, BM25 parameters).
Writes go to the shard's write-ahead log, so an acknowledged upsert survives a crash;
`close()` flushes. A collection directory without `collection.json` is a create that
did not finish and is removed at start.

Edge searches a fresh (appendable) segment by brute force; `optimize()` builds the HNSW
index (measured at 100k x 384: ~24 ms p50 brute force, ~2.3 ms indexed). But the Python
binding holds the GIL for the whole build (measured: a 5 s build at 12k x 384 let no
other Python thread run; ~2 min at 100k on a busy 2-core machine), which would freeze
the gRPC server and its health checks. So the index is built out of process: once a
collection has `index_threshold` points not yet indexed, its shard is flushed and
copied, a child process (`python -m kloop_vectorstore.backends.index_build`) optimizes
the copy, and the copy is swapped in under the write lock, after the writes that came in
meanwhile are replayed onto it. Until then searches stay exact (brute force).

Crash safety of the swap: the live shard is renamed to `shard.old` before the new one
takes its place and is deleted only once the replayed writes are flushed; at start a
`shard.old` means a swap did not finish, and it wins over `shard`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from kloop_core.errors import AlreadyExists, NotFound
from kloop_core.logging import get_logger
from kloop_vectorstore.backends.base import ReadWriteLock
from kloop_vectorstore.types import (
    DENSE_VECTOR,
    SPARSE_VECTOR,
    CollectionSpec,
    Condition,
    DenseQuery,
    Distance,
    Filter,
    Hit,
    Point,
    Query,
    point_id,
)

log = get_logger(__name__)

SPEC_FILE = "collection.json"
SHARD_DIR = "shard"
STAGING_DIR = "shard.next"
OLD_DIR = "shard.old"

_DISTANCES = {
    Distance.COSINE: qe.Distance.Cosine,
    Distance.DOT: qe.Distance.Dot,
    Distance.EUCLID: qe.Distance.Euclid,
}


# qdrant-edge-py 0.9 turns MatchValue(True) into the integer 1 (bool is an int in
# Python and the binding tries int first), so a boolean condition never matches a JSON
# boolean. Booleans of the metadata are therefore also stored as the keywords
# "true"/"false" in a shadow tree under this field, and boolean conditions match there.
BOOLS_FIELD = "_kloop_bools"


def bool_tree(value: Any) -> Any:
    """The booleans of a metadata tree as "true"/"false", other leaves dropped."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        tree = {k: bool_tree(v) for k, v in value.items()}
        return {k: v for k, v in tree.items() if v is not None} or None
    if isinstance(value, list):
        items = [bool_tree(v) for v in value]
        return [v for v in items if v is not None] or None
    return None


def _edge_condition(c: Condition) -> qe.FieldCondition:
    if isinstance(c.value, bool):
        keyword = "true" if c.value else "false"
        return qe.FieldCondition(key=f"{BOOLS_FIELD}.{c.key}", match=qe.MatchValue(keyword))
    return qe.FieldCondition(key=c.payload_key, match=qe.MatchValue(c.value))


def edge_filter(flt: Filter | None) -> qe.Filter | None:
    if not flt:
        return None
    return qe.Filter(
        must=[_edge_condition(c) for c in flt.must] or None,
        must_not=[_edge_condition(c) for c in flt.must_not] or None,
    )


def _edge_point(p: Point) -> qe.Point:
    vectors: dict[str, Any] = {DENSE_VECTOR: p.vector}
    if p.sparse:
        vectors[SPARSE_VECTOR] = qe.SparseVector(list(p.sparse.indices), list(p.sparse.values))
    payload = p.payload()
    bools = bool_tree(p.metadata)
    if bools:
        payload[BOOLS_FIELD] = bools
    return qe.Point(p.point_id, vectors, payload)


def _edge_query(query: Query) -> Any:
    if isinstance(query, DenseQuery):
        return qe.Query.Nearest(query.vector, using=DENSE_VECTOR)
    terms = query.terms
    return qe.Query.Nearest(
        qe.SparseVector(list(terms.indices), list(terms.values)), using=SPARSE_VECTOR
    )


@dataclass
class _Collection:
    spec: CollectionSpec
    path: Path
    shard: qe.EdgeShard
    lock: ReadWriteLock = field(default_factory=ReadWriteLock)
    indexed_upto: int = 0  # point count when the last index build started
    building: bool = False
    # Writes since the shard was copied for an index build, replayed onto the copy.
    pending: list[Any] | None = None
    closed: bool = False


class EmbeddedBackend:
    """Qdrant Edge shards in this process (the local default)."""

    name = "embedded"

    def __init__(
        self,
        data_dir: Path,
        *,
        index_threshold: int = 10_000,
        index_timeout_seconds: float = 3600.0,
        search_threads: int | None = None,
    ) -> None:
        self._root = Path(data_dir) / "collections"
        self._root.mkdir(parents=True, exist_ok=True)
        self._index_threshold = index_threshold
        self._index_timeout = index_timeout_seconds
        self._search_threads = search_threads
        self._lock = threading.Lock()  # the collection table
        self._collections: dict[str, _Collection] = {}
        self._builders: set[threading.Thread] = set()
        self._load()

    # --- collections ---------------------------------------------------------------

    def _config(self, spec: CollectionSpec) -> qe.EdgeConfig:
        return qe.EdgeConfig(
            vectors={
                DENSE_VECTOR: qe.EdgeVectorParams(
                    size=spec.vector_size, distance=_DISTANCES[spec.distance]
                )
            },
            sparse_vectors={SPARSE_VECTOR: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
            max_search_threads=self._search_threads,
        )

    def _load(self) -> None:
        for path in sorted(self._root.iterdir()):
            if not path.is_dir():
                continue
            spec_file = path / SPEC_FILE
            if not spec_file.exists():
                log.warning("removing incomplete collection", path=str(path))
                shutil.rmtree(path, ignore_errors=True)
                continue
            spec = CollectionSpec.from_json(json.loads(spec_file.read_text()))
            if (path / OLD_DIR).exists():  # an index swap did not finish: the old one wins
                shutil.rmtree(path / SHARD_DIR, ignore_errors=True)
                (path / OLD_DIR).rename(path / SHARD_DIR)
            shutil.rmtree(path / STAGING_DIR, ignore_errors=True)
            shard = qe.EdgeShard.load(str(path / SHARD_DIR), self._config(spec))
            collection = _Collection(spec, path, shard)
            collection.indexed_upto = shard.info().indexed_vectors_count
            self._collections[spec.name] = collection
            log.info("collection loaded", collection=spec.name, points=self._count(collection))

    def _get(self, name: str) -> _Collection:
        collection = self._collections.get(name)
        if collection is None:
            raise NotFound(f"collection {name!r} does not exist")
        return collection

    def create_collection(self, spec: CollectionSpec) -> None:
        with self._lock:
            if spec.name in self._collections:
                raise AlreadyExists(f"collection {spec.name!r} already exists")
            path = self._root / spec.name
            if path.exists():
                shutil.rmtree(path)  # leftovers of an interrupted create or delete
            shard = qe.EdgeShard.create(str(path / SHARD_DIR), self._config(spec))
            tmp = path / f"{SPEC_FILE}.tmp"
            tmp.write_text(json.dumps(spec.to_json()))
            os.replace(tmp, path / SPEC_FILE)  # the collection exists from here on
            self._collections[spec.name] = _Collection(spec, path, shard)

    def get_collection(self, name: str) -> CollectionSpec:
        return self._get(name).spec

    def list_collections(self) -> list[CollectionSpec]:
        return sorted((c.spec for c in list(self._collections.values())), key=lambda s: s.name)

    def delete_collection(self, name: str) -> bool:
        with self._lock:
            collection = self._collections.pop(name, None)
        if collection is None:
            raise NotFound(f"collection {name!r} does not exist")
        with collection.lock.write():
            collection.closed = True
            (collection.path / SPEC_FILE).unlink(missing_ok=True)
            collection.shard.close()
        shutil.rmtree(collection.path, ignore_errors=True)
        return True

    # --- points --------------------------------------------------------------------

    @staticmethod
    def _count(collection: _Collection, flt: qe.Filter | None = None) -> int:
        return int(collection.shard.count(qe.CountRequest(exact=True, filter=flt)))

    def count(self, name: str) -> int:
        collection = self._get(name)
        with collection.lock.read():
            self._check_open(collection)
            return self._count(collection)

    @staticmethod
    def _check_open(collection: _Collection) -> None:
        if collection.closed:
            raise NotFound(f"collection {collection.spec.name!r} does not exist")

    def upsert(self, name: str, points: Sequence[Point]) -> None:
        collection = self._get(name)
        with collection.lock.write():
            self._check_open(collection)
            self._apply(
                collection, qe.UpdateOperation.upsert_points([_edge_point(p) for p in points])
            )
        self._maybe_build_index(collection)

    def delete_ids(self, name: str, doc_ids: Sequence[str]) -> int:
        collection = self._get(name)
        ids = [point_id(d) for d in dict.fromkeys(doc_ids)]
        with collection.lock.write():
            self._check_open(collection)
            present = collection.shard.retrieve(ids, False, False)
            if present:
                self._apply(collection, qe.UpdateOperation.delete_points([r.id for r in present]))
            return len(present)

    def delete_filter(self, name: str, flt: Filter) -> int:
        collection = self._get(name)
        condition = edge_filter(flt)
        assert condition is not None, "delete by filter needs conditions"
        with collection.lock.write():
            self._check_open(collection)
            matching = self._count(collection, condition)
            if matching:
                self._apply(collection, qe.UpdateOperation.delete_points_by_filter(condition))
            return matching

    def search(
        self, name: str, queries: Sequence[Query], limit: int, flt: Filter | None
    ) -> list[list[Hit]]:
        collection = self._get(name)
        condition = edge_filter(flt)
        requests = [
            qe.QueryRequest(limit=limit, query=_edge_query(q), filter=condition, with_payload=True)
            for q in queries
        ]
        with collection.lock.read():
            self._check_open(collection)
            if len(requests) == 1:
                results = [collection.shard.query(requests[0])]
            else:
                results = collection.shard.query_batch(qe.QueryBatchRequest(requests))
        return [[Hit.from_payload(p.score, p.payload) for p in points] for points in results]

    # --- indexing ------------------------------------------------------------------

    def _apply(self, collection: _Collection, operation: Any) -> None:
        """Apply a write (under the collection's write lock), logging it for a build."""
        collection.shard.update(operation)
        if collection.pending is not None:
            collection.pending.append(operation)

    def _maybe_build_index(self, collection: _Collection) -> None:
        if self._index_threshold <= 0 or collection.building or collection.closed:
            return
        if self._count(collection) - collection.indexed_upto < self._index_threshold:
            return
        self._start_build(collection)

    def _start_build(self, collection: _Collection) -> None:
        with self._lock:
            if collection.building:
                return
            collection.building = True
            thread = threading.Thread(
                target=self._build_index, args=(collection,), name="kloop-edge-index", daemon=True
            )
            self._builders.add(thread)
        thread.start()

    def _build_index(self, collection: _Collection) -> None:
        live, staging = collection.path / SHARD_DIR, collection.path / STAGING_DIR
        old = collection.path / OLD_DIR
        swapping = False  # the live shard is closed: it must be reopened whatever happens
        try:
            with collection.lock.write():
                if collection.closed:
                    return
                collection.shard.flush()
                shutil.rmtree(staging, ignore_errors=True)
                shutil.copytree(live, staging)
                collection.indexed_upto = self._count(collection)
                collection.pending = []
            started = time.monotonic()
            subprocess.run(
                [sys.executable, "-m", "kloop_vectorstore.backends.index_build", str(staging)],
                check=True,
                capture_output=True,
                timeout=self._index_timeout,
            )
            with collection.lock.write():
                if collection.closed:
                    return
                pending = collection.pending or []
                collection.shard.close()
                swapping = True
                live.rename(old)
                staging.rename(live)
                shard = qe.EdgeShard.load(str(live), self._config(collection.spec))
                for operation in pending:
                    shard.update(operation)
                shard.flush()
                collection.shard = shard
                collection.pending = None
                shutil.rmtree(old, ignore_errors=True)
            log.info(
                "collection indexed",
                collection=collection.spec.name,
                points=collection.indexed_upto,
                replayed_writes=len(pending),
                seconds=round(time.monotonic() - started, 2),
            )
        except Exception as exc:
            stderr = exc.stderr if isinstance(exc, subprocess.CalledProcessError) else b""
            log.error(
                "index build failed",
                collection=collection.spec.name,
                error=repr(exc),
                stderr=(stderr or b"")[-2000:].decode(errors="replace"),
            )
            with collection.lock.write():
                if swapping:  # failed mid-swap: back to the old shard, which has every write
                    if old.exists():
                        shutil.rmtree(live, ignore_errors=True)
                        old.rename(live)
                    if not collection.closed:
                        collection.shard = qe.EdgeShard.load(
                            str(live), self._config(collection.spec)
                        )
                collection.pending = None
            shutil.rmtree(staging, ignore_errors=True)
        finally:
            if collection.closed:
                shutil.rmtree(staging, ignore_errors=True)
            collection.building = False
            with self._lock:
                self._builders.discard(threading.current_thread())

    def build_index(self, name: str) -> None:
        """Build the HNSW index of a collection now (out of process) and wait for it."""
        self._start_build(self._get(name))
        self.wait_indexed()

    def wait_indexed(self, timeout: float | None = None) -> None:
        """Block until background index builds are done (tests, benchmarks)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                threads = list(self._builders)
            if not threads:
                return
            for thread in threads:
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if deadline is not None and time.monotonic() >= deadline:
                return

    # --- lifecycle -----------------------------------------------------------------

    def ready(self) -> bool:
        return self._root.is_dir()

    def close(self) -> None:
        self.wait_indexed(timeout=self._index_timeout)
        with self._lock:
            collections, self._collections = list(self._collections.values()), {}
        for collection in collections:
            with collection.lock.write():
                if not collection.closed:
                    collection.closed = True
                    collection.shard.flush()
                    collection.shard.close()
