"""The gateway's domain series (RED per route comes from kloop_core's HTTP middleware
and gRPC interceptor). Labels are bounded: `model` is only ever a model inference knows
(set after its metadata was found), alias one of three, never a key or prediction id."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from kloop_core.metrics import LATENCY_BUCKETS

CACHE_LOOKUPS = Counter(
    "kloop_gateway_cache_lookups_total",
    "Prediction cache lookups per text: hit, miss, or bypass (version not known yet).",
    ["model", "result"],
)
PREDICTIONS = Counter(
    "kloop_gateway_predictions_total",
    "Predictions returned, by the alias and version that produced them.",
    ["model", "alias", "version", "label"],
)
UPSTREAM_DURATION = Histogram(
    "kloop_gateway_upstream_request_duration_seconds",
    "ModelInfer calls to inference, by alias and final gRPC code.",
    ["model", "alias", "code"],
    buckets=LATENCY_BUCKETS,
)
AUTH_FAILURES = Counter(
    "kloop_gateway_auth_failures_total",
    "Requests refused by auth: missing or invalid key, or missing scope.",
    ["reason"],
)
RATE_LIMITED = Counter(
    "kloop_gateway_rate_limited_requests_total",
    "Requests refused with 429 / RESOURCE_EXHAUSTED by the per-key rate limit.",
    ["scope"],
)
SHADOW_REQUESTS = Counter(
    "kloop_gateway_shadow_requests_total",
    "Shadow copies to the challenger: compared, failed, skipped (concurrency bound), "
    "absent (no challenger).",
    ["model", "outcome"],
)
SHADOW_COMPARISONS = Counter(
    "kloop_gateway_shadow_comparisons_total",
    "Texts scored by both the answering alias and the challenger, by label agreement.",
    ["model", "primary_alias", "agreement"],
)
SHADOW_SCORE_DIFFERENCE = Histogram(
    "kloop_gateway_shadow_score_difference",
    "Absolute score difference between the challenger and the answering alias, per text.",
    ["model", "primary_alias"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0),
)
EVENTS = Counter(
    "kloop_gateway_prediction_events_total",
    "Prediction records: written, dropped (queue full or shutdown), sampled_out "
    "(record kept, no stream event).",
    ["outcome"],
)
EVENT_QUEUE = Gauge(
    "kloop_gateway_prediction_event_queue",
    "Predictions accepted but not yet written to Redis.",
)
FEEDBACK = Counter(
    "kloop_gateway_feedback_total",
    "Feedback requests: recorded, duplicate, conflict, unknown (prediction id).",
    ["result"],
)
