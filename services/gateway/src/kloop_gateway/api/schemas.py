"""Request and response bodies of the HTTP API (OpenAPI at /docs)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from kloop_gateway.policy import TrafficPolicy
from kloop_gateway.prediction import Prediction


class PredictRequest(BaseModel):
    text: str = Field(min_length=1, description="The text to score (limit: max_text_chars).")


class PredictBatchRequest(BaseModel):
    texts: list[Annotated[str, Field(min_length=1)]] = Field(
        min_length=1, description="Texts to score, in order (limit: max_batch_texts)."
    )


class ServedModel(BaseModel):
    name: str
    version: str = Field(description="The version that produced the answer.")
    alias: str = Field(description="production or canary.")


class PredictionOut(BaseModel):
    id: str = Field(description="Prediction id, for POST /v1/feedback.")
    label: str
    score: float = Field(description="The model's score: the probability of the positive label.")
    model: ServedModel

    @classmethod
    def of(cls, p: Prediction) -> PredictionOut:
        return cls(
            id=p.id,
            label=p.label,
            score=p.score,
            model=ServedModel(name=p.model, version=p.version, alias=p.alias),
        )


class PredictBatchResponse(BaseModel):
    predictions: list[PredictionOut]


class FeedbackRequest(BaseModel):
    prediction_id: str = Field(min_length=1, max_length=64)
    label: str = Field(min_length=1, max_length=256, description="The true label.")


class FeedbackResponse(BaseModel):
    prediction_id: str
    label: str
    status: Literal["recorded", "duplicate"]


class TrafficPolicyOut(TrafficPolicy):
    model: str
    source: Literal["settings", "runtime"] = Field(
        description="runtime: set by an admin; settings: the gateway's defaults."
    )


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: dict[str, Any] | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route can answer."""
    described = {
        401: "Missing, invalid or revoked API key.",
        403: "The API key lacks the scope this route needs.",
        404: "Unknown model or prediction.",
        409: "Feedback already recorded with another label.",
        413: "Request body larger than max_body_bytes.",
        422: "Invalid request (empty or too long text, too many texts, bad JSON).",
        429: "Rate limit exceeded; see Retry-After.",
        503: "Inference or Redis unavailable; see Retry-After.",
        504: "Inference did not answer in time.",
    }
    return {status: {"model": ErrorBody, "description": described[status]} for status in statuses}
