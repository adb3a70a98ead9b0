"""Training settings, from `KLOOP_TRAINING_*` environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from kloop_core.settings import Port, ServiceSettings

MiB = 1024 * 1024


class TrainingSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="KLOOP_TRAINING_")

    grpc_port: Port = 50152
    http_port: Port = 18152

    mlflow_tracking_uri: str = "http://127.0.0.1:15000"
    # Per HTTP request to MLflow, and how often MLflow's client retries one: a dead
    # MLflow fails a run within seconds instead of MLflow's default 120 s x 7 retries.
    mlflow_timeout_seconds: int = Field(default=5, ge=1, le=300)
    mlflow_max_retries: int = Field(default=0, ge=0, le=5)
    experiment_prefix: str = Field(default="kloop", min_length=1)

    registry_addr: str = "127.0.0.1:50151"
    # Deadline of one RegisterVersion attempt, and how many attempts in all.
    registry_timeout_seconds: float = Field(default=30.0, gt=0)
    registry_attempts: int = Field(default=4, ge=1, le=10)

    max_dataset_bytes: int = Field(default=50 * MiB, ge=1)
    # When non-empty, dataset paths must resolve (symlinks followed) under one of these.
    dataset_roots: list[str] = []

    # Where runs execute: a thread pool in this process, or one Kubernetes Job per run
    # (configured by KLOOP_TRAINING_K8S_*; the chart's in-cluster default).
    executor: Literal["local", "kubernetes"] = "local"
    max_concurrent_runs: int = Field(default=1, ge=1, le=64)
    # Runs queued or running at once; SubmitRun answers RESOURCE_EXHAUSTED beyond it.
    max_queued_runs: int = Field(default=100, ge=1)

    # Key prefix in Redis. The local executor assumes one replica per namespace.
    redis_namespace: str = Field(default="kloop:training", min_length=1)
    # How long a finished run's progress events stay in Redis (the run record stays).
    events_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=60)
    # How long an idempotency key keeps pointing at its run.
    idempotency_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=60)
    # How long one blocking read in WatchRun waits before re-checking the client.
    watch_block_seconds: float = Field(default=1.0, gt=0, le=30)
    list_page_size: int = Field(default=50, ge=1, le=1000)

    # The ONNX graph must match the NumPy model within this on `parity_texts` texts.
    parity_texts: int = Field(default=10_000, ge=1)
    parity_tolerance: float = Field(default=1e-5, gt=0)

    # Training parameters a request leaves unset.
    default_seed: int = Field(default=42, ge=0)
    default_test_fraction: float = Field(default=0.2, gt=0, lt=1)
    default_learning_rate: float = Field(default=0.5, gt=0)
    default_epochs: int = Field(default=200, ge=1)
    default_l2: float = Field(default=1e-3, ge=0)
    default_max_vocab: int = Field(default=5000, ge=1)
    default_min_count: int = Field(default=1, ge=1)
