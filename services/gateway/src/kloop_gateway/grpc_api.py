"""kloop.gateway.v1.GatewayService on kloop_core's gRPC server (interceptors: request id,
RED metrics, error mapping, health, reflection).

The handlers run on the server's thread pool; the gateway's clients live on the HTTP
server's event loop, so each call is handed to that loop and awaited with the caller's
deadline. Auth, limits and errors are the gateway's own, as for HTTP.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import grpc

from kloop.gateway.v1 import gateway_pb2 as pb
from kloop.gateway.v1 import gateway_pb2_grpc as pb_grpc
from kloop_core.errors import DeadlineExceeded, PayloadTooLarge
from kloop_core.grpc_server import GrpcApp
from kloop_gateway.prediction import Prediction
from kloop_gateway.service import Gateway

T = TypeVar("T")
SERVICE_NAME = "kloop.gateway.v1.GatewayService"


def token_from_metadata(metadata: Sequence[tuple[str, Any]]) -> str | None:
    """The API key of `authorization: Bearer <key>`, else of `x-api-key`."""
    values = {key: value for key, value in metadata if isinstance(value, str)}
    authorization = values.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return values.get("x-api-key") or None


def to_pb(prediction: Prediction) -> pb.Prediction:
    return pb.Prediction(
        id=prediction.id,
        label=prediction.label,
        score=prediction.score,
        model=pb.ServedModel(
            name=prediction.model, version=prediction.version, alias=prediction.alias
        ),
    )


class GatewayServicer(pb_grpc.GatewayServiceServicer):  # type: ignore[misc]
    def __init__(self, gateway: Gateway, loop: asyncio.AbstractEventLoop) -> None:
        self._gateway = gateway
        self._loop = loop
        self._route_key = gateway.settings.route_key_header.lower()
        self._max_bytes = gateway.settings.max_body_bytes
        # The upstream deadline plus room for Redis: the longest a call can usefully take
        # (a caller without a deadline reports "remaining" as ~forever).
        self._max_timeout = gateway.settings.inference_timeout_seconds + 1.0

    def _run(self, context: grpc.ServicerContext, work: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(work, self._loop)
        remaining = context.time_remaining()
        try:
            timeout = self._max_timeout if remaining is None else min(remaining, self._max_timeout)
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise DeadlineExceeded("the request did not finish within its deadline") from None

    def _check_size(self, request: Any) -> None:
        size = request.ByteSize()
        if size > self._max_bytes:
            raise PayloadTooLarge(f"request is {size} bytes; the limit is {self._max_bytes}")

    def Predict(self, request: pb.PredictRequest, context: grpc.ServicerContext) -> pb.Prediction:
        self._check_size(request)
        metadata = context.invocation_metadata() or ()
        (prediction,) = self._run(context, self._predict(metadata, request.model, [request.text]))
        return to_pb(prediction)

    def PredictBatch(
        self, request: pb.PredictBatchRequest, context: grpc.ServicerContext
    ) -> pb.PredictBatchResponse:
        self._check_size(request)
        metadata = context.invocation_metadata() or ()
        work = self._predict(metadata, request.model, list(request.texts))
        predictions = self._run(context, work)
        return pb.PredictBatchResponse(predictions=[to_pb(p) for p in predictions])

    def Feedback(
        self, request: pb.FeedbackRequest, context: grpc.ServicerContext
    ) -> pb.FeedbackResponse:
        self._check_size(request)
        metadata = context.invocation_metadata() or ()
        status = self._run(context, self._feedback(metadata, request.prediction_id, request.label))
        return pb.FeedbackResponse(
            prediction_id=request.prediction_id, label=request.label, status=status
        )

    async def _predict(
        self, metadata: Sequence[tuple[str, Any]], model: str, texts: list[str]
    ) -> list[Prediction]:
        caller = await self._gateway.authenticate(token_from_metadata(metadata), "predict")
        route_key = next((v for k, v in metadata if k == self._route_key), None)
        return await self._gateway.predict(caller, model, texts, route_key)

    async def _feedback(
        self, metadata: Sequence[tuple[str, Any]], prediction_id: str, label: str
    ) -> str:
        await self._gateway.admit(token_from_metadata(metadata), "feedback")
        return await self._gateway.feedback(prediction_id, label)


def grpc_app(gateway: Gateway, loop: asyncio.AbstractEventLoop) -> GrpcApp:
    servicer = GatewayServicer(gateway, loop)

    def ready() -> bool:  # polled from a thread, about once a second
        return asyncio.run_coroutine_threadsafe(gateway.ready(), loop).result(timeout=3.0)

    return GrpcApp(
        settings=gateway.settings,
        service_name="gateway",
        register=lambda server: pb_grpc.add_GatewayServiceServicer_to_server(servicer, server),
        service_names=[SERVICE_NAME],
        readiness=ready,
        ops_http=False,  # the FastAPI app serves /livez /readyz /metrics
    )
