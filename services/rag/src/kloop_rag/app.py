"""The HTTP application: kloop_core's FastAPI app (ops endpoints, error contract, RED
metrics, tracing, body-size limit) + the RAG routes and a lifespan that also runs the
gRPC server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from kloop_core.grpc_server import start_service
from kloop_core.http_app import create_http_app
from kloop_rag.api.routes import ask
from kloop_rag.grpc_api import grpc_app
from kloop_rag.retrieval import Retriever
from kloop_rag.service import Rag
from kloop_rag.settings import RagSettings


def create_app(
    settings: RagSettings, *, serve_grpc: bool = True, retriever: Retriever | None = None
) -> FastAPI:
    """`retriever`: another Retriever than the vector store client (tests)."""
    holder: dict[str, Rag] = {}

    async def ready() -> bool:
        rag = holder.get("rag")
        return rag is not None and await rag.ready()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        rag = Rag.create(settings, retriever)
        holder["rag"] = app.state.rag = rag
        running = None
        if serve_grpc:
            running = await asyncio.to_thread(
                start_service, grpc_app(rag, asyncio.get_running_loop())
            )
        app.state.grpc = running
        try:
            yield
        finally:
            if running is not None:
                await asyncio.to_thread(running.stop)
            await rag.close()

    app = create_http_app(
        service="rag", readiness=ready, title="kloop rag", max_body_bytes=settings.max_body_bytes
    )
    app.router.lifespan_context = lifespan
    app.include_router(ask.router)
    return app
