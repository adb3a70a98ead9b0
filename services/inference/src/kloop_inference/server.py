"""The inference server: one asyncio process running the gRPC (grpc.aio) and HTTP
(httptools) front ends, the batchers and the model sync task on one event loop; big
model executions run on a small thread pool."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kloop_core.grpc_server import SERVER_OPTIONS
from kloop_core.logging import get_logger
from kloop_core.metrics import set_build_info
from kloop_inference import grpc_api
from kloop_inference.http_api import HttpApi
from kloop_inference.http_server import HttpServer
from kloop_inference.models import LoadedModel, ModelManager, load_model
from kloop_inference.registry_client import RegistryModelSource
from kloop_inference.repository import LocalRepositorySource
from kloop_inference.service import InferenceService
from kloop_inference.settings import InferenceSettings
from kloop_inference.sync import ModelRef, ModelSource, ModelSync
from kloop_inference.telemetry import SERVICE, ModelMetrics, Spans, set_model_info

log = get_logger(__name__)


def default_source(settings: InferenceSettings) -> ModelSource:
    if settings.model_repository is not None:
        return LocalRepositorySource(settings.model_repository)
    return RegistryModelSource(
        settings.registry_addr, settings.cache_dir, timeout=settings.registry_timeout_seconds
    )


class InferenceServer:
    def __init__(self, settings: InferenceSettings, source: ModelSource | None = None) -> None:
        self.settings = settings
        self._executor = ThreadPoolExecutor(
            settings.inference_threads, thread_name_prefix="kloop-onnx"
        )
        self.manager = ModelManager(
            settings.models,
            on_change=self._on_models_changed,
            drain_timeout=settings.drain_timeout_seconds,
        )
        self.service = InferenceService(self.manager, settings)
        spans = Spans(settings.tracing_enabled)
        self.http_api = HttpApi(self.service, spans=spans)
        self._http = HttpServer(self.http_api.handle, max_body_bytes=settings.max_request_bytes)
        self._servicer = grpc_api.InferenceServicer(self.service, spans=spans)
        self._health = health.aio.HealthServicer()
        self._sync = ModelSync(
            self.manager,
            source or default_source(settings),
            self._load,
            retry_max_delay=settings.reconnect_max_delay_seconds,
        )
        self._grpc: grpc.aio.Server | None = None
        self._health_tasks: set[asyncio.Task[None]] = set()
        self.grpc_port = 0
        self.http_port = 0

    def _load(self, ref: ModelRef, data: bytes, tokenizer_json: bytes | None = None) -> LoadedModel:
        return load_model(
            ref.name,
            ref.version,
            ref.sha256,
            data,
            settings=self.settings,
            executor=self._executor,
            observer=ModelMetrics(ref.name, ref.version),
            tokenizer_json=tokenizer_json,
        )

    def _on_models_changed(self) -> None:
        set_model_info(
            [
                (name, alias, model.version, model.sha256)
                for name, alias, model in self.manager.loaded()
            ]
        )
        self._set_health(self.manager.ready)

    def _set_health(self, ready: bool) -> None:
        status = grpc_api.health_status(ready)
        for service in ("", grpc_api.SERVICE_NAME):
            task = asyncio.get_running_loop().create_task(self._health.set(service, status))
            self._health_tasks.add(task)
            task.add_done_callback(self._health_tasks.discard)

    async def start(self) -> None:
        settings = self.settings
        server = grpc.aio.server(
            options=list(SERVER_OPTIONS),
            maximum_concurrent_rpcs=settings.grpc_max_concurrent_rpcs,
        )
        grpc_api.add_to_server(self._servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            [grpc_api.SERVICE_NAME, "grpc.health.v1.Health", reflection.SERVICE_NAME], server
        )
        self.grpc_port = server.add_insecure_port(f"{settings.grpc_host}:{settings.grpc_port}")
        await server.start()
        self._grpc = server
        self._set_health(False)

        try:
            self.http_port = await self._http.start(settings.http_host, settings.http_port)
        except OSError:
            await server.stop(0)
            raise

        self._sync.start()
        set_build_info(SERVICE)
        log.info(
            "inference server started",
            grpc_port=self.grpc_port,
            http_port=self.http_port,
            models=settings.models,
        )

    async def stop(self) -> None:
        """Stop taking requests, finish those in flight, stop following the source."""
        await self._health.enter_graceful_shutdown()
        grace = self.settings.shutdown_grace_seconds
        if self._grpc is not None:
            await asyncio.gather(self._grpc.stop(grace), self._http.stop(grace))
        await self._sync.stop()
        self._executor.shutdown(wait=False, cancel_futures=True)
        log.info("inference server stopped")
