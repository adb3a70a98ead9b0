"""Domain series of the vector store (RED per RPC comes from kloop_core's interceptor:
kloop_grpc_server_requests_total{service="vectorstore",method,code} and its histogram)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from kloop_core.metrics import LATENCY_BUCKETS

SEARCH_DURATION = Histogram(
    "kloop_vectorstore_search_duration_seconds",
    "Search time inside the service (embedding the query included), by mode and backend.",
    ["backend", "mode"],
    buckets=LATENCY_BUCKETS,
)
UPSERT_DURATION = Histogram(
    "kloop_vectorstore_upsert_duration_seconds",
    "Upsert batch time inside the service (embedding included), by backend.",
    ["backend"],
    buckets=LATENCY_BUCKETS,
)
UPSERTED_DOCUMENTS = Counter(
    "kloop_vectorstore_upserted_documents_total",
    "Documents written by Upsert.",
    ["backend"],
)
DELETED_DOCUMENTS = Counter(
    "kloop_vectorstore_deleted_documents_total",
    "Documents removed by Delete.",
    ["backend"],
)
DOCUMENTS = Gauge(
    "kloop_vectorstore_documents",
    "Documents per collection (updated on every write and collection read).",
    ["collection"],
)
EMBEDDING_CALLS = Counter(
    "kloop_vectorstore_embedding_requests_total",
    "ModelInfer calls to the inference server, by embedding model and outcome.",
    ["model", "outcome"],
)
EMBEDDED_TEXTS = Counter(
    "kloop_vectorstore_embedded_texts_total",
    "Texts embedded through the inference server.",
    ["model", "purpose"],
)
EMBEDDING_DURATION = Histogram(
    "kloop_vectorstore_embedding_duration_seconds",
    "Time of one ModelInfer call to the inference server.",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
