"""POST /v1/models/{name}/predict and /predict:batch."""

from __future__ import annotations

from fastapi import APIRouter, Response

from kloop_gateway.api.deps import GatewayDep, ModelName, PredictAuthenticated, RouteKey
from kloop_gateway.api.schemas import (
    PredictBatchRequest,
    PredictBatchResponse,
    PredictionOut,
    PredictRequest,
    error_responses,
)

router = APIRouter(prefix="/v1/models", tags=["predictions"])

_ERRORS = error_responses(401, 403, 404, 413, 422, 429, 503, 504)
# How many of the answers came from the prediction cache.
CACHE_HITS_HEADER = "X-Kloop-Cache-Hits"


@router.post("/{name}/predict", responses=_ERRORS)
async def predict(
    name: ModelName,
    body: PredictRequest,
    caller: PredictAuthenticated,
    gateway: GatewayDep,
    route_key: RouteKey,
    response: Response,
) -> PredictionOut:
    """Score one text with the model's production (or, per the traffic policy, canary)
    version."""
    (prediction,) = await gateway.predict(caller, name, [body.text], route_key)
    response.headers[CACHE_HITS_HEADER] = "1" if prediction.cached else "0"
    return PredictionOut.of(prediction)


@router.post("/{name}/predict:batch", responses=_ERRORS)
async def predict_batch(
    name: ModelName,
    body: PredictBatchRequest,
    caller: PredictAuthenticated,
    gateway: GatewayDep,
    route_key: RouteKey,
    response: Response,
) -> PredictBatchResponse:
    """Score up to max_batch_texts texts in one request; answers in the same order."""
    predictions = await gateway.predict(caller, name, body.texts, route_key)
    response.headers[CACHE_HITS_HEADER] = str(sum(p.cached for p in predictions))
    return PredictBatchResponse(predictions=[PredictionOut.of(p) for p in predictions])
