"""Gateway settings, from `KLOOP_GATEWAY_*` environment variables."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from kloop_core.settings import Port, ServiceSettings

DAY_SECONDS = 24 * 3600


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="KLOOP_GATEWAY_")

    grpc_port: Port = 50154
    http_port: Port = 18154

    # --- inference ------------------------------------------------------------------
    inference_addr: str = "127.0.0.1:50153"
    # Deadline of one ModelInfer call (and of the whole request's upstream part).
    inference_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    # Redis commands on the request path; a slower reply means Redis is in trouble.
    redis_timeout_seconds: float = Field(default=0.5, gt=0, le=10)

    # --- auth and rate limits -------------------------------------------------------
    # Off only for local development: every caller then has every scope.
    auth_enabled: bool = True
    # A verified key is trusted this long without asking Redis again (one round trip
    # less per request); a revocation therefore takes effect within this time.
    auth_cache_seconds: float = Field(default=1.0, ge=0, le=60)
    # Per key (a key's own rate_per_second / burst override these).
    rate_limit_per_second: float = Field(default=100.0, gt=0)
    rate_limit_burst: int = Field(default=200, ge=1)

    # --- input limits ---------------------------------------------------------------
    max_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    max_text_chars: int = Field(default=10_000, ge=1)
    max_batch_texts: int = Field(default=128, ge=1, le=10_000)

    # --- answers --------------------------------------------------------------------
    # The model's output is P(labels[1]); labels[1] when it is >= threshold.
    labels: tuple[str, str] = ("negative", "positive")
    threshold: float = Field(default=0.5, ge=0, le=1)

    # --- prediction cache -----------------------------------------------------------
    cache_enabled: bool = True
    cache_ttl_seconds: int = Field(default=3600, ge=1)
    # How long an alias -> version mapping learned from an inference answer (not from a
    # model event) may key cache reads; bounds staleness if events never arrive.
    learned_alias_ttl_seconds: float = Field(default=5.0, ge=0)
    model_events_stream: str = Field(default="kloop:model-events", min_length=1)

    # --- traffic policy (defaults; changeable at runtime per model) ---------------------
    canary_percent: float = Field(default=0.0, ge=0, le=100)
    shadow_percent: float = Field(default=0.0, ge=0, le=100)
    sticky_routing: bool = False
    # Requests carrying this header (gRPC: the lowercase metadata key) with sticky
    # routing on always go to the same alias.
    route_key_header: str = Field(default="X-Kloop-Route-Key", pattern=r"^[A-Za-z0-9-]+$")
    policy_refresh_seconds: float = Field(default=1.0, gt=0)
    shadow_max_concurrency: int = Field(default=4, ge=1, le=1024)
    # After a canary/challenger answered NOT_FOUND, skip it this long (no extra calls).
    absent_alias_retry_seconds: float = Field(default=5.0, ge=0)

    # --- prediction and feedback records --------------------------------------------
    events_stream: str = Field(default="kloop:prediction-events", min_length=1)
    events_maxlen: int = Field(default=100_000, ge=1)
    event_sample_rate: float = Field(default=1.0, ge=0, le=1)
    # Raw text in events is personal data in many deployments: off unless asked for.
    event_include_text: bool = False
    # Predictions waiting to be written; beyond this new ones are dropped (counted).
    event_queue_size: int = Field(default=10_000, ge=1)
    event_batch_size: int = Field(default=256, ge=1)
    # The writer waits this long after a first prediction for others to share its
    # round trip (under load batches fill up without waiting).
    event_linger_seconds: float = Field(default=0.005, ge=0, le=1)
    # How long feedback can still be given for a prediction.
    prediction_ttl_seconds: int = Field(default=7 * DAY_SECONDS, ge=1)
    feedback_stream: str = Field(default="kloop:feedback-events", min_length=1)
    feedback_maxlen: int = Field(default=100_000, ge=1)
    feedback_ttl_seconds: int = Field(default=30 * DAY_SECONDS, ge=1)

    @field_validator("labels")
    @classmethod
    def _distinct_labels(cls, value: tuple[str, str]) -> tuple[str, str]:
        if value[0] == value[1] or not all(label.strip() for label in value):
            raise ValueError("labels must be two different non-empty strings")
        return value

    @model_validator(mode="after")
    def _body_fits_one_text(self) -> GatewaySettings:
        # A UTF-8 character takes up to 4 bytes; JSON escaping can take more, which the
        # body limit then catches first (413) as it should.
        if self.max_body_bytes < self.max_text_chars:
            raise ValueError("max_body_bytes must be at least max_text_chars")
        return self
