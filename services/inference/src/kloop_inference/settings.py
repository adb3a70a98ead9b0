"""Inference settings, from `KLOOP_INFERENCE_*` environment variables."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from kloop_core.settings import Port, ServiceSettings

DEFAULT_ALIAS = "production"
ALIASES = ("production", "canary", "challenger")

# Registered model names travel in URLs and metric labels: keep them plain.
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class InferenceSettings(ServiceSettings):
    """Example: `KLOOP_INFERENCE_MODELS='{"sentiment": ["production", "canary"]}'`.

    Serving the text embedder too: `KLOOP_INFERENCE_EMBEDDING_MODEL=embedder` (its
    `production` alias is added to `models`), or list it in `models` like any model.
    Whether a model is a text-embedding model is decided by the model itself (it was
    imported with a tokenizer), never by this configuration."""

    model_config = SettingsConfigDict(env_prefix="KLOOP_INFERENCE_")

    grpc_port: Port = 50153
    http_port: Port = 18153

    registry_addr: str = "127.0.0.1:50151"
    # Serve `<dir>/<name>/<version>/model.onnx` instead of asking the registry (development
    # and benchmarks): the highest version is `production`, nothing is hot-reloaded.
    model_repository: Path | None = None
    # Registered model name -> the aliases to serve. `production` is required for
    # readiness; the others are served while the registry has them.
    models: dict[str, list[str]] = Field(
        default_factory=lambda: {"sentiment": list(ALIASES)}, min_length=1
    )
    # A registered text-embedding model to serve as well (e.g. "embedder", imported with
    # `kloop models import model.onnx --name embedder --tokenizer tokenizer.json`).
    embedding_model: str = ""
    # Tokens per text for text-embedding models (longer texts are truncated);
    # sentence-transformers' max_seq_length for all-MiniLM-L6-v2.
    embedding_max_tokens: int = Field(default=256, ge=1, le=8192)
    cache_dir: Path = Path(tempfile.gettempdir()) / "kloop" / "inference-models"

    # Rows per model execution; a request with more rows runs alone.
    max_batch_size: int = Field(default=64, ge=1, le=65536)
    # How long queued requests may wait for more to join them while the model is busy.
    # 0: the next batch is whatever queued during the previous one. An idle model never
    # waits: its first request runs at once.
    max_queue_delay_ms: float = Field(default=0.0, ge=0, le=10_000)
    # Model executions that may run at once per loaded version, and threads for them.
    max_concurrent_batches: int = Field(default=1, ge=1, le=64)
    inference_threads: int = Field(default=1, ge=1, le=64)
    # Batches expected (from warm-up timings) to take less than this run on the event
    # loop; longer ones on a thread, where onnxruntime releases the GIL and the loop keeps
    # decoding requests meanwhile. Measured on 2 cores: the hand-off (~60 us plus context
    # switches) costs more than the overlap gains below ~1 ms, and requests that arrive
    # while the loop runs a batch simply form the next one.
    inline_max_cost_us: float = Field(default=1000.0, ge=0)
    # onnxruntime threads inside one execution; 1 keeps tail latency flat on small pods.
    intra_op_threads: int = Field(default=1, ge=1, le=64)

    # During start-up (and a model's first load) requests wait this long for it.
    startup_wait_seconds: float = Field(default=10.0, ge=0, le=600)
    # How long a replaced version may keep finishing its in-flight requests.
    drain_timeout_seconds: float = Field(default=30.0, gt=0)
    registry_timeout_seconds: float = Field(default=10.0, gt=0)
    # WatchModels reconnects back off exponentially up to this.
    reconnect_max_delay_seconds: float = Field(default=5.0, gt=0)
    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    # Spans per request; None = only when an OTLP endpoint is configured (a span costs
    # ~10 us, a lot next to a ~100 us request, and nobody sees it without an exporter).
    trace_requests: bool | None = None

    @field_validator("models")
    @classmethod
    def _valid_models(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, aliases in value.items():
            if not _MODEL_NAME.match(name):
                raise ValueError(f"model name {name!r} must match {_MODEL_NAME.pattern}")
            unknown = sorted(set(aliases) - set(ALIASES))
            if unknown:
                raise ValueError(f"model {name!r}: unknown aliases {unknown}; known: {ALIASES}")
            if DEFAULT_ALIAS not in aliases:
                raise ValueError(f"model {name!r} must include the {DEFAULT_ALIAS!r} alias")
        return {name: list(dict.fromkeys(aliases)) for name, aliases in value.items()}

    @model_validator(mode="after")
    def _embedding_model_is_served(self) -> InferenceSettings:
        name = self.embedding_model
        if name and name not in self.models:
            if not _MODEL_NAME.match(name):
                raise ValueError(f"embedding_model {name!r} must match {_MODEL_NAME.pattern}")
            self.models = {**self.models, name: [DEFAULT_ALIAS]}
        return self

    @model_validator(mode="after")
    def _threads_cover_batches(self) -> InferenceSettings:
        if self.inference_threads < self.max_concurrent_batches:
            raise ValueError("inference_threads must be >= max_concurrent_batches")
        return self

    @property
    def tracing_enabled(self) -> bool:
        return self.trace_requests if self.trace_requests is not None else bool(self.otlp_endpoint)
