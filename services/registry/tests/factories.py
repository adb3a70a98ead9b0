"""Builders for registry settings and domain objects over given MLflow/Redis URLs."""

from __future__ import annotations

import uuid
from pathlib import Path

from kloop_core.redis import create_redis
from kloop_registry.artifacts import ArtifactCache
from kloop_registry.service import Registry
from kloop_registry.settings import RegistrySettings
from kloop_registry.store import MlflowStore, configure_http


def make_settings(
    mlflow_uri: str, redis_url: str, cache_dir: Path, **overrides: object
) -> RegistrySettings:
    values = {
        "mlflow_tracking_uri": mlflow_uri,
        "redis_url": redis_url,
        "artifact_cache_dir": cache_dir,
        # A stream per test session keeps replays deterministic.
        "events_stream": f"kloop:test-events:{uuid.uuid4().hex[:8]}",
        "watch_block_seconds": 0.2,
        "grpc_port": 0,
        "http_port": 0,
        "shutdown_grace_seconds": 0.5,
        **overrides,
    }
    return RegistrySettings(**values)


def make_registry(settings: RegistrySettings) -> Registry:
    configure_http(settings.mlflow_timeout_seconds, settings.mlflow_max_retries)
    return Registry(
        settings,
        store=MlflowStore(settings.mlflow_tracking_uri),
        redis_client=create_redis(settings.redis_url),
        watch_client=create_redis(settings.redis_url, socket_timeout=3.0),
        cache=ArtifactCache(settings.artifact_cache_dir),
    )
