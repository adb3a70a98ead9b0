"""Vector store fixtures: the service on a real gRPC server in-process, over either
backend, embedding through a stand-in OIP server (or the real inference server)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kloop.vectorstore.v1 import vectorstore_pb2_grpc
from kloop_core.grpc_server import RunningService, start_service
from kloop_core.tracing import configure_tracing
from kloop_vectorstore.backends.base import VectorBackend
from kloop_vectorstore.backends.embedded import EmbeddedBackend
from kloop_vectorstore.backends.qdrant_server import QdrantServerBackend
from kloop_vectorstore.main import build_app
from kloop_vectorstore.settings import VectorStoreSettings


def _load(name: str) -> Any:
    # With --import-mode=importlib the tests folder is not a package on sys.path.
    module_name = f"kloop_vectorstore_tests_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(
        module_name, Path(__file__).with_name(f"{name}.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


embedding_models = _load("embedding_models")

BACKENDS = ["embedded", "qdrant"]


def make_backend(kind: str, path: Path) -> VectorBackend:
    if kind == "embedded":
        return EmbeddedBackend(path / "embedded", index_threshold=0)
    return QdrantServerBackend(location=str(path / "qdrant-local"))


def make_settings(inference_addr: str, **overrides: Any) -> VectorStoreSettings:
    values: dict[str, Any] = {
        "grpc_port": 0,
        "http_port": 0,
        "inference_addr": inference_addr,
        "embed_timeout_seconds": 2.0,
        "shutdown_grace_seconds": 0.5,
        "log_level": "WARNING",
        **overrides,
    }
    return VectorStoreSettings(**values)


class Service:
    """A running vector store and a stub on it."""

    def __init__(self, running: RunningService) -> None:
        self.running = running
        self.channel = grpc.insecure_channel(f"127.0.0.1:{running.grpc_port}")
        self.stub = vectorstore_pb2_grpc.VectorStoreServiceStub(self.channel)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.running.http_port}"

    def stop(self) -> None:
        self.channel.close()
        self.running.stop(grace=0)


ServiceFactory = Callable[..., Service]


@pytest.fixture
def stand_in() -> Iterator[tuple[Any, str]]:
    servicer = embedding_models.StandInInference()
    with embedding_models.serve_stand_in(servicer) as address:
        yield servicer, address


@pytest.fixture
def start(tmp_path: Path) -> Iterator[ServiceFactory]:
    """start(kind, inference_addr, **settings) -> Service; all stopped at the end."""
    started: list[Service] = []

    def factory(kind: str, inference_addr: str, **overrides: Any) -> Service:
        settings = make_settings(inference_addr, **overrides)
        backend = make_backend(kind, tmp_path)
        service = Service(start_service(build_app(settings, backend)))
        started.append(service)
        return service

    yield factory
    for service in started:
        service.stop()


@pytest.fixture(params=BACKENDS)
def backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def service(backend_kind: str, start: ServiceFactory, stand_in: tuple[Any, str]) -> Service:
    return start(backend_kind, stand_in[1])


@pytest.fixture(scope="session")
def span_exporter() -> InMemorySpanExporter:
    configure_tracing("vectorstore-tests", None)
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter
