"""Document ingestion: a document's text -> chunks -> the vector store, and back out.

Replacing a document leaves no moment where a search finds neither its old nor its new
chunks: chunk ids are `<document id>:<index>`, so the new chunks overwrite the old ones
in place, batch by batch (Upsert inserts or replaces by id); each carries a `generation`
(the digest of what was ingested) in its metadata, and only when every new chunk is in
does one Delete remove the document's chunks of any other generation (the old tail, and
anything an earlier, interrupted run left). A search meanwhile sees old and new chunks
side by side, never a gap. An unchanged document (same text, source, metadata and
chunking) is a no-op. Every step is idempotent: a task redelivered after its worker
died simply runs again.

Afterwards the RAG answers built from the document are dropped from the answer cache
(the layout of kloop_rag.cache, reimplemented here: services share layouts, not code).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from kloop_worker.chunking import Chunk, ChunkSpec, chunk_document, format_of
from kloop_worker.datasets import InputError, local_path
from kloop_worker.vectorstore import Point, VectorStoreClient, keyword_filter

# Metadata keys the worker sets on every chunk (a document's own metadata cannot
# override them).
RESERVED = ("document_id", "source", "chunk", "heading", "content_sha256", "generation")

# kloop_rag.cache: `<ns>:doc:<document id>` is the set of answer keys built from the
# document; deleting them and the set at once (same script as kloop_rag.cache).
_INVALIDATE = """
local keys = redis.call('SMEMBERS', KEYS[1])
local deleted = 0
for i = 1, #keys, 500 do
  deleted = deleted + redis.call('DEL', unpack(keys, i, math.min(i + 499, #keys)))
end
redis.call('DEL', KEYS[1])
return deleted
"""


class DocumentError(ValueError):
    """A document that cannot be ingested as it is; the message says why and where."""


def invalidate_answers(client: redis.Redis, namespace: str, document_id: str) -> int:
    """Delete every cached RAG answer built from `document_id`; returns how many."""
    return int(client.eval(_INVALIDATE, 1, f"{namespace}:doc:{document_id}"))


def decode_text(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DocumentError(
            f"{name}: not valid UTF-8 (byte offset {e.start}: {data[e.start : e.end]!r})"
        ) from None


def read_document(uri: str, *, roots: Sequence[Path], max_bytes: int) -> bytes:
    """The bytes of a local file (a path or file:// URI) under one of `roots`."""
    try:
        path = local_path(uri).resolve()
    except InputError as e:
        raise DocumentError(str(e)) from None
    if not roots:
        raise DocumentError(f"{uri}: this worker reads no files (no ingest_roots configured)")
    if not any(path.is_relative_to(root.resolve()) for root in roots):
        raise DocumentError(f"{uri}: outside the document roots this worker may read")
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise DocumentError(f"{uri}: {size} bytes, more than the limit of {max_bytes}")
        return path.read_bytes()
    except FileNotFoundError:
        raise DocumentError(f"{uri}: no such file") from None
    except OSError as e:
        raise DocumentError(f"{uri}: cannot be read ({e.strerror})") from None


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def fingerprint(
    text_sha256: str, source: str, metadata: dict[str, Any], fmt: str, spec: ChunkSpec
) -> str:
    """What is in the store for a document: the same fingerprint, the same chunks."""
    identity = json.dumps(
        [text_sha256, source, metadata, fmt, spec.max_chars, spec.overlap],
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


def chunk_points(
    document_id: str,
    source: str,
    metadata: dict[str, Any],
    chunks: Sequence[Chunk],
    generation: str,
) -> list[Point]:
    own = {k: v for k, v in metadata.items() if k not in RESERVED}
    return [
        Point(
            id=f"{document_id}:{c.index}",
            text=c.text,
            metadata={
                **own,
                "document_id": document_id,
                "source": source,
                "chunk": c.index,
                "heading": c.heading,
                "content_sha256": sha256(c.text),
                "generation": generation,
            },
        )
        for c in chunks
    ]


@dataclass(frozen=True)
class Replaced:
    chunks: int
    removed: int  # old chunks deleted


def replace_chunks(
    store: VectorStoreClient,
    collection: str,
    document_id: str,
    points: Sequence[Point],
    generation: str,
    batch_size: int,
    between_batches: Callable[[], bool] = lambda: True,
) -> Replaced | None:
    """Upsert `points` in batches, then delete the document's chunks of any other
    generation. None when `between_batches()` said stop (the request was superseded:
    the newer one will finish the job)."""
    for start in range(0, len(points), batch_size):
        if start and not between_batches():
            return None
        store.upsert(collection, points[start : start + batch_size])
    removed = store.delete_where(
        collection,
        keyword_filter({"document_id": document_id}, {"generation": generation}),
    )
    return Replaced(len(points), removed)


def delete_chunks(store: VectorStoreClient, collection: str, document_id: str) -> int:
    return store.delete_where(collection, keyword_filter({"document_id": document_id}))


def chunks_of(text: str, source: str, declared_format: str, spec: ChunkSpec) -> list[Chunk]:
    return chunk_document(text, format_of(source, declared_format or None), spec)
