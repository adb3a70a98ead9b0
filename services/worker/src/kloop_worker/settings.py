"""Worker settings, from `KLOOP_WORKER_*` environment variables."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

from celery.schedules import crontab
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from kloop_core.settings import Port, ServiceSettings

MiB = 1024 * 1024
DAY_SECONDS = 24 * 3600

QueueName = Literal["scoring", "training", "ingestion", "maintenance"]
SCORING: QueueName = "scoring"
TRAINING: QueueName = "training"
INGESTION: QueueName = "ingestion"
MAINTENANCE: QueueName = "maintenance"
QUEUES: tuple[QueueName, ...] = (SCORING, TRAINING, INGESTION, MAINTENANCE)


def parse_cron(expression: str) -> crontab:
    """`minute hour day-of-month month day-of-week`, as in crontab(5)."""
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"cron {expression!r} must have 5 fields (m h dom mon dow)")
    minute, hour, day_of_month, month, day_of_week = fields
    try:
        return crontab(minute, hour, day_of_week, day_of_month, month)
    except ValueError as e:
        raise ValueError(f"cron {expression!r}: {e}") from e


class WorkerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="KLOOP_WORKER_")

    # ServiceSettings requires a gRPC port; the worker serves none.
    grpc_port: Port = 0
    # Prometheus /metrics of the worker process (0: a free port).
    http_port: Port = 18158

    # --- Celery -----------------------------------------------------------------------
    # Default: redis_url for both (one Redis is broker, result backend and state store).
    broker_url: SecretStr | None = None
    result_backend_url: SecretStr | None = None
    pool: Literal["threads", "prefork", "solo"] = "threads"
    concurrency: int = Field(default=4, ge=1, le=256)
    queues: list[QueueName] = Field(default_factory=lambda: list(QUEUES), min_length=1)
    # A task whose worker died (kill -9, lost node) is handed out again once it has been
    # unacknowledged this long; the sweep for such tasks runs every restore interval.
    # Every task must finish well within the visibility timeout (tasks are short here:
    # a chunk, a pipeline step), or it would be handed out twice.
    visibility_timeout_seconds: float = Field(default=10.0, ge=2, le=3600)
    unacked_restore_interval_seconds: float = Field(default=1.0, gt=0, le=60)
    result_expires_seconds: int = Field(default=DAY_SECONDS, ge=60)
    # Waits between retries grow from base to max (plus jitter); ETA tasks are held
    # unacknowledged, so the max stays under half the visibility timeout (validated).
    retry_backoff_seconds: float = Field(default=0.5, gt=0)
    retry_backoff_max_seconds: float = Field(default=5.0, gt=0)

    # --- dependencies -----------------------------------------------------------------
    inference_addr: str = "127.0.0.1:50153"
    inference_timeout_seconds: float = Field(default=30.0, gt=0)
    training_addr: str = "127.0.0.1:50152"
    registry_addr: str = "127.0.0.1:50151"
    # Deadline of one registry/training call (the registry's Promote scores holdouts).
    rpc_timeout_seconds: float = Field(default=30.0, gt=0)
    drift_monitor_url: str = "http://127.0.0.1:18156"
    drift_report_timeout_seconds: float = Field(default=120.0, gt=0)

    # --- batch scoring jobs -----------------------------------------------------------
    # Rows per chunk: one ModelInfer request and one idempotent result write each.
    job_chunk_size: int = Field(default=1000, ge=1, le=100_000)
    job_max_rows: int = Field(default=1_000_000, ge=1)
    job_max_text_chars: int = Field(default=10_000, ge=1)
    job_max_dataset_bytes: int = Field(default=256 * MiB, ge=1)
    # When non-empty, dataset paths must resolve (symlinks followed) under one of these.
    job_dataset_roots: list[Path] = []
    # Retries of a chunk whose inference call failed transiently, before its rows are
    # recorded as failed.
    job_chunk_retries: int = Field(default=8, ge=0, le=100)
    # The sweeper re-sends the work of a job without progress, or a pipeline whose next
    # step is overdue, by this long (a message lost with a Redis that restarted
    # without persistence, a gateway that died between saving a job and sending it).
    stall_seconds: float = Field(default=300.0, gt=0)

    # --- document ingestion (RAG) -----------------------------------------------------
    vectorstore_addr: str = "127.0.0.1:50157"
    # Deadline of one vector store call (an upsert embeds its batch through inference).
    vectorstore_timeout_seconds: float = Field(default=60.0, gt=0)
    # Chunks: at most ingest_chunk_size units (characters, or tokens of ~4 characters),
    # each repeating the last ingest_chunk_overlap units of the previous one.
    ingest_chunk_size: int = Field(default=1200, ge=16, le=1_000_000)
    ingest_chunk_overlap: int = Field(default=150, ge=0)
    ingest_chunk_unit: Literal["chars", "tokens"] = "chars"
    # Chunks per Upsert call.
    ingest_batch_size: int = Field(default=64, ge=1, le=1000)
    ingest_max_document_bytes: int = Field(default=10 * MiB, ge=1)
    # Documents given by path/URI must resolve under one of these; empty: none allowed.
    ingest_roots: list[Path] = []
    # Retries of a document while the vector store is unavailable, before it fails.
    ingest_retries: int = Field(default=10, ge=0, le=100)
    # The per-document lock (refreshed between batches) expires this long after its
    # holder died.
    ingest_lock_seconds: float = Field(default=30.0, ge=1)
    # How long the record of a deleted document stays readable.
    ingest_deleted_ttl_seconds: int = Field(default=7 * DAY_SECONDS, ge=60)
    # The RAG answer cache (kloop_rag.cache layout) whose entries of a changed or
    # deleted document are dropped; default: redis_url.
    rag_cache_redis_url: SecretStr | None = None
    rag_cache_namespace: str = Field(default="kloop:rag", min_length=1)

    # --- retraining pipeline ----------------------------------------------------------
    actor: str = Field(default="kloop-worker", min_length=1)
    # Training data: these shipped datasets ("builtin", "shifted") or CSV/JSONL files,
    # plus the texts that got feedback labels (when prediction events carry text).
    retrain_datasets: list[str] = Field(default_factory=lambda: ["builtin"], min_length=1)
    # Where the combined dataset file is written; the training service must read it.
    retrain_data_dir: Path = Path(tempfile.gettempdir()) / "kloop" / "retrain-data"
    training_params: dict[str, float] = {}
    training_poll_seconds: float = Field(default=2.0, gt=0)
    training_timeout_seconds: float = Field(default=3600.0, gt=0)
    # A failed training run (e.g. MLflow was down) is submitted again this many times.
    training_attempts: int = Field(default=3, ge=1, le=20)
    # The new version's holdout metrics must reach these floors and stay under these
    # ceilings, e.g. {"accuracy": 0.7} and {"log_loss": 0.6}.
    min_metrics: dict[str, float] = {}
    max_metrics: dict[str, float] = {}
    # A step failing transiently (a dependency down) is retried with backoff for this
    # long before the pipeline gives up.
    step_retry_budget_seconds: float = Field(default=600.0, gt=0)
    # Safety expiry of "a pipeline runs for this model" if a pipeline is abandoned.
    pipeline_lock_ttl_seconds: int = Field(default=12 * 3600, ge=60)
    pipeline_ttl_seconds: int = Field(default=30 * DAY_SECONDS, ge=60)
    audit_maxlen: int = Field(default=10_000, ge=10)
    prediction_events_stream: str = Field(default="kloop:prediction-events", min_length=1)
    feedback_stream: str = Field(default="kloop:feedback-events", min_length=1)
    feedback_max_events: int = Field(default=100_000, ge=1)
    positive_label: str = Field(default="positive", min_length=1)

    # --- canary analysis --------------------------------------------------------------
    canary_window_seconds: float = Field(default=600.0, gt=0)
    canary_min_events: int = Field(default=200, ge=1)
    # After the window, wait at most this long (from the canary's start) for min events.
    canary_max_wait_seconds: float = Field(default=3600.0, gt=0)
    canary_poll_seconds: float = Field(default=5.0, gt=0)
    canary_max_events: int = Field(default=200_000, ge=1)
    on_insufficient_traffic: Literal["rollback", "promote"] = "rollback"
    max_error_rate_increase: float = Field(default=0.01, ge=0, le=1)
    # p95 latency of the canary at most ratio x production's + slack.
    max_latency_ratio: float = Field(default=1.5, ge=1)
    latency_slack_seconds: float = Field(default=0.005, ge=0)
    # Two-sample Kolmogorov-Smirnov statistic between the two score distributions.
    max_score_ks: float = Field(default=0.5, gt=0, le=1)
    # For a retrain that drift triggered: production is the model that stopped fitting
    # the traffic, and the candidate is meant to score it differently (the gate has
    # already compared the two on labeled data), so by default the KS statistic is
    # recorded but does not fail the canary.
    max_score_ks_after_drift: float = Field(default=1.0, gt=0, le=1)
    # Both versions score the same probe texts (production's holdout, else the training
    # data; at most probe_texts): the share of equal labels must reach this.
    min_agreement: float = Field(default=0.8, ge=0, le=1)
    probe_texts: int = Field(default=200, ge=1, le=10_000)
    threshold: float = Field(default=0.5, ge=0, le=1)

    # --- schedules (celery beat) ------------------------------------------------------
    # Model -> cron of its scheduled retrain, e.g. {"sentiment": "0 3 * * 0"}.
    retrain_crons: dict[str, str] = {}
    # Nightly drift report of each of these models' production version (None: off).
    report_models: list[str] = Field(default_factory=lambda: ["sentiment"])
    drift_report_cron: str | None = "0 2 * * *"
    drift_report_format: Literal["html", "json"] = "html"
    sweep_interval_seconds: float = Field(default=30.0, gt=0)
    beat_schedule_file: Path = Path(tempfile.gettempdir()) / "kloop" / "celerybeat-schedule"

    # Key prefix of the pipeline records and audit log in Redis.
    namespace: str = Field(default="kloop:worker", min_length=1)

    @field_validator("retrain_crons")
    @classmethod
    def _valid_crons(cls, value: dict[str, str]) -> dict[str, str]:
        for expression in value.values():
            parse_cron(expression)
        return value

    @field_validator("drift_report_cron")
    @classmethod
    def _valid_report_cron(cls, value: str | None) -> str | None:
        if value is not None and value.strip():
            parse_cron(value)
            return value
        return None

    @model_validator(mode="after")
    def _waits_fit_the_visibility_timeout(self) -> WorkerSettings:
        # A countdown is spent holding the message unacknowledged: longer than the
        # visibility timeout and the broker would hand it out a second time.
        limit = self.visibility_timeout_seconds / 2
        for name in ("retry_backoff_max_seconds", "training_poll_seconds", "canary_poll_seconds"):
            if getattr(self, name) > limit:
                raise ValueError(f"{name} must be at most visibility_timeout_seconds / 2")
        if self.ingest_chunk_overlap >= self.ingest_chunk_size:
            raise ValueError("ingest_chunk_overlap must be less than ingest_chunk_size")
        if self.retry_backoff_seconds > self.retry_backoff_max_seconds:
            raise ValueError("retry_backoff_seconds must not exceed retry_backoff_max_seconds")
        return self

    @property
    def broker(self) -> str:
        return (self.broker_url or self.redis_url).get_secret_value()

    @property
    def result_backend(self) -> str:
        return (self.result_backend_url or self.broker_url or self.redis_url).get_secret_value()
