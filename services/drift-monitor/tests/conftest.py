"""Drift-monitor fixtures: a model fitted on the builtin dataset (the reference) and a
Redis client on the root conftest's real redis-server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from kloop_core.redis import create_redis
from kloop_model.classifier import SentimentClassifier, TrainingParams
from kloop_model.dataset import builtin_dataset


@pytest.fixture(scope="session")
def builtin_model() -> SentimentClassifier:
    data = builtin_dataset()
    return SentimentClassifier(TrainingParams(epochs=200)).fit(data.texts, data.labels)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = create_redis(redis_url)
    yield client
    client.close()
