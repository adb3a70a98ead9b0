"""Vector store settings, from `KLOOP_VECTORSTORE_*` environment variables."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from kloop_core.settings import Port, ServiceSettings
from kloop_vectorstore import bm25, fusion


class VectorStoreSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="KLOOP_VECTORSTORE_")

    grpc_port: Port = 50157
    http_port: Port = 18157

    # embedded: Qdrant's engine in-process (qdrant-edge), persisted under data_dir; the
    # local default, chosen by measurement (benchmarks/bench_vectorstore.py).
    # qdrant: a Qdrant server at qdrant_url (in-cluster), or qdrant-client's local mode
    # when qdrant_location is a path or ":memory:".
    backend: Literal["embedded", "qdrant"] = "embedded"
    data_dir: Path = Path(tempfile.gettempdir()) / "kloop" / "vectorstore"
    # Embedded: build the HNSW index (out of process) once this many points are not yet
    # indexed; 0 = never (exact brute-force search only).
    index_threshold: int = Field(default=10_000, ge=0)
    index_timeout_seconds: float = Field(default=3600.0, gt=0)
    search_threads: int | None = Field(default=None, ge=1, le=64)
    qdrant_url: str | None = None
    qdrant_api_key: SecretStr | None = None
    qdrant_location: str | None = None
    qdrant_timeout_seconds: float = Field(default=10.0, gt=0)

    # The inference server (Open Inference Protocol gRPC) that embeds texts.
    inference_addr: str = "127.0.0.1:50153"
    embed_batch_size: int = Field(default=64, ge=1, le=4096)
    # Per ModelInfer call; the caller's own deadline caps it.
    embed_timeout_seconds: float = Field(default=10.0, gt=0)
    embed_attempts: int = Field(default=2, ge=1, le=5)

    # Budget of a request whose caller set no deadline.
    request_timeout_seconds: float = Field(default=30.0, gt=0)
    max_batch_documents: int = Field(default=1000, ge=1, le=100_000)
    max_text_chars: int = Field(default=100_000, ge=1)
    max_metadata_bytes: int = Field(default=64 * 1024, ge=1)
    default_k: int = Field(default=10, ge=1)
    max_k: int = Field(default=1000, ge=1, le=10_000)
    max_filter_conditions: int = Field(default=32, ge=1)
    # Hybrid: candidates taken from each of dense and BM25 before fusion (at least k).
    hybrid_candidates: int = Field(default=100, ge=1, le=10_000)
    rrf_k: int = Field(default=fusion.DEFAULT_K, ge=0)

    # BM25 of new collections (fixed per collection at creation).
    bm25_k1: float = Field(default=bm25.K1, ge=0)
    bm25_b: float = Field(default=bm25.B, ge=0, le=1)
    bm25_avg_doc_length: float = Field(default=bm25.AVG_DOC_LENGTH, gt=0)

    @model_validator(mode="after")
    def _one_qdrant(self) -> VectorStoreSettings:
        if self.backend == "qdrant" and (self.qdrant_url is None) == (self.qdrant_location is None):
            raise ValueError("backend 'qdrant' needs exactly one of qdrant_url, qdrant_location")
        if self.default_k > self.max_k:
            raise ValueError("default_k must not exceed max_k")
        return self
