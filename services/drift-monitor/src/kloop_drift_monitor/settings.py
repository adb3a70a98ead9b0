"""Drift-monitor settings, from `KLOOP_DRIFT_MONITOR_*` environment variables."""

from __future__ import annotations

import socket
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from kloop_core.settings import Port, ServiceSettings
from kloop_drift_monitor.windows import MonitorConfig

ReportFormat = Literal["html", "json"]


class DriftMonitorSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="KLOOP_DRIFT_MONITOR_")

    grpc_port: Port = 50156
    http_port: Port = 18156  # /v1/status, /v1/reports, /livez /readyz /metrics

    # --- where references and reports live ------------------------------------------
    registry_addr: str = "127.0.0.1:50151"
    registry_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    mlflow_tracking_uri: str = "http://127.0.0.1:15000"
    # Per HTTP request to MLflow (its own default is 120 s x 7 retries).
    mlflow_timeout_seconds: int = Field(default=10, ge=1, le=300)
    # A version whose reference could not be fetched is asked for again after this long.
    reference_retry_seconds: float = Field(default=30.0, gt=0)

    # --- streams ----------------------------------------------------------------------
    events_stream: str = Field(default="kloop:prediction-events", min_length=1)
    feedback_stream: str = Field(default="kloop:feedback-events", min_length=1)
    # Malformed entries go to <stream> + this suffix, with the reason.
    dead_letter_suffix: str = Field(default=":dead", min_length=1)
    dead_letter_maxlen: int = Field(default=100_000, ge=1)
    consumer_group: str = Field(default="kloop-drift-monitor", min_length=1)
    # Stable across restarts of the same pod/host, so a restart re-reads its own
    # pending entries first; other consumers' stale entries are claimed anyway.
    consumer_name: str = Field(default_factory=socket.gethostname, min_length=1)
    # Where a new group starts: "0" = everything still in the stream, "$" = new only.
    group_start_id: str = "0"
    batch_size: int = Field(default=1000, ge=1, le=100_000)
    block_ms: int = Field(default=1000, ge=1, le=30_000)
    # Pending entries idle this long belong to a dead consumer and are claimed.
    claim_idle_seconds: float = Field(default=60.0, gt=0)
    claim_interval_seconds: float = Field(default=10.0, gt=0)
    # An entry delivered this many times without being acknowledged is dead-lettered
    # (it made the monitor crash each time: never crash-loop on it).
    max_deliveries: int = Field(default=5, ge=1)
    reconnect_max_seconds: float = Field(default=10.0, gt=0)
    key_prefix: str = Field(default="kloop:drift", min_length=1)
    # Event ids are remembered (per model version) for at least this many of the
    # version's events, to drop the repeats a retried gateway write can leave.
    dedupe_events: int = Field(default=50_000, ge=1)

    # --- windows and drift ------------------------------------------------------------
    window_events: int = Field(default=1000, ge=1)
    # None: tumbling windows. Else a window is evaluated every `slide` events over the
    # last `window_events` (must divide it).
    window_slide_events: int | None = Field(default=None, ge=1)
    # Also close a slide once its first event is this old (event time), so a quiet
    # model still gets windows; windows under min_window_events are not decided.
    window_max_seconds: float | None = Field(default=None, gt=0)
    min_window_events: int = Field(default=100, ge=1)
    reservoir_size: int = Field(default=500, ge=1, le=100_000)
    history_windows: int = Field(default=20, ge=1, le=1000)
    psi_threshold: float = Field(default=0.2, gt=0)
    ks_threshold: float = Field(default=0.2, gt=0, le=1)
    js_threshold: float = Field(default=0.1, gt=0, le=1)

    # --- live accuracy ----------------------------------------------------------------
    # The label F1 is computed for (the gateway's labels[1]).
    positive_label: str = Field(default="positive", min_length=1)
    feedback_window: int = Field(default=1000, ge=1, le=100_000)

    # --- retrain trigger --------------------------------------------------------------
    trigger_enabled: bool = True
    trigger_windows: int = Field(default=3, ge=1)
    trigger_cooldown_seconds: float = Field(default=6 * 3600.0, gt=0)
    # A claimed trigger whose request was never confirmed sent (crash in between) is
    # released after this long, so a later window can try again.
    trigger_claim_seconds: float = Field(default=120.0, gt=0)
    # Celery broker of the worker; default: redis_url.
    celery_broker_url: SecretStr | None = None
    retrain_task: str = "kloop.retrain"
    retrain_queue: str = "training"

    # --- reports ----------------------------------------------------------------------
    # Every this many seconds, a report per monitored version (None: on demand only).
    report_interval_seconds: float | None = Field(default=None, gt=0)
    report_format: ReportFormat = "html"

    @model_validator(mode="after")
    def _check_windows(self) -> DriftMonitorSettings:
        self.monitor_config()  # raises ValueError on an inconsistent combination
        return self

    def monitor_config(self) -> MonitorConfig:
        return MonitorConfig(
            window_events=self.window_events,
            slide_events=self.window_slide_events or self.window_events,
            max_seconds=self.window_max_seconds,
            min_events=self.min_window_events,
            reservoir_size=self.reservoir_size,
            history=max(self.history_windows, self.trigger_windows),
            psi_threshold=self.psi_threshold,
            ks_threshold=self.ks_threshold,
            js_threshold=self.js_threshold,
            feedback_window=self.feedback_window,
            positive_label=self.positive_label,
        )

    def broker_url(self) -> str:
        return (self.celery_broker_url or self.redis_url).get_secret_value()
