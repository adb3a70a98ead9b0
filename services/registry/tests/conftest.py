"""Registry fixtures over the real MLflow server and Redis of the root conftest."""

from __future__ import annotations

import uuid

import pytest

from kloop_registry.settings import RegistrySettings

from .factories import make_settings


@pytest.fixture
def model_name() -> str:
    return f"m-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def settings(
    mlflow_uri: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> RegistrySettings:
    return make_settings(mlflow_uri, redis_url, tmp_path_factory.mktemp("cache"))
