"""`kloop-drift-monitor`: the stream consumer, HTTP (FastAPI on uvicorn) and gRPC in
one process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI

from kloop_core.grpc_server import GrpcApp, start_service
from kloop_core.http_app import create_http_app
from kloop_core.logging import configure_logging, get_logger
from kloop_core.redis import create_redis
from kloop_core.settings import load_settings, redacted_dict
from kloop_core.tracing import configure_tracing, shutdown_tracing
from kloop_drift_monitor import api
from kloop_drift_monitor.clients import MlflowReports, RegistryClient, configure_mlflow_http
from kloop_drift_monitor.grpc_server import SERVICE_NAME, add_to_server
from kloop_drift_monitor.monitor import DriftMonitor
from kloop_drift_monitor.retrain import CeleryRetrainRequester
from kloop_drift_monitor.settings import DriftMonitorSettings

log = get_logger(__name__)


def build_monitor(settings: DriftMonitorSettings) -> DriftMonitor:
    configure_mlflow_http(settings.mlflow_timeout_seconds)
    requester = (
        CeleryRetrainRequester(
            settings.broker_url(), task_name=settings.retrain_task, queue=settings.retrain_queue
        )
        if settings.trigger_enabled
        else None
    )
    return DriftMonitor(
        settings,
        redis_client=create_redis(settings.redis_url),
        # XREADGROUP blocks up to block_ms: the socket must wait longer than that.
        consumer_client=create_redis(
            settings.redis_url, socket_timeout=settings.block_ms / 1000 + 5
        ),
        registry=RegistryClient(
            settings.registry_addr, timeout_seconds=settings.registry_timeout_seconds
        ),
        reports=MlflowReports(settings.mlflow_tracking_uri),
        requester=requester,
    )


def create_app(settings: DriftMonitorSettings, *, serve_grpc: bool = True) -> FastAPI:
    holder: dict[str, DriftMonitor] = {}

    def ready() -> bool:
        monitor = holder.get("monitor")
        return monitor is not None and monitor.ready()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        monitor = build_monitor(settings)
        holder["monitor"] = app.state.monitor = monitor
        monitor.start()
        running = None
        if serve_grpc:
            running = await asyncio.to_thread(
                start_service,
                GrpcApp(
                    settings=settings,
                    service_name="drift-monitor",
                    register=lambda server: add_to_server(monitor, server),
                    service_names=[SERVICE_NAME],
                    readiness=monitor.ready,
                    ops_http=False,
                ),
            )
        app.state.grpc = running
        try:
            yield
        finally:
            if running is not None:
                await asyncio.to_thread(running.stop)
            await asyncio.to_thread(monitor.close)

    app = create_http_app(service="drift-monitor", readiness=ready, title="kloop drift monitor")
    app.router.lifespan_context = lifespan
    app.include_router(api.router)
    return app


def main() -> None:
    settings = load_settings(DriftMonitorSettings)  # bad env: one line per variable, exit 2
    configure_logging("drift-monitor", settings.log_level, settings.log_format)
    configure_tracing("drift-monitor", settings.otlp_endpoint)
    log.info("starting", config=redacted_dict(settings))
    try:
        # uvicorn owns SIGTERM/SIGINT: it drains HTTP, then the lifespan stops gRPC and
        # the consumer (an uncommitted batch is simply redelivered).
        uvicorn.run(
            create_app(settings),
            host=settings.http_host,
            port=settings.http_port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
        )
    finally:
        shutdown_tracing()


if __name__ == "__main__":
    main()
