"""The HTTP application: kloop_core's FastAPI app (ops endpoints, error contract, RED
metrics, tracing) + the RAG routes, a body-size limit and a lifespan that also runs
the gRPC server."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kloop_core.errors import PayloadTooLarge, Unprocessable
from kloop_core.grpc_server import start_service
from kloop_core.http_app import create_http_app, kloop_error_response
from kloop_rag.api.routes import ask
from kloop_rag.grpc_api import grpc_app
from kloop_rag.retrieval import Retriever
from kloop_rag.service import Rag
from kloop_rag.settings import RagSettings


class BodySizeLimit:
    """413 for bodies over `max_bytes`, decided while reading (as the gateway's)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            error = PayloadTooLarge(f"request body exceeds {self.max_bytes} bytes")
            await kloop_error_response(error)(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, f"request body exceeds {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)


# What FastAPI raises (as a 400) for a body json.loads cannot decode at all, e.g. bytes
# that are not UTF-8; every other malformed body is a 422, so this one is too.
_UNPARSABLE_BODY = "There was an error parsing the body"


def _malformed_body_is_422(app: FastAPI) -> None:
    render = app.exception_handlers[HTTPException]

    async def handler(request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException) and (exc.status_code, exc.detail) == (
            400,
            _UNPARSABLE_BODY,
        ):
            if isinstance(exc.__cause__, UnicodeDecodeError):
                message = "request body is not valid UTF-8: send JSON encoded as UTF-8"
            else:
                message = "request body is not valid JSON"
            return kloop_error_response(Unprocessable(message))
        response = render(request, exc)
        return await response if inspect.isawaitable(response) else response

    app.add_exception_handler(HTTPException, handler)


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

    app = create_http_app(service="rag", readiness=ready, title="kloop rag")
    app.router.lifespan_context = lifespan
    app.user_middleware.append(Middleware(BodySizeLimit, max_bytes=settings.max_body_bytes))
    _malformed_body_is_422(app)
    app.include_router(ask.router)
    return app
