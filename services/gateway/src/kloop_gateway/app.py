"""The HTTP application: kloop_core's FastAPI app (ops endpoints, error contract, RED
metrics, tracing) + the gateway's routes, body-size limit and lifespan, which also
runs the gRPC server."""

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
from kloop_gateway.api.routes import documents, feedback, jobs, predictions, traffic
from kloop_gateway.grpc_api import grpc_app
from kloop_gateway.service import Gateway
from kloop_gateway.settings import GatewaySettings


class BodySizeLimit:
    """413 for bodies over `max_bytes`, decided while reading, never after buffering:
    a declared Content-Length over the limit is refused before any byte is read, and a
    chunked body is cut off at the first chunk that passes the limit. (FastAPI's own
    `max_body_size` answers the first case in plain text, outside the error contract.)"""

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
                    # FastAPI re-raises HTTPException from body reading (any other
                    # exception there becomes a 400); the app's handler renders it.
                    raise HTTPException(413, f"request body exceeds {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)


# What FastAPI raises (as a 400) for a body json.loads cannot even decode, e.g. bytes
# that are not UTF-8; every other malformed body is a 422, so this one is too.
_UNPARSABLE_BODY = "There was an error parsing the body"


def _malformed_body_is_422(app: FastAPI) -> None:
    render = app.exception_handlers[HTTPException]

    async def handler(request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException) and (exc.status_code, exc.detail) == (
            400,
            _UNPARSABLE_BODY,
        ):
            return kloop_error_response(Unprocessable("request body is not valid JSON"))
        response = render(request, exc)
        return await response if inspect.isawaitable(response) else response

    app.add_exception_handler(HTTPException, handler)


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

    app = create_http_app(service="gateway", readiness=ready, title="kloop gateway")
    app.router.lifespan_context = lifespan
    # Innermost (appended after kloop_core's middlewares): a 413 still gets the request
    # id and is counted in the RED metrics.
    app.user_middleware.append(Middleware(BodySizeLimit, max_bytes=settings.max_body_bytes))
    _malformed_body_is_422(app)
    for module in (predictions, feedback, traffic, jobs, documents):
        app.include_router(module.router)
    return app
