"""The RAG service's domain series (RED per route and RPC come from kloop_core). Labels
are bounded: model comes from the settings, never from a request; no collection,
question or key ids."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from kloop_core.metrics import LATENCY_BUCKETS

TOKENS = Counter(
    "kloop_rag_llm_tokens_total",
    "LLM tokens by kind: input (uncached), output, cache_read and cache_creation input.",
    ["model", "kind"],
)
COST = Counter(
    "kloop_rag_llm_cost_usd_total",
    "LLM spend in US dollars, from the per-model price table.",
    ["model"],
)
LLM_REQUESTS = Counter(
    "kloop_rag_llm_requests_total",
    "LLM calls (after the SDK's retries): ok, timeout, rate_limited, overloaded, error.",
    ["model", "outcome"],
)
STAGE_DURATION = Histogram(
    "kloop_rag_stage_duration_seconds",
    "Time per stage of an answer: retrieve, generate (LLM or extractive) and total.",
    ["stage", "mode"],
    buckets=LATENCY_BUCKETS,
)
CACHE_LOOKUPS = Counter(
    "kloop_rag_answer_cache_lookups_total",
    "Answer cache lookups: hit or miss.",
    ["result"],
)
ANSWERS = Counter(
    "kloop_rag_answers_total",
    "Answers returned, by mode (generative, extractive) and whether cached.",
    ["mode", "cached"],
)
EXTRACTIVE_ANSWERS = Counter(
    "kloop_rag_extractive_answers_total",
    "Answers made extractively (no LLM call), cache hits excluded.",
)
CITATIONS_DROPPED = Counter(
    "kloop_rag_citations_dropped_total",
    "Citation numbers in LLM answers that name no retrieved chunk (dropped).",
)
AUTH_FAILURES = Counter(
    "kloop_rag_auth_failures_total",
    "Requests refused by auth: missing or invalid key, or missing scope.",
    ["reason"],
)
RATE_LIMITED = Counter(
    "kloop_rag_rate_limited_requests_total",
    "Requests refused with 429 / RESOURCE_EXHAUSTED by the per-key rate limit.",
)
