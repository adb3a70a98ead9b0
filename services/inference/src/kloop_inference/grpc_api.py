"""Open Inference Protocol over gRPC (`inference.GRPCInferenceService`) on grpc.aio, in the
same event loop as the HTTP server and the batchers.

No interceptors on this path: each one costs a Python call chain per RPC; the servicer
records the same RED series, spans and error metadata itself. Errors: INVALID_ARGUMENT
(bad tensors), NOT_FOUND (unknown model or version), UNAVAILABLE (still loading, with a
retry-after hint in the trailing metadata).
"""

from __future__ import annotations

import contextlib
import time
from typing import NoReturn

import grpc
from grpc_health.v1 import health_pb2

from kloop.oip.v2 import grpc_predict_v2_pb2 as pb
from kloop.oip.v2 import grpc_predict_v2_pb2_grpc as pb_grpc
from kloop_core.errors import Internal, KloopError, error_metadata
from kloop_core.logging import get_logger
from kloop_inference.service import InferenceService
from kloop_inference.telemetry import RedMetrics, RequestMetrics, Spans
from kloop_inference.tensors import decode_grpc_request, encode_grpc_response

log = get_logger(__name__)

SERVICE_NAME = "inference.GRPCInferenceService"
_INFER_METHOD = f"/{SERVICE_NAME}/ModelInfer"


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, service: InferenceService, *, spans: Spans) -> None:
        self._service = service
        self._spans = spans
        self._metrics = RequestMetrics("grpc", service.manager.configured)
        self._red = RedMetrics()

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._service.ready)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        try:
            ready = self._service.model_ready(request.name, request.version)
        except KloopError as error:
            await _abort(context, error)
        return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**self._service.server_metadata())

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        try:
            metadata = await self._service.model_metadata(request.name, request.version)
        except KloopError as error:
            await _abort(context, error)
        return pb.ModelMetadataResponse(
            name=metadata["name"],
            versions=metadata["versions"],
            platform=metadata["platform"],
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**spec) for spec in metadata["inputs"]],
            outputs=[
                pb.ModelMetadataResponse.TensorMetadata(**spec) for spec in metadata["outputs"]
            ],
        )

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        started = time.perf_counter()
        name = request.model_name
        model_label = self._metrics.model_label(name)
        served_version = ""
        spans = self._spans
        span_scope = (
            spans.request("grpc", name, dict(context.invocation_metadata() or ()))
            if spans.enabled
            else contextlib.nullcontext()
        )
        with span_scope as span:
            try:
                model = await self._service.model(name, request.model_version)
                served_version = model.version
                if span is not None:
                    span.set_attribute("kloop.model.version", served_version)
                decoded = decode_grpc_request(request)
                outputs = await model.infer(decoded)
                response = encode_grpc_response(name, served_version, decoded, outputs)
            except KloopError as error:
                if span is not None:
                    span.set_attribute("kloop.error", error.message)
                self._metrics.record(model_label, served_version, error.code, 0.0)
                self._red.grpc(_INFER_METHOD, error.grpc_code.name, time.perf_counter() - started)
                await _abort(context, error)
            except Exception:
                log.exception("inference failed", model=name, version=served_version)
                self._metrics.record(model_label, served_version, "internal", 0.0)
                self._red.grpc(_INFER_METHOD, "INTERNAL", time.perf_counter() - started)
                await _abort(context, Internal("internal error"))
        elapsed = time.perf_counter() - started
        self._metrics.record(model_label, served_version, "ok", elapsed)
        self._red.grpc(_INFER_METHOD, "OK", elapsed)
        return response


async def _abort(context: grpc.aio.ServicerContext, error: KloopError) -> NoReturn:
    await context.abort(error.grpc_code, error.message, trailing_metadata=error_metadata(error))
    raise AssertionError("grpc.aio's abort() raises")  # for type checkers


def health_status(ready: bool) -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
    return (
        health_pb2.HealthCheckResponse.SERVING
        if ready
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )


def add_to_server(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
