"""Training fixtures over the real Redis and MLflow server of the root conftest, plus the
real registry service started in-process on a free port."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from kloop.registry.v1 import registry_pb2_grpc
from kloop.training.v1 import training_pb2_grpc
from kloop_core.grpc_server import RunningService, start_service
from kloop_core.redis import create_redis
from kloop_registry.main import build_app as build_registry_app
from kloop_registry.settings import RegistrySettings
from kloop_training.grpc_server import create_app
from kloop_training.pipeline import (
    DatasetRef,
    PipelineConfig,
    RunParams,
    RunSpec,
    VersionRequest,
)
from kloop_training.runs import RunStore
from kloop_training.settings import TrainingSettings
from kloop_training.tracking import MlflowTracker, configure_mlflow_client

# Fewer parity texts than production (10,000) keep most tests fast; the end-to-end
# gRPC test runs with the production default.
TEST_PARITY_TEXTS = 1000


@pytest.fixture(scope="session")
def registry_addr(
    mlflow_uri: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    settings = RegistrySettings(
        mlflow_tracking_uri=mlflow_uri,
        redis_url=redis_url,
        artifact_cache_dir=tmp_path_factory.mktemp("registry-cache"),
        events_stream=f"kloop:test-events:{uuid.uuid4().hex[:8]}",
        grpc_port=0,
        http_port=0,
        shutdown_grace_seconds=0.5,
    )
    with start_service(build_registry_app(settings), grpc_port=0, http_port=0) as running:
        yield f"127.0.0.1:{running.grpc_port}"


@pytest.fixture(scope="session")
def registry_stub(registry_addr: str) -> Iterator[registry_pb2_grpc.RegistryServiceStub]:
    with grpc.insecure_channel(registry_addr) as channel:
        yield registry_pb2_grpc.RegistryServiceStub(channel)


@pytest.fixture
def make_settings(
    redis_url: str, mlflow_uri: str, registry_addr: str
) -> Callable[..., TrainingSettings]:
    def make(**overrides: Any) -> TrainingSettings:
        values: dict[str, Any] = {
            "redis_url": redis_url,
            "mlflow_tracking_uri": mlflow_uri,
            "registry_addr": registry_addr,
            # Each service under test gets its own keys in the shared Redis.
            "redis_namespace": f"kloop:test-training:{uuid.uuid4().hex[:8]}",
            "watch_block_seconds": 0.2,
            "parity_texts": TEST_PARITY_TEXTS,
            "registry_attempts": 2,
            "grpc_port": 0,
            "http_port": 0,
            "shutdown_grace_seconds": 2.0,
            **overrides,
        }
        return TrainingSettings(**values)

    return make


@pytest.fixture
def start_training() -> Iterator[Callable[[TrainingSettings], RunningService]]:
    """Starts training services on free ports; stops them all after the test."""
    started: list[RunningService] = []

    def start(settings: TrainingSettings) -> RunningService:
        running = start_service(create_app(settings), grpc_port=0, http_port=0)
        started.append(running)
        return running

    yield start
    for running in reversed(started):
        running.stop(grace=0)


@pytest.fixture
def stub_for() -> Iterator[Callable[[RunningService], training_pb2_grpc.TrainingServiceStub]]:
    """A TrainingService stub for a running service (channels closed after the test)."""
    channels: list[grpc.Channel] = []

    def make(running: RunningService) -> training_pb2_grpc.TrainingServiceStub:
        channels.append(grpc.insecure_channel(f"127.0.0.1:{running.grpc_port}"))
        return training_pb2_grpc.TrainingServiceStub(channels[-1])

    yield make
    for channel in channels:
        channel.close()


@pytest.fixture
def store(redis_url: str) -> RunStore:
    return RunStore(
        create_redis(redis_url, socket_timeout=5.0),
        namespace=f"kloop:test-training:{uuid.uuid4().hex[:8]}",
    )


@pytest.fixture(scope="session")
def tracker(mlflow_uri: str) -> MlflowTracker:
    configure_mlflow_client(timeout_seconds=5, max_retries=0)
    return MlflowTracker(mlflow_uri, timeout_seconds=5)


@pytest.fixture
def model_name() -> str:
    return f"m-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def default_params() -> RunParams:
    return RunParams(
        seed=42, test_fraction=0.2, learning_rate=0.5, epochs=200, l2=1e-3, max_vocab=5000,
        min_count=1,
    )  # fmt: skip


@pytest.fixture
def builtin_spec(model_name: str, default_params: RunParams) -> RunSpec:
    return RunSpec(model_name, DatasetRef(), default_params, {"team": "tests"})


@pytest.fixture
def pipeline_config() -> PipelineConfig:
    return PipelineConfig(
        experiment_prefix="kloop-test",
        dataset_roots=[],
        max_dataset_bytes=1024 * 1024,
        parity_texts=TEST_PARITY_TEXTS,
        parity_tolerance=1e-5,
    )


@pytest.fixture
def write_file(tmp_path: Path) -> Callable[[str, bytes | str], Path]:
    def write(name: str, content: bytes | str) -> Path:
        path = tmp_path / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    return write


class RecordingRegistrar:
    """Stands in for the registry service here; the gRPC tests use the real one."""

    def __init__(self, fail_with: Exception | None = None) -> None:
        self.requests: list[VersionRequest] = []
        self._fail_with = fail_with

    def register_version(self, request: VersionRequest) -> str:
        self.requests.append(request)
        if self._fail_with is not None:
            raise self._fail_with
        return "7"


@pytest.fixture
def make_registrar() -> type[RecordingRegistrar]:
    return RecordingRegistrar
