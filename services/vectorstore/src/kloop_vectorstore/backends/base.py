"""The one small interface both storage backends implement.

Backends store points (dense vector + BM25 sparse vector + payload) in collections and
answer nearest-neighbour queries; validation, embedding and fusion live above them in
`service.py`. Every method raises kloop errors (NotFound, AlreadyExists, ...) so the
service never sees an engine-specific exception for a known situation.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

from kloop_vectorstore.types import CollectionSpec, Filter, Hit, Point, Query


class VectorBackend(Protocol):
    name: str  # "embedded" | "qdrant": metric label and logs

    def create_collection(self, spec: CollectionSpec) -> None: ...

    def get_collection(self, name: str) -> CollectionSpec: ...

    def list_collections(self) -> list[CollectionSpec]: ...

    def delete_collection(self, name: str) -> bool: ...

    def count(self, name: str) -> int: ...

    def upsert(self, name: str, points: Sequence[Point]) -> None: ...

    def delete_ids(self, name: str, doc_ids: Sequence[str]) -> int: ...

    def delete_filter(self, name: str, flt: Filter) -> int: ...

    def search(
        self, name: str, queries: Sequence[Query], limit: int, flt: Filter | None
    ) -> list[list[Hit]]:
        """One ranked hit list per query (best first), all under the same filter."""
        ...

    def ready(self) -> bool: ...

    def close(self) -> None: ...


class ReadWriteLock:
    """Many readers or one writer; writers are not starved by a stream of readers."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writer and not self._writers_waiting)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            self._cond.wait_for(lambda: not self._writer and not self._readers)
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()
