"""Registry settings, from `KLOOP_REGISTRY_*` environment variables."""

from __future__ import annotations

import tempfile
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from kloop_core.settings import Port, ServiceSettings
from kloop_registry.gate import METRIC_DIRECTIONS


class RegistrySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="KLOOP_REGISTRY_")

    grpc_port: Port = 50151
    http_port: Port = 18151

    mlflow_tracking_uri: str = "http://127.0.0.1:15000"
    # Per HTTP request to MLflow. With no retries a dead MLflow answers UNAVAILABLE within
    # this bound instead of MLflow's default 120 s x 7 retries; callers retry with backoff.
    mlflow_timeout_seconds: int = Field(default=5, ge=1, le=300)
    mlflow_max_retries: int = Field(default=0, ge=0, le=5)
    # Bound on waiting for a new model version to leave PENDING_REGISTRATION.
    version_ready_timeout_seconds: float = Field(default=60.0, gt=0)

    events_stream: str = Field(default="kloop:model-events", min_length=1)
    events_maxlen: int = Field(default=100_000, ge=1)
    # How long one XREAD blocks in WatchModels before re-checking that the client is there.
    watch_block_seconds: float = Field(default=1.0, gt=0, le=30)

    promotion_metric: str = "log_loss"
    # Absolute improvement the candidate needs over the baseline on `promotion_metric`.
    promotion_margin: float = Field(default=0.01, ge=0)

    artifact_cache_dir: Path = Path(tempfile.gettempdir()) / "kloop" / "registry-artifacts"

    # Imported ("bring your own") models: the MLflow experiment their runs go to, and
    # the largest file accepted (an embedder is ~90 MB; 2 GiB is protobuf's own limit).
    import_experiment: str = Field(default="kloop-imported-models", min_length=1)
    import_max_file_bytes: int = Field(default=2 * 1024**3, ge=1024)

    # How long a mutation waits for the per-model lock before answering UNAVAILABLE, and
    # how long a held lock lives if its replica dies mid-operation.
    alias_lock_timeout_seconds: float = Field(default=10.0, gt=0)
    alias_lock_ttl_seconds: float = Field(default=120.0, gt=0)

    @field_validator("promotion_metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in METRIC_DIRECTIONS:
            known = ", ".join(sorted(METRIC_DIRECTIONS))
            raise ValueError(f"unknown metric {value!r}; known: {known}")
        return value
