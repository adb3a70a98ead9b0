"""Domain types shared by the service and the backends (no I/O here)."""

from __future__ import annotations

import math
import re
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from kloop_core.errors import InvalidArgument
from kloop_vectorstore import bm25
from kloop_vectorstore.bm25 import SparseTerms

# Collection names end up as directory names (embedded) and Qdrant collection names.
COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
# Metadata keys usable in filters: words joined by dots (nested objects).
METADATA_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64}){0,7}$")
MAX_DOC_ID_CHARS = 512
MAX_VECTOR_SIZE = 65_536

# uuid5 namespace of document ids: the same string id is the same Qdrant point id in
# every process and on every backend. The original id is kept in the payload.
POINT_ID_NAMESPACE = uuid.UUID("6c0f2b1e-3d4a-5b6c-8d9e-0a1b2c3d4e5f")

# Payload layout of a point.
DOC_ID_FIELD = "doc_id"
TEXT_FIELD = "text"
METADATA_FIELD = "metadata"

# Named vectors in every collection.
DENSE_VECTOR = "dense"
SPARSE_VECTOR = "bm25"


def point_id(doc_id: str) -> str:
    """The Qdrant point id (a UUID string) of a document id."""
    return str(uuid.uuid5(POINT_ID_NAMESPACE, doc_id))


class Distance(StrEnum):
    COSINE = "cosine"
    DOT = "dot"
    EUCLID = "euclid"


@dataclass(frozen=True)
class Bm25Params:
    k1: float = bm25.K1
    b: float = bm25.B
    avg_doc_length: float = bm25.AVG_DOC_LENGTH


@dataclass(frozen=True)
class CollectionSpec:
    name: str
    vector_size: int
    distance: Distance = Distance.COSINE
    embedding_model: str = ""
    bm25: Bm25Params = field(default_factory=Bm25Params)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "vector_size": self.vector_size,
            "distance": self.distance.value,
            "embedding_model": self.embedding_model,
            "bm25": {
                "k1": self.bm25.k1,
                "b": self.bm25.b,
                "avg_doc_length": self.bm25.avg_doc_length,
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CollectionSpec:
        return cls(
            name=str(data["name"]),
            vector_size=int(data["vector_size"]),
            distance=Distance(data["distance"]),
            embedding_model=str(data.get("embedding_model", "")),
            bm25=Bm25Params(**data.get("bm25", {})),
        )


@dataclass(frozen=True)
class Condition:
    """Exact match of a metadata field (`key` may be dotted for nested objects)."""

    key: str
    value: str | int | bool

    @property
    def payload_key(self) -> str:
        return f"{METADATA_FIELD}.{self.key}"


@dataclass(frozen=True)
class Filter:
    must: tuple[Condition, ...] = ()
    must_not: tuple[Condition, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.must or self.must_not)


@dataclass(frozen=True)
class Point:
    """A document ready to store: its vector given or embedded, its BM25 terms."""

    doc_id: str
    vector: list[float]
    sparse: SparseTerms
    text: str
    metadata: dict[str, Any]

    @property
    def point_id(self) -> str:
        return point_id(self.doc_id)

    def payload(self) -> dict[str, Any]:
        return {DOC_ID_FIELD: self.doc_id, TEXT_FIELD: self.text, METADATA_FIELD: self.metadata}


@dataclass(frozen=True)
class Hit:
    doc_id: str
    score: float
    text: str
    metadata: dict[str, Any]

    @classmethod
    def from_payload(cls, score: float, payload: dict[str, Any] | None) -> Hit:
        payload = payload or {}
        return cls(
            doc_id=str(payload.get(DOC_ID_FIELD, "")),
            score=float(score),
            text=str(payload.get(TEXT_FIELD, "")),
            metadata=dict(payload.get(METADATA_FIELD) or {}),
        )


@dataclass(frozen=True)
class DenseQuery:
    vector: list[float]


@dataclass(frozen=True)
class SparseQuery:
    terms: SparseTerms


Query = DenseQuery | SparseQuery


def validate_collection_name(name: str) -> str:
    if not COLLECTION_NAME.match(name):
        raise InvalidArgument(
            f"collection name {name[:80]!r} is invalid: 1-64 characters, letters, digits,"
            " '_' or '-', starting with a letter or digit"
        )
    return name


def validate_vector(values: list[float], size: int, distance: Distance, what: str) -> list[float]:
    if len(values) != size:
        raise InvalidArgument(f"{what} has {len(values)} dimensions; the collection has {size}")
    if not all(math.isfinite(v) for v in values):
        raise InvalidArgument(f"{what} has a NaN or infinite value")
    if distance is Distance.COSINE and not any(values):
        raise InvalidArgument(f"{what} is all zeros, which has no cosine similarity")
    return values


def plain_metadata(value: Any) -> Any:
    """Metadata as stored: integral floats (protobuf Struct has only doubles) become
    ints, so that integer filters match what clients sent as integers."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    if isinstance(value, dict):
        return {str(k): plain_metadata(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_metadata(v) for v in value]
    return value
