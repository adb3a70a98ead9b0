"""The HTTP application: kloop_core's FastAPI app (ops endpoints, error contract, RED
metrics, tracing, body-size limit) + the gateway's routes and lifespan, which also runs
the gRPC server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from kloop_core.grpc_server import start_service
from kloop_core.http_app import create_http_app
from kloop_gateway.api.routes import documents, feedback, jobs, predictions, traffic
from kloop_gateway.grpc_api import grpc_app
from kloop_gateway.service import Gateway
from kloop_gateway.settings import GatewaySettings


def create_app(settings: GatewaySettings, *, serve_grpc: bool = True) -> FastAPI:
    holder: dict[str, Gateway] = {}

    async def ready() -> bool:
        gateway = holder.get("gateway")
        return gateway is not None and await gateway.ready()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gateway = await Gateway.create(settings)
        holder["gateway"] = app.state.gateway = gateway
        running = None
        if serve_grpc:
            running = await asyncio.to_thread(
                start_service, grpc_app(gateway, asyncio.get_running_loop())
            )
        app.state.grpc = running
        try:
            yield
        finally:
            if running is not None:
                # In a thread: draining gRPC calls still need this loop to finish.
                await asyncio.to_thread(running.stop)
            await jobs.close_jobs(app)
            await documents.close_documents(app)
            await gateway.close()

    app = create_http_app(
        service="gateway",
        readiness=ready,
        title="kloop gateway",
        max_body_bytes=settings.max_body_bytes,
    )
    app.router.lifespan_context = lifespan
    for module in (predictions, feedback, traffic, jobs, documents):
        app.include_router(module.router)
    return app
