"""Fixtures shared by every package's tests: real Redis and a real MLflow server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kloop_client.local import free_port, start_mlflow, start_redis

# Clients of a dead MLflow must fail fast in tests instead of retrying for minutes.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    state = tmp_path_factory.mktemp("redis")
    port = free_port()
    proc = start_redis(port, state)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    state: Path = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    proc = start_mlflow(port, state)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()
