"""FastAPI application factory with kloop's HTTP contracts built in.

`create_http_app` gives /livez, /readyz, /metrics, the `{"error": {"code", "message"}}`
error shape for every failure, an X-Request-ID in and out, RED metrics by route
template, and OpenTelemetry server spans. The middlewares are plain ASGI callables
(no BaseHTTPMiddleware): no extra task or body buffering per request.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kloop_core.errors import KloopError, PayloadTooLarge, Unprocessable, error_for_unexpected
from kloop_core.logging import clean_request_id, get_logger, new_request_id, request_id_var
from kloop_core.metrics import HTTP_DURATION, HTTP_REQUESTS, metrics_payload, set_build_info

log = get_logger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
READINESS_TIMEOUT_SECONDS = 5.0
Readiness = Callable[[], bool | Awaitable[bool]]

# HTTP status -> error code, aligned with the KloopError codes.
_CODE_FOR_STATUS = {
    400: "invalid_argument",
    401: "unauthenticated",
    403: "permission_denied",
    404: "not_found",
    409: "conflict",
    413: "payload_too_large",
    422: "unprocessable",
    429: "resource_exhausted",
    500: "internal",
    501: "unimplemented",
    503: "unavailable",
    504: "deadline_exceeded",
}
# Anything else is folded into one label value: a client can send any method name.
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = details
    return {"error": error}


def _code_for_status(status: int) -> str:
    if status in _CODE_FOR_STATUS:
        return _CODE_FOR_STATUS[status]
    try:
        return re.sub(r"[^a-z0-9]+", "_", HTTPStatus(status).phrase.lower()).strip("_")
    except ValueError:
        return "error"


def kloop_error_response(error: KloopError) -> JSONResponse:
    retry_after = error.retry_after_header()
    return JSONResponse(
        {"error": error.to_dict()},
        status_code=error.http_status,
        headers={"Retry-After": retry_after} if retry_after is not None else None,
    )


async def _on_kloop_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, KloopError)
    if exc.http_status >= 500:
        log.warning("request failed", code=exc.code, error=exc.message)
    return kloop_error_response(exc)


async def _on_validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    # Only location and message: pydantic's `input` may echo a secret back.
    fields = [
        {
            "field": ".".join(str(part) for part in err.get("loc", ())),
            "message": str(err.get("msg", "invalid")),
        }
        for err in exc.errors()
    ]
    summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:5])
    more = f" (and {len(fields) - 5} more)" if len(fields) > 5 else ""
    return JSONResponse(
        error_body("unprocessable", f"invalid request: {summary}{more}", {"fields": fields}),
        status_code=422,
    )


# What FastAPI raises (as a 400) for a body json.loads cannot decode at all, e.g. bytes
# that are not UTF-8; every other malformed body is a 422, so this one is too.
_UNPARSABLE_BODY = "There was an error parsing the body"


async def _on_http_exception(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if (exc.status_code, exc.detail) == (400, _UNPARSABLE_BODY):
        if isinstance(exc.__cause__, UnicodeDecodeError):
            message = "request body is not valid UTF-8: send JSON encoded as UTF-8"
        else:
            message = "request body is not valid JSON"
        return kloop_error_response(Unprocessable(message))
    message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    if exc.status_code in (204, 304):  # no body allowed
        return Response(status_code=exc.status_code, headers=exc.headers)
    return JSONResponse(
        error_body(_code_for_status(exc.status_code), message),
        status_code=exc.status_code,
        headers=exc.headers,
    )


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
                    raise StarletteHTTPException(
                        413, f"request body exceeds {self.max_bytes} bytes"
                    )
            return message

        await self.app(scope, limited, send)


class RequestContextMiddleware:
    """Binds the request id (X-Request-ID, else generated), echoes it on the response,
    and turns an exception nobody handled into the generic 500 (or 503 when a
    dependency is down) JSON error, logged with its traceback."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        request_id = clean_request_id(incoming) or new_request_id()
        token = request_id_var.set(request_id)
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                headers = [
                    *(h for h in message.get("headers", ()) if h[0].lower() != b"x-request-id"),
                    (b"x-request-id", request_id.encode()),
                ]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if isinstance(exc, KloopError):  # raised outside any route (e.g. a middleware)
                error = exc
            else:
                error = error_for_unexpected(exc, request_id)
                log.error(
                    "unhandled exception",
                    method=scope.get("method"),
                    path=scope.get("path"),
                    exc_info=exc,
                )
            if response_started:
                raise  # too late for an error body; the server drops the connection
            await kloop_error_response(error)(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


class MetricsMiddleware:
    """kloop_http_requests_total / _duration_seconds labelled by route template."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # if the app raises before answering, the outer middleware sends 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            method = scope.get("method", "GET")
            method = method if method in _KNOWN_METHODS else "other"
            # The router stores the matched route in the scope; its path is the template
            # (/v1/models/{name}), never the raw path with ids in it.
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            HTTP_REQUESTS.labels(self.service, route, method, str(status)).inc()
            HTTP_DURATION.labels(self.service, route, method).observe(time.perf_counter() - started)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


async def _is_ready(readiness: Readiness) -> tuple[bool, str]:
    """Run the check (sync ones in the thread pool), bounded in time."""
    try:
        if inspect.iscoroutinefunction(readiness):
            result = await asyncio.wait_for(readiness(), READINESS_TIMEOUT_SECONDS)
        else:
            result = await asyncio.wait_for(run_in_threadpool(readiness), READINESS_TIMEOUT_SECONDS)
            if inspect.isawaitable(result):
                result = await asyncio.wait_for(result, READINESS_TIMEOUT_SECONDS)
    except TimeoutError:
        return False, "readiness check timed out"
    except Exception as exc:
        log.warning("readiness check failed", error=repr(exc))
        return False, "readiness check failed"
    return bool(result), "not ready"


def create_http_app(
    *,
    service: str,
    readiness: Readiness | None = None,
    title: str | None = None,
    version: str = "0.1.0",
    max_body_bytes: int | None = None,
) -> FastAPI:
    """A FastAPI app with kloop's ops endpoints, error contract, ids, metrics, tracing,
    and with `max_body_bytes`, a 413 for larger request bodies.

    Add routes to the returned app as usual (`app.include_router(...)`).
    """
    app = FastAPI(title=title or f"kloop {service}", version=version)
    set_build_info(service, version)
    if max_body_bytes is not None:
        # Added first = innermost: a 413 still gets the request id and is counted.
        app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)

    app.add_exception_handler(KloopError, _on_kloop_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    # Added last = outermost: the request id is bound before metrics and routes run.
    app.add_middleware(MetricsMiddleware, service=service)
    app.add_middleware(RequestContextMiddleware)

    @app.get("/livez", include_in_schema=False)
    async def livez() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        if readiness is None:
            return JSONResponse({"status": "ready"})
        ready, reason = await _is_ready(readiness)
        if ready:
            return JSONResponse({"status": "ready"})
        return JSONResponse(
            error_body("not_ready", reason), status_code=503, headers={"Retry-After": "1"}
        )

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:  # sync: rendering a big registry must not block the loop
        payload, content_type = metrics_payload()
        return Response(payload, media_type=content_type)

    FastAPIInstrumentor.instrument_app(
        app, excluded_urls="/livez$,/readyz$,/metrics$", exclude_spans=["receive", "send"]
    )
    return app
