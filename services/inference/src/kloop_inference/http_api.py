"""Open Inference Protocol over HTTP: routes a parsed request to the service.

Routes: GET /v2, /v2/health/live, /v2/health/ready, /v2/models/{name}[/versions/{v}],
.../ready; POST .../infer; and /livez, /readyz, /metrics. OIP errors are
`{"error": "message"}` with 400 (bad request), 404 (unknown model or route), 405 (wrong
method), 413 (body too large, from the server), 503 (not ready, with Retry-After).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import orjson

from kloop_core.errors import KloopError
from kloop_core.logging import get_logger
from kloop_core.metrics import metrics_payload
from kloop_inference.http_server import HttpRequest, HttpResponse
from kloop_inference.service import InferenceService
from kloop_inference.telemetry import RedMetrics, RequestMetrics, Spans
from kloop_inference.tensors import TensorError, decode_http_request, encode_http_response

log = get_logger(__name__)

HEADER_LENGTH = b"inference-header-content-length"
_OCTETS = b"application/octet-stream"
_RETRY_AFTER = b"retry-after"
_INFER_ROUTE = "/v2/models/{name}/infer"
_FIXED_ROUTES = frozenset(
    {"/v2", "/v2/health/live", "/v2/health/ready", "/livez", "/readyz", "/metrics"}
)


class HttpApi:
    def __init__(self, service: InferenceService, *, spans: Spans) -> None:
        self._service = service
        self._spans = spans
        self._metrics = RequestMetrics("http", service.manager.configured)
        self._red = RedMetrics()

    async def handle(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        parts = request.path.split("/")
        route = _route(request.path, parts)
        if route is None:
            response = _json(404, {"error": f"no route for {request.path}"})
            route = "unmatched"
        elif request.method == "POST" and route.endswith("/infer"):
            response = await self._infer(request, parts, started)
            route = _INFER_ROUTE
        else:
            response = await self._other(request, route, parts)
        self._red.http(route, request.method, response.status, time.perf_counter() - started)
        return response

    # --- inference -------------------------------------------------------------------

    async def _infer(self, request: HttpRequest, parts: list[str], started: float) -> HttpResponse:
        name, version = _model_path(parts[3:-1])
        model_label = self._metrics.model_label(name)
        served_version = ""
        spans = self._spans
        span_scope = (
            spans.request("http", name, _carrier(request.headers))
            if spans.enabled
            else contextlib.nullcontext()
        )
        with span_scope as span:
            try:
                header_length = _header_length(request.headers.get(HEADER_LENGTH))
                model = await self._service.model(name, version)
                served_version = model.version
                if span is not None:
                    span.set_attribute("kloop.model.version", served_version)
                decoded = decode_http_request(request.body, header_length)
                outputs = await model.infer(decoded)
                body, json_length = encode_http_response(name, served_version, decoded, outputs)
            except KloopError as error:
                if span is not None:
                    span.set_attribute("kloop.error", error.message)
                self._metrics.record(model_label, served_version, error.code, 0.0)
                return _error(error)
            except Exception:
                log.exception("inference failed", model=name, version=served_version)
                self._metrics.record(model_label, served_version, "internal", 0.0)
                return _json(500, {"error": "internal error"})
        self._metrics.record(model_label, served_version, "ok", time.perf_counter() - started)
        if json_length is None:
            return HttpResponse(200, body)
        return HttpResponse(200, body, _OCTETS, ((HEADER_LENGTH, b"%d" % json_length),))

    # --- everything else -------------------------------------------------------------

    async def _other(self, request: HttpRequest, route: str, parts: list[str]) -> HttpResponse:
        allowed = "POST" if route.endswith("/infer") else "GET"
        if request.method != allowed and not (allowed == "GET" and request.method == "HEAD"):
            return _json(405, {"error": f"{request.path} takes {allowed}, not {request.method}"})
        try:
            return await self._get(route, parts)
        except KloopError as error:
            return _error(error)

    async def _get(self, route: str, parts: list[str]) -> HttpResponse:
        service = self._service
        if route == "/v2":
            return _json(200, service.server_metadata())
        if route == "/v2/health/live":
            return _json(200, {"live": True})
        if route == "/livez":
            return _json(200, {"status": "ok"})
        if route in ("/v2/health/ready", "/readyz"):
            return _readiness({"ready": service.ready})
        if route == "/metrics":
            payload, content_type = metrics_payload()
            return HttpResponse(200, payload, content_type.encode())
        if route.endswith("/ready"):
            name, version = _model_path(parts[3:-1])
            return _readiness({"name": name, "ready": service.model_ready(name, version)})
        name, version = _model_path(parts[3:])
        return _json(200, await service.model_metadata(name, version))


def _route(path: str, parts: list[str]) -> str | None:
    """The route template of `path` (a bounded metric label), None if there is none."""
    if path in _FIXED_ROUTES:
        return path
    if len(parts) < 4 or parts[1] != "v2" or parts[2] != "models" or not parts[3]:
        return None
    tail = parts[4:]
    suffix = ""
    if tail and tail[-1] in ("ready", "infer"):
        suffix = f"/{tail.pop()}"
    if not tail:
        return f"/v2/models/{{name}}{suffix}"
    if len(tail) == 2 and tail[0] == "versions" and tail[1]:
        return f"/v2/models/{{name}}/versions/{{version}}{suffix}"
    return None


def _model_path(rest: list[str]) -> tuple[str, str]:
    """[name] or [name, "versions", v] (already matched by `_route`) -> (name, version)."""
    return rest[0], rest[2] if len(rest) == 3 else ""


def _header_length(value: bytes | None) -> int | None:
    if value is None:
        return None
    if not value.isdigit():
        raise TensorError(
            f"Inference-Header-Content-Length must be a non-negative integer, got {value[:32]!r}"
        )
    return int(value)


def _carrier(headers: dict[bytes, bytes]) -> dict[str, str]:
    return {key.decode("latin-1"): value.decode("latin-1") for key, value in headers.items()}


def _json(
    status: int, document: Any, headers: tuple[tuple[bytes, bytes], ...] = ()
) -> HttpResponse:
    return HttpResponse(status, orjson.dumps(document), headers=headers)


def _readiness(document: dict[str, Any]) -> HttpResponse:
    """200 when ready; 503 + Retry-After when not (OIP says "not 200"; KServe and
    Kubernetes probes read 503)."""
    if document["ready"]:
        return _json(200, document)
    return _json(503, document, ((_RETRY_AFTER, b"1"),))


def _error(error: KloopError) -> HttpResponse:
    retry_after = error.retry_after_header()
    headers = ((_RETRY_AFTER, retry_after.encode()),) if retry_after is not None else ()
    return _json(error.http_status, {"error": error.message}, headers)
