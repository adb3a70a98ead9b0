"""The drift monitor's Prometheus series (default registry, served on /metrics).

Labels are bounded: model and version come from the registry's versions, feature and
metric from fixed sets, kind is prediction|feedback, reason a fixed set of codes.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from kloop_drift_monitor.quality import accuracy_f1, recent_counts
from kloop_drift_monitor.windows import VersionState

DRIFT_VALUE = Gauge(
    "kloop_drift_value",
    "Drift statistic of the last evaluated window against the version's reference.",
    ["model", "version", "feature", "metric"],
)
DRIFT_THRESHOLD = Gauge(
    "kloop_drift_threshold",
    "Threshold above which kloop_drift_value counts as drifted.",
    ["model", "version", "feature", "metric"],
)
DRIFT_DETECTED = Gauge(
    "kloop_drift_detected",
    "1 when the last decided window of the version drifted.",
    ["model", "version"],
)
DRIFTED_WINDOWS = Gauge(
    "kloop_drift_consecutive_windows",
    "Consecutive decided windows of the version that drifted.",
    ["model", "version"],
)
LIVE_ACCURACY = Gauge(
    "kloop_live_accuracy",
    "Accuracy over the most recent labeled predictions (feedback) of the version.",
    ["model", "version"],
)
LIVE_F1 = Gauge(
    "kloop_live_f1",
    "F1 of the positive label over the most recent labeled predictions of the version.",
    ["model", "version"],
)
EVENTS_PROCESSED = Counter(
    "kloop_drift_events_processed_total",
    "Stream entries counted into the monitor's state (after de-duplication).",
    ["kind"],
)
DUPLICATES = Counter(
    "kloop_drift_events_duplicate_total",
    "Stream entries skipped because their id was already counted.",
    ["kind"],
)
DEAD_LETTERED = Counter(
    "kloop_drift_events_dead_lettered_total",
    "Stream entries moved to the dead-letter stream, by reason.",
    ["kind", "reason"],
)
CONSUMER_LAG = Gauge(
    "kloop_drift_consumer_lag",
    "Entries of the stream the consumer group has not acknowledged (undelivered + pending).",
    ["stream"],
)
CONSUMER_PENDING = Gauge(
    "kloop_drift_consumer_pending",
    "Entries delivered to the consumer group and not yet acknowledged.",
    ["stream"],
)
WINDOWS = Counter(
    "kloop_drift_windows_total",
    "Windows evaluated, by whether they were decided and drifted.",
    ["model", "version", "outcome"],
)
RETRAIN_REQUESTS = Counter(
    "kloop_drift_retrain_requests_total",
    "Retrain requests sent to the worker.",
    ["model"],
)
RETRAIN_SUPPRESSED = Counter(
    "kloop_drift_retrain_suppressed_total",
    "Retrain triggers not sent: the model is in cooldown or another replica asked.",
    ["model"],
)
RETRAIN_FAILURES = Counter(
    "kloop_drift_retrain_failures_total",
    "Retrain requests that could not be sent (retried at the next drifted window).",
    ["model"],
)


def export_state(state: VersionState) -> None:
    """Set the per-version gauges from the state (after a commit, and at start-up)."""
    labels = (state.model, state.version)
    window = state.last_window
    if window is not None and window.decided:
        for drift in window.drift:
            DRIFT_VALUE.labels(*labels, drift.feature, drift.metric).set(drift.value)
            DRIFT_THRESHOLD.labels(*labels, drift.feature, drift.metric).set(drift.threshold)
        DRIFT_DETECTED.labels(*labels).set(1 if window.drifted else 0)
    DRIFTED_WINDOWS.labels(*labels).set(state.streak)
    if state.quality.recent:
        accuracy, f1 = accuracy_f1(recent_counts(state.quality))
        LIVE_ACCURACY.labels(*labels).set(accuracy)
        LIVE_F1.labels(*labels).set(f1)
