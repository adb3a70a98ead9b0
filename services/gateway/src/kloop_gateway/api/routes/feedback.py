"""POST /v1/feedback: the true label of an earlier prediction."""

from __future__ import annotations

from fastapi import APIRouter

from kloop_gateway.api.deps import FeedbackCaller, GatewayDep
from kloop_gateway.api.schemas import FeedbackRequest, FeedbackResponse, error_responses

router = APIRouter(prefix="/v1", tags=["feedback"])


@router.post("/feedback", responses=error_responses(401, 403, 404, 409, 413, 422, 429, 503))
async def feedback(
    body: FeedbackRequest, _: FeedbackCaller, gateway: GatewayDep
) -> FeedbackResponse:
    """Record the true label once (the drift monitor's live accuracy reads it). The same
    label again is a no-op ("duplicate"); another label is 409."""
    status = await gateway.feedback(body.prediction_id, body.label)
    return FeedbackResponse(
        prediction_id=body.prediction_id,
        label=body.label,
        status=status,
    )
