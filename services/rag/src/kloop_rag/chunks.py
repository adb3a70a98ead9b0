"""What retrieval returns: a chunk of a document with its score and metadata."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Chunk:
    id: str
    text: str
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return str(self.metadata.get("source") or "")

    @property
    def document_id(self) -> str:
        """The document this chunk belongs to (its source when the metadata has no id)."""
        return str(self.metadata.get("document_id") or self.source or self.id)

    @property
    def chunk_index(self) -> int:
        raw = self.metadata.get("chunk")
        try:
            return int(raw) if raw is not None else -1
        except (TypeError, ValueError):
            return -1

    @property
    def content_hash(self) -> str:
        """sha256 of the text: an edited chunk keeps its id but not its hash."""
        return hashlib.sha256(self.text.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class Citation:
    ref: int  # the [n] the answer quotes
    id: str
    source: str
    document_id: str
    chunk: int
    score: float
    snippet: str

    @classmethod
    def of(cls, ref: int, chunk: Chunk, snippet_chars: int = 240) -> Citation:
        snippet = chunk.text[:snippet_chars]
        return cls(
            ref=ref,
            id=chunk.id,
            source=chunk.source,
            document_id=chunk.document_id,
            chunk=chunk.chunk_index,
            score=chunk.score,
            snippet=snippet,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "id": self.id,
            "source": self.source,
            "document_id": self.document_id,
            "chunk": self.chunk,
            "score": self.score,
            "snippet": self.snippet,
        }
